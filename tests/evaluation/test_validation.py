"""A plan's analyses from predictions alone: intervals by the plan's method, thresholds from development, verdicts."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from medfm.evaluation.plan import load_plan
from medfm.evaluation.validation import analyse, threshold_for_specificity

from ..conftest import REPO

PLAN = {
    "name": "v", "version": "1", "intended_use": "test",
    "tasks": [{"finding": "drusen", "modality": "oct", "label": "drusen",
               "prompts": str(REPO / "configs/prompts/drusen.yaml")}],
    "heads": ["zero_shot", "linear_probe"],
    "operating_points": [{"name": "sens90", "rule": "sensitivity", "target": 0.9},
                         {"name": "spec80", "rule": "specificity", "target": 0.8},
                         {"name": "youden", "rule": "youden"}, {"name": "half", "rule": "fixed", "target": 0.5}],
    "primary": [{"task": "drusen/oct", "metric": "auroc"}],
    "secondary": [{"task": "drusen/oct", "metric": "sensitivity", "operating_point": "sens90"},
                  {"task": "drusen/oct", "metric": "auroc", "head": "linear_probe"}],
    "subgroups": {"by": ["sex", "device"], "age_bands": [0, 50, 70, 200]},
    "statistics": {"resamples": 400},
    "acceptance": [{"endpoint": {"task": "drusen/oct", "metric": "auroc"}, "bound": "lower", "at_least": 0.6},
                   {"endpoint": {"task": "drusen/oct", "metric": "auroc"}, "bound": "lower", "at_least": 0.99}],
}


def predictions(seed=0, patients=150):
    """Two eyes per patient, a score that separates the classes imperfectly, val and test patients."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        split, sex, age = ("val" if p % 3 == 0 else "test"), "FM"[p % 2], 30 + p % 60
        for eye in range(2):
            label = float(rng.random() < 0.35)
            score = rng.normal(1.2 * label, 1.0)
            rows.append({"split": split, "study": f"S{p}-{eye}", "patient": f"k{p}", "task": "drusen/oct",
                         "device": "A" if eye == 0 else "B", "sex": sex, "age": age, "label": label,
                         "head": "zero_shot", "score": score, "probability": 1 / (1 + np.exp(-score))})
    return pd.DataFrame(rows)


def tasks_of(result, head="zero_shot", split="test"):
    return result["heads"][head][split]


@pytest.fixture
def plan(tmp_path):
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(PLAN))
    return load_plan(tmp_path / "plan.yaml")[0]


def test_every_interval_names_its_method_and_resamples_patients(plan):
    result = analyse(predictions(), plan)
    task = tasks_of(result)["drusen/oct"]
    assert task["n_patients"] == 100 and task["n"] == 200
    for name in ("auroc", "auprc", "brier"):
        interval = task[name]
        assert interval["low"] <= interval["estimate"] <= interval["high"]
        assert "patients" in interval["method"] and "400 resamples" in interval["method"]
    assert task["calibration"]["ece"]["binning"] and len(task["calibration"]["ece"]["bins"]) == 10
    json.dumps(result)  # results.json material


def test_thresholds_are_chosen_on_development_and_applied_to_test(plan):
    data = predictions()
    task = tasks_of(analyse(data, plan))["drusen/oct"]
    point = task["operating_points"]["sens90"]
    dev = data[(data["split"] == "val")]
    threshold = point["chosen_on_development"]["threshold"]
    assert np.mean(dev.loc[dev["label"] == 1, "probability"] >= threshold) >= 0.9
    test = data[data["split"] == "test"]
    called = test["probability"] >= threshold
    assert point["test"]["tp"] == int((called & (test["label"] == 1)).sum())
    assert "bootstrap" in point["test"]["sensitivity"]["method"]  # two eyes per patient: not Wilson
    spec = task["operating_points"]["spec80"]["chosen_on_development"]
    assert spec["specificity"] >= 0.8
    assert task["operating_points"]["half"]["chosen_on_development"]["threshold"] == 0.5


def test_specificity_threshold_is_the_lowest_reaching_the_target():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1], dtype=float)
    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.35, 0.6, 0.8])
    chosen = threshold_for_specificity(labels, probs, 0.8)
    assert chosen["threshold"] == pytest.approx(0.6) and chosen["specificity"] == 0.8


def test_endpoints_carry_their_role_and_a_head_without_predictions_is_listed_not_dropped(plan):
    result = analyse(predictions(), plan)
    roles = [(e["role"], e["metric"], e["head"]) for e in result["endpoints"]]
    assert roles == [("primary", "auroc", "zero_shot"), ("secondary", "sensitivity", "zero_shot"),
                     ("secondary", "auroc", "linear_probe")]
    assert result["endpoints"][2]["result"] is None
    assert "no linear_probe predictions" in result["endpoints"][2]["note"]
    assert [a["verdict"] for a in result["acceptance"]] == ["pass", "fail"] and result["passed"] is False


def test_a_fitted_head_is_analysed_and_compared_with_zero_shot_on_the_same_studies(plan):
    data = predictions()
    rng = np.random.default_rng(5)
    probe = data.assign(head="linear_probe", score=data["score"] + rng.normal(0, 0.3, len(data)))
    probe["probability"] = 1 / (1 + np.exp(-probe["score"]))
    result = analyse(pd.concat([data, probe]), plan)
    assert result["endpoints"][2]["result"]["estimate"] == pytest.approx(
        tasks_of(result, "linear_probe")["drusen/oct"]["auroc"]["estimate"])
    difference = result["comparisons"]["test"]["drusen/oct"]["linear_probe - zero_shot"]
    assert difference["difference"]["estimate"] == pytest.approx(
        difference["a"]["estimate"] - difference["b"]["estimate"])
    assert "paired" in difference["difference"]["method"] and difference["difference"]["n_patients"] == 100


def test_an_external_split_gets_the_same_analyses_with_development_thresholds(plan):
    data = predictions()
    external = data[data["split"] == "test"].assign(split="external", patient=lambda d: "x" + d["patient"])
    plan = plan.model_copy(update={"external": ["external"]})
    result = analyse(pd.concat([data, external]), plan)
    test, outside = tasks_of(result)["drusen/oct"], tasks_of(result, split="external")["drusen/oct"]
    assert outside["auroc"]["estimate"] == test["auroc"]["estimate"]
    assert outside["operating_points"]["sens90"]["chosen_on_development"] == \
        test["operating_points"]["sens90"]["chosen_on_development"]


def test_subgroups_and_age_bands(plan):
    groups = tasks_of(analyse(predictions(), plan))["drusen/oct"]["subgroups"]
    assert set(groups) == {"sex", "device", "age"}
    assert set(groups["device"]) == {"A", "B"} and set(groups["age"]) <= {"0-50", "50-70", "70-200"}
    assert sum(g["n"] for g in groups["sex"].values()) == 200


def test_the_same_predictions_give_the_same_numbers(plan):
    assert json.dumps(analyse(predictions(), plan)) == json.dumps(analyse(predictions(), plan))


def test_delong_is_refused_when_patients_have_two_eyes(plan):
    with pytest.raises(ValueError):
        analyse(predictions(), plan.model_copy(update={"statistics": plan.statistics.model_copy(
            update={"ci": "delong"})}))


def test_numbers_do_not_depend_on_the_salt_of_the_patient_pseudonyms(plan):
    data = predictions()
    salted = data.assign(patient="z" + data["patient"].str[::-1])  # same grouping, other sort order
    assert json.dumps(analyse(data, plan)) == json.dumps(analyse(salted, plan))
