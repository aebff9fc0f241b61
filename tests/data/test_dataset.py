"""Samples from cohort rows: each image study paired with its own report."""

import pandas as pd
import pytest
import yaml

from medfm.cohort import load_cohort
from medfm.data.dataset import CohortDataset, collate_samples
from medfm.errors import ConfigError
from medfm.keys import Field, Modality, report_of

OWN_REPORTS = {"cxr": "cxr_report", "ecg": "ecg_report"}


def write_cohort(tmp_path, reports=OWN_REPORTS):
    texts = {"r1_cxr.txt": "EXAMINATION: Chest. FINDINGS: Cardiomegaly.",
             "r1_ecg.txt": "FINDINGS: Atrial fibrillation.",
             "r2_cxr.txt": "IMPRESSION: Normal chest."}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    pd.DataFrame({
        "patient_id": ["P1", "P2", "P3"], "study_id": ["S1", "S2", "S3"],
        "cxr_path": ["a.dcm", "b.dcm", None], "ecg_path": ["a", None, "c"],
        "cxr_report": ["r1_cxr.txt", "r2_cxr.txt", None],
        "ecg_report": ["r1_ecg.txt", None, "gone.txt"],
        "finding": [1, 0, 0],
    }).to_csv(tmp_path / "manifest.csv", index=False)
    config = {"name": "own", "manifest": "manifest.csv", "labels": ["finding"],
              "modalities": {"cxr": "cxr_path", "ecg": "ecg_path", "report": reports}}
    path = tmp_path / "cohort.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_cohort(path)


def test_each_image_gets_its_own_report_and_a_missing_one_is_quarantined(tmp_path):
    cohort = write_cohort(tmp_path)
    dataset = CohortDataset(cohort, list(cohort.table.index), {Modality.REPORT: lambda text: text}, on_error="skip")
    (first, _), (second, _), (third, problems) = (dataset[i] for i in range(3))
    assert first[report_of(Modality.CXR)] == "EXAMINATION: Chest. FINDINGS: Cardiomegaly."
    assert first[report_of(Modality.ECG)] == "FINDINGS: Atrial fibrillation."
    assert Modality.REPORT not in first  # never joined into one document
    assert report_of(Modality.ECG) not in second
    assert report_of(Modality.ECG) not in third
    assert [(p.modality, p.path) for p in problems] == [(report_of(Modality.ECG), str(tmp_path / "gone.txt"))]

    batch = collate_samples([first, second])
    assert batch[report_of(Modality.CXR)] == [first[report_of(Modality.CXR)], second[report_of(Modality.CXR)]]
    assert batch[report_of(Modality.ECG)] == [first[report_of(Modality.ECG)]]
    assert batch[Field.MASK][report_of(Modality.ECG)].tolist() == [True, False]


def test_every_report_column_is_checked_and_described(tmp_path):
    cohort = write_cohort(tmp_path)
    assert cohort.config.columns_of(Modality.REPORT) == ["cxr_report", "ecg_report"]
    with pytest.raises(ConfigError, match="not_a_column"):
        write_cohort(tmp_path, reports={"cxr": "cxr_report", "ecg": "not_a_column"})


@pytest.mark.parametrize("reports", [{"oct": "cxr_report"}, {"report": "cxr_report"}])
def test_a_report_for_an_image_modality_the_cohort_lacks_is_refused(tmp_path, reports):
    with pytest.raises(ConfigError, match="not an image modality of this cohort"):
        write_cohort(tmp_path, reports=reports)
