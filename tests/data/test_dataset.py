"""Samples from cohort rows: each image study paired with its own report."""

import pandas as pd
import pytest
import yaml

from medfm.cohort import load_cohort
from medfm.data.dataset import CohortDataset, collate_samples
from medfm.errors import ConfigError, MedfmReadError
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


def test_a_study_whose_header_claims_absurd_geometry_is_quarantined_before_preprocessing(tmp_path):
    # An ECG header claiming 0.01 Hz: resampling its 1,000 samples to 500 Hz would need 38 GB.
    import numpy as np
    import wfdb

    from medfm.keys import STANDARD_LEADS

    for name in ("fine", "slow"):
        wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), fmt=["16"] * 12,
                    p_signal=np.sin(np.arange(1000)[:, None] / np.arange(2, 14)), adc_gain=[200.0] * 12,
                    baseline=[0] * 12, write_dir=str(tmp_path))
    header = tmp_path / "slow.hea"
    header.write_text(header.read_text().replace("slow 12 500 1000", "slow 12 0.01 1000", 1))
    pd.DataFrame({"patient_id": ["P1", "P2"], "study_id": ["S1", "S2"], "ecg_path": ["fine", "slow"],
                  "af": [0, 1]}).to_csv(tmp_path / "manifest.csv", index=False)
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump({"name": "ecgs", "manifest": "manifest.csv", "labels": ["af"],
                                                          "modalities": {"ecg": "ecg_path"}}))
    cohort = load_cohort(tmp_path / "cohort.yaml")
    spec = {"transform": "ecg_to_input", "sample_rate": 500, "duration_s": 10}
    preprocessed = []
    dataset = CohortDataset(cohort, list(cohort.table.index), {Modality.ECG: preprocessed.append}, on_error="skip",
                            specs={Modality.ECG: spec})
    dataset[0]
    slow, problems = dataset[1]
    assert len(preprocessed) == 1 and preprocessed[0].fs == 500  # the slow record never reached the transform
    assert Modality.ECG not in slow
    assert [(p.study_id, p.path) for p in problems] == [("S2", str(tmp_path / "slow"))]
    assert "MiB, over the 512 MiB one study may use" in problems[0].reason

    strict = CohortDataset(cohort, list(cohort.table.index), {Modality.ECG: preprocessed.append},
                           specs={Modality.ECG: spec})
    with pytest.raises(MedfmReadError, match="slow: preprocessing it would need"):
        strict[1]


def test_a_transform_error_names_the_file_the_study_came_from(tmp_path):
    # The transforms see arrays, not files: their errors name a placeholder until the dataset names the file.
    cohort = write_cohort(tmp_path)

    def refuses(text):
        raise MedfmReadError("<input report>", "too short to embed")

    dataset = CohortDataset(cohort, list(cohort.table.index), {Modality.REPORT: refuses}, on_error="skip")
    _, problems = dataset[0]
    assert [(p.path, p.reason) for p in problems] == [(str(tmp_path / "r1_cxr.txt"), "too short to embed"),
                                                       (str(tmp_path / "r1_ecg.txt"), "too short to embed")]
    with pytest.raises(MedfmReadError, match=r"r1_cxr.txt: too short to embed"):
        CohortDataset(cohort, list(cohort.table.index), {Modality.REPORT: refuses})[0]
