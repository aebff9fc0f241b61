"""Per-study predictions of every head: out-of-fold on development, fitted once for test, refitted per source."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medfm.evaluation.plan import load_plan
from medfm.evaluation.predictions import plan_predictions, training_sources
from medfm.heads.probe import LinearProbe, out_of_fold_scores
from medfm.keys import Field

from ..conftest import REPO

PLAN = {"name": "p", "version": "1", "split": "test", "development_split": "val", "external": ["external"],
        "heads": ["zero_shot", "linear_probe", "knn"], "head_settings": {"knn": {"k": 5}},
        "tasks": [{"finding": "drusen", "modality": "oct", "label": "drusen",
                   "prompts": str(REPO / "configs/prompts/drusen.yaml")}],
        "cross_source": {"by": ["device"], "heads": ["zero_shot", "linear_probe"], "min_class_count": 2}}


class FakeZeroShot:
    """What plan_predictions needs of a zero-shot classifier: finding columns and a decision function."""

    findings_ = ["drusen"]
    model = None

    def decision_function(self, x):
        return (3 * x[:, :1]).numpy()


def _split(rng, split, patients, devices, start):
    samples, vectors = [], []
    for p in range(patients):
        for eye in range(2):
            label = float(rng.random() < 0.4)
            vectors.append(rng.normal(0, 1, 8) + 1.5 * label)
            samples.append({"oct": torch.zeros(1), Field.LABEL: {"drusen": label},
                            Field.META: {"study_id": f"{split}-{p}-{eye}", "patient_id": f"PID{start + p}",
                                         "oct_device": devices[(p + eye) % len(devices)], "site": "s",
                                         "sex": "F", "age": 60, "study_date": "2024-01-01"}})
    x = torch.nn.functional.normalize(torch.tensor(np.array(vectors), dtype=torch.float32), dim=1)
    return samples, (x, list(range(len(samples))))


@pytest.fixture
def made(tmp_path):
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(PLAN))
    plan, prompts = load_plan(tmp_path / "plan.yaml")
    rng = np.random.default_rng(0)
    samples, embedded = {}, {}
    for split, patients, devices, start in (("train", 5, ["A", "B"], 0), ("val", 30, ["A", "B"], 100),
                                            ("test", 30, ["A", "B"], 200), ("external", 20, ["C"], 300)):
        samples[split], embedded.setdefault(split, {})["oct"] = _split(rng, split, patients, devices, start)
    return plan, samples, embedded, plan_predictions(FakeZeroShot(), plan, prompts, samples, "salt", embedded)


def test_every_head_scores_every_evaluated_and_development_study(made):
    plan, samples, _, result = made
    rows = result.predictions
    for head in ("zero_shot", "linear_probe", "knn"):
        for split in ("val", "test", "external"):
            assert len(rows[(rows["head"] == head) & (rows["split"] == split)]) == len(samples[split])
    assert not rows["split"].eq("train").any()
    assert not rows["patient"].str.contains("PID").any() and rows["case"].nunique() == len(rows) // 3
    assert (rows.groupby("study")["patient"].nunique() == 1).all() and "study_id" not in rows
    assert not rows["study"].str.contains("-").any()  # pseudonyms, not the ids (val-3-1)
    assert set(rows["modalities"]) == {"oct"} and set(rows["device"]) == {"A", "B", "C"}



def test_another_salt_gives_other_pseudonyms_and_the_same_scores(made, tmp_path):
    plan, samples, embedded, result = made
    _, prompts = load_plan(tmp_path / "plan.yaml")
    again = plan_predictions(FakeZeroShot(), plan, prompts, samples, "another salt", embedded).predictions
    assert not set(again["patient"]) & set(result.predictions["patient"])
    pd.testing.assert_series_equal(again["score"], result.predictions["score"])


def test_training_sources_are_the_train_split_values_of_studies_with_the_modality():
    table = pd.DataFrame({"oct_path": ["a", None, "c"], "oct_device": ["A", "B", "C"], "site": ["s", "t", "s"]})
    config = type("Config", (), {"modalities": {"oct": "oct_path"}, "columns_of": lambda self, m: ["oct_path"]})()
    plan = type("Plan", (), {"cross_source": type("C", (), {"by": ["device", "site"]})(),
                             "tasks": [type("T", (), {"modality": "oct"})()]})()
    assert training_sources(table, config, plan) == {"device": {"oct": ["A", "C"]}, "site": {"oct": ["s"]}}


def test_a_fitted_head_scores_development_out_of_fold_and_test_with_one_fit(made):
    plan, samples, embedded, result = made
    rows = result.predictions
    x_dev = embedded["val"]["oct"][0].double().numpy()
    y_dev = np.array([s[Field.LABEL]["drusen"] for s in samples["val"]])
    probe = rows[rows["head"] == "linear_probe"]
    groups = pd.factorize(probe.loc[probe["split"] == "val", "patient"])[0]
    expected = out_of_fold_scores(LinearProbe, x_dev, y_dev, groups, plan.development_folds, plan.statistics.seed)
    np.testing.assert_allclose(probe.loc[probe["split"] == "val", "score"], expected)
    fitted = LinearProbe().fit(x_dev, y_dev)
    np.testing.assert_allclose(probe.loc[probe["split"] == "test", "score"],
                               fitted.decision_function(embedded["test"]["oct"][0].double().numpy()))
    np.testing.assert_allclose(probe["probability"], 1 / (1 + np.exp(-probe["score"])))
    assert result.fits["linear_probe"]["drusen/oct"]["fitted"] and result.fits["knn"]["drusen/oct"]["n"] == 60


def test_cross_source_rows_refit_on_each_development_source_and_score_every_evaluated_study(made):
    plan, samples, embedded, result = made
    cross = result.cross_source
    assert set(cross["fitted_on"]) == {"A", "B"} and set(cross["head"]) == {"linear_probe"}
    one = cross[cross["fitted_on"] == "A"]
    assert len(one) == len(samples["test"]) + len(samples["external"])
    assert set(one["source"]) == {"A", "B", "C"} and set(one["split"]) == {"test", "external"}
    chosen = [i for i, s in enumerate(samples["val"]) if s[Field.META]["oct_device"] == "A"]
    x_dev = embedded["val"]["oct"][0].double().numpy()[chosen]
    y_dev = np.array([samples["val"][i][Field.LABEL]["drusen"] for i in chosen])
    fitted = LinearProbe().fit(x_dev, y_dev)
    np.testing.assert_allclose(one.loc[one["split"] == "test", "score"],
                               fitted.decision_function(embedded["test"]["oct"][0].double().numpy()))


def test_a_development_split_without_a_class_fits_nothing_and_says_so(made, tmp_path):
    plan, samples, embedded, _ = made
    for sample in samples["val"]:
        sample[Field.LABEL]["drusen"] = 0.0
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(PLAN))
    _, prompts = load_plan(tmp_path / "plan.yaml")
    result = plan_predictions(FakeZeroShot(), plan, prompts, samples, "salt", embedded)
    assert set(result.predictions["head"]) == {"zero_shot"} and result.cross_source.empty
    assert result.fits["linear_probe"]["drusen/oct"] == {"split": "val", "n": 60, "n_positive": 0, "n_patients": 30,
                                                         "fitted": False, "note": "the val split lacks a class"}
