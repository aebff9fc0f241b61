"""Cross-device matrices: cells, in-distribution references and drops, from predictions alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from medfm.evaluation import stats
from medfm.evaluation.cross_source import cross_source_matrices
from medfm.evaluation.plan import load_plan

from ..conftest import REPO

PLAN = {"name": "p", "version": "1", "external": ["external"], "heads": ["zero_shot", "linear_probe"],
        "tasks": [{"finding": "drusen", "modality": "oct", "label": "drusen",
                   "prompts": str(REPO / "configs/prompts/drusen.yaml")}],
        "statistics": {"resamples": 200}, "cross_source": {"by": ["device"]}}


def _rows(rng, head, split, device, patients, start, separation):
    labels = (rng.random(patients) < 0.4).astype(float)
    scores = rng.normal(separation * labels, 1.0)
    return pd.DataFrame({"split": split, "task": "drusen/oct", "head": head, "device": device,
                         "patient": [f"k{start + i}" for i in range(patients)], "label": labels,
                         "probability": 1 / (1 + np.exp(-scores))})


@pytest.fixture
def plan(tmp_path):
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(PLAN))
    return load_plan(tmp_path / "plan.yaml")[0]


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    known = pd.concat([
        _rows(rng, "zero_shot", "test", "A", 60, 0, 2.0), _rows(rng, "zero_shot", "test", "B", 60, 100, 1.5),
        _rows(rng, "zero_shot", "external", "C", 60, 200, 0.3),
        _rows(rng, "linear_probe", "val", "A", 30, 300, 2.0), _rows(rng, "linear_probe", "val", "B", 30, 400, 2.0),
        _rows(rng, "linear_probe", "test", "A", 60, 0, 2.0), _rows(rng, "linear_probe", "test", "B", 60, 100, 2.0),
        _rows(rng, "linear_probe", "external", "C", 60, 200, 0.5)], ignore_index=True)
    evaluated = known[(known["head"] == "linear_probe") & (known["split"] != "val")]
    cross = pd.concat([evaluated.assign(by="device", fitted_on=source, source=evaluated["device"])
                       for source in ("A", "B")], ignore_index=True)
    return known, cross


def test_columns_mark_the_device_unseen_in_pretraining(plan, data):
    matrix = cross_source_matrices(*data, plan, {"device": {"oct": ["A", "B"]}})["device"]["drusen/oct"]
    assert [(c["source"], c["seen_in_pretraining"], c["splits"]) for c in matrix["columns"]] == [
        ("A", True, ["test"]), ("B", True, ["test"]), ("C", False, ["external"])]
    assert [r["label"] for r in matrix["rows"]] == [
        "pretrained model (zero-shot)", "linear_probe fitted on every source", "linear_probe fitted on A",
        "linear_probe fitted on B"]


def test_cells_are_the_aurocs_of_their_rows_and_drops_are_against_the_reference(plan, data):
    known, cross = data
    zero_shot = cross_source_matrices(known, cross, plan, {"device": {"oct": ["A", "B"]}})["device"]["drusen/oct"]
    row = zero_shot["rows"][0]
    rows = known[(known["head"] == "zero_shot")]
    seen = rows[rows["device"].isin(["A", "B"])]
    assert row["reference"] == ["A", "B"]
    assert row["reference_cell"]["auroc"]["estimate"] == pytest.approx(stats.auroc(seen["label"], seen["probability"]))
    unseen = row["cells"][2]
    assert unseen["n"] == 60 and not unseen["in_distribution"]
    assert unseen["drop"]["estimate"] == pytest.approx(
        unseen["auroc"]["estimate"] - row["reference_cell"]["auroc"]["estimate"])
    assert unseen["drop"]["high"] < 0  # the unseen device separates worse, and the interval says so
    per_source = zero_shot["rows"][2]  # fitted on A: its own cell is the reference, so it has no drop
    assert per_source["cells"][0]["in_distribution"] and "drop" not in per_source["cells"][0]
    assert "drop" in per_source["cells"][1] and "drop" in per_source["cells"][2]


def test_a_cell_without_both_classes_has_no_auroc(plan, data):
    known, cross = data
    known = known.copy()
    known.loc[known["device"] == "C", "label"] = 0.0
    matrix = cross_source_matrices(known, cross[cross["device"] != "C"], plan, {})["device"]["drusen/oct"]
    assert matrix["rows"][0]["cells"][2]["auroc"] is None and "drop" not in matrix["rows"][0]["cells"][2]
    assert matrix["rows"][0]["reference"] == []  # no pretraining sources given: no in-distribution cell
