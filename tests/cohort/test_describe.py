import json

import numpy as np
import pandas as pd
import pytest

from medfm.cohort import CohortConfig, describe_cohort, format_description, write_description


@pytest.fixture
def cohort():
    table = pd.DataFrame({
        "patient_id": ["P1", "P1", "P2", "P3", "P4", "P5"],
        "study_id": ["S1", "S2", "S3", "S4", "S5", "S6"],
        "site": ["a", "a", "b", "a", "b", "b"],
        "age": [40, 41, 50, 60, np.nan, 80],
        "sex": ["F", "F", "M", "F", None, "M"],
        "cxr_device": ["X", "X", "Y", "X", None, "Y"],
        "cxr_path": ["1.dcm", "2.dcm", "3.dcm", None, "", "6.dcm"],
        "cxr_report": ["r", None, None, None, None, None],
        "ecg_report": [None, "r", None, None, None, "r"],
        "finding": [1, 0, 1, np.nan, 0, 1],
    })
    config = CohortConfig(name="t", manifest="m.csv", labels=["finding"],
                          modalities={"cxr": "cxr_path", "report": ["cxr_report", "ecg_report"]},
                          metadata=["site", "age", "sex", "cxr_device"])
    split = pd.Series(["train", "train", "train", "test", "test", "test"])
    return table, config, split


def test_overall_numbers(cohort):
    table, config, _ = cohort
    overall = describe_cohort(table, config)["groupings"]["overall"]["all"]
    assert overall["patients"] == 5 and overall["studies"] == 6
    # Per patient, first listed study: ages 40, 50, 60, (unknown), 80.
    assert overall["age"] == {"n": 4, "median": 55.0, "q1": 47.5, "q3": 65.0}
    assert overall["sex"] == {"F": {"n": 2, "pct": 40.0}, "M": {"n": 2, "pct": 40.0},
                              "unknown": {"n": 1, "pct": 20.0}}
    assert overall["labels"]["finding"] == {"positive": 3, "known": 5, "pct": 60.0}
    assert overall["modalities"] == {"cxr": {"n": 4, "pct": 66.7}, "report": {"n": 3, "pct": 50.0}}


def test_groupings_by_split_site_and_device(cohort):
    table, config, split = cohort
    groupings = describe_cohort(table, config, split)["groupings"]
    assert list(groupings) == ["overall", "split", "site", "cxr_device"]
    train, test = groupings["split"]["train"], groupings["split"]["test"]
    assert (train["patients"], train["studies"], test["patients"], test["studies"]) == (2, 3, 3, 3)
    assert train["labels"]["finding"] == {"positive": 2, "known": 3, "pct": 66.7}
    assert test["labels"]["finding"] == {"positive": 1, "known": 2, "pct": 50.0}
    assert {k: v["patients"] for k, v in groupings["site"].items()} == {"a": 2, "b": 3}
    assert {k: v["studies"] for k, v in groupings["cxr_device"].items()} == {"X": 3, "Y": 2, "unknown": 1}


def test_written_files_and_terminal_table(cohort, tmp_path):
    table, config, split = cohort
    desc = describe_cohort(table, config, split)
    paths = write_description(desc, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == desc
    markdown = paths["markdown"].read_text()
    assert "## By split" in markdown and "## By cxr_device" in markdown
    assert "| finding, n/known (%) | 3/5 (60.0%) | 1/2 (50.0%) | 2/3 (66.7%) |" in markdown
    assert "| Age, median [IQR] | 55 [47.5, 65] |" in markdown
    text = format_description(desc)
    assert "By site" in text and "Sex unknown, n (%)" in text and "|" not in text


def test_without_demographic_columns(cohort):
    table, config, _ = cohort
    config = config.model_copy(update={"metadata": []})
    desc = describe_cohort(table.drop(columns=["age", "sex"]), config)
    assert "age" not in desc["groupings"]["overall"]["all"]
    assert "Overall" in format_description(desc) and "Age" not in format_description(desc)
