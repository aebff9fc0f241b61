import gzip
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medfm.cohort import Cohort, load_cohort
from medfm.cohort.adapters import ADAPTERS, DatasetLayoutError, build_manifest, create_adapter
from medfm.errors import ConfigError, MedfmError
from tests.cohort import public_fixtures as fx

REPO = Path(__file__).resolve().parents[2]


def labels_of(manifest, study, columns):
    row = manifest.set_index("study_id").loc[study]
    return [None if math.isnan(v) else v for v in row[columns].astype(float)]


# ---------------------------------------------------------------- PTB-XL

def test_ptbxl_manifest_paths_ids_and_metadata(tmp_path):
    manifest = build_manifest("ptbxl", fx.write_ptbxl(tmp_path))
    assert manifest["study_id"].tolist() == ["1", "2", "3", "4"]
    assert manifest["patient_id"].tolist() == ["15709", "13243", "20372", "13243"]  # 15709.0 in the CSV
    assert manifest["ecg_path"].tolist()[0] == "records500/00000/00001_hr"
    assert manifest["strat_fold"].tolist() == [3, 9, 10, 9]
    assert manifest["sex"].tolist() == ["F", "M", "M", "M"]
    assert manifest["age"].tolist() == [56.0, 90.0, 19.0, 90.0]  # 300 = over 89
    assert manifest["site"].tolist()[0] == "site_2" and manifest["ecg_device"].tolist()[0] == "CS-12   E"
    assert manifest["study_date"].tolist()[0] == "1984-11-09"
    low = build_manifest("ptbxl", tmp_path, sampling_rate=100)
    assert low["ecg_path"].tolist()[1] == "records100/00000/00002_lr"


def test_ptbxl_labels_count_zero_likelihood_and_leave_undiagnosed_records_unknown(tmp_path):
    manifest = build_manifest("ptbxl", fx.write_ptbxl(tmp_path))
    columns = ["norm", "mi", "sttc", "cd", "hyp", "atrial_fibrillation", "lvh"]
    assert labels_of(manifest, "1", columns) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert labels_of(manifest, "2", columns) == [0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert labels_of(manifest, "3", columns) == [None] * 7  # only a form statement: nothing diagnosed
    assert labels_of(manifest, "4", columns) == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # NDT at likelihood 0


def test_ptbxl_min_likelihood_makes_weak_statements_unknown_not_negative(tmp_path):
    manifest = build_manifest("ptbxl", fx.write_ptbxl(tmp_path), min_likelihood=80, findings=True)
    assert labels_of(manifest, "2", ["mi", "hyp", "lvh", "atrial_fibrillation"]) == [1.0, None, None, 1.0]
    assert labels_of(manifest, "4", ["sttc", "norm"]) == [None, 0.0]
    plain = build_manifest("ptbxl", tmp_path, findings=False)
    assert "lvh" not in plain.columns and "atrial_fibrillation" not in plain.columns


def test_ptbxl_bad_scp_codes_and_missing_files_name_the_file(tmp_path):
    root = fx.write_ptbxl(tmp_path)
    (root / "scp_statements.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="scp_statements.csv"):
        build_manifest("ptbxl", root)
    fx.write_ptbxl(root)
    table = pd.read_csv(root / "ptbxl_database.csv")
    table.loc[0, "scp_codes"] = "NORM"
    table.to_csv(root / "ptbxl_database.csv", index=False)
    with pytest.raises(DatasetLayoutError, match=r"ptbxl_database.csv: ecg_id 1: scp_codes is not a dict"):
        build_manifest("ptbxl", root)
    table.drop(columns="strat_fold").to_csv(root / "ptbxl_database.csv", index=False)
    with pytest.raises(DatasetLayoutError, match=r"ptbxl_database.csv: column\(s\) \['strat_fold'\] missing"):
        build_manifest("ptbxl", root)


# ---------------------------------------------------------------- MIMIC-IV-ECG

def test_mimic_iv_ecg_manifest_joins_machine_statements(tmp_path):
    manifest = build_manifest("mimic_iv_ecg", fx.write_mimic_iv_ecg(tmp_path / "ecg"))
    assert manifest["study_id"].tolist() == ["40689238", "44458630", "45090959"]
    assert manifest["patient_id"].tolist() == ["10000032", "10000032", "10000117"]
    assert manifest["ecg_path"].tolist()[0] == "files/p1000/p10000032/s40689238/40689238"
    assert manifest["study_date"].tolist()[2] == "2181-03-04"
    reports = manifest["ecg_report"].tolist()
    assert reports[0] == "Sinus rhythm\nPossible right atrial abnormality\nBorderline ECG"
    assert reports[1] == "Sinus rhythm\nNormal ECG"  # a blank report_1 is skipped
    assert pd.isna(reports[2])  # no machine_measurements row
    assert "ecg_report_path" not in manifest.columns
    assert not any(c for c in manifest.columns if c in {"norm", "label"})  # no labels by default


def test_mimic_iv_ecg_report_dir_writes_one_text_per_ecg(tmp_path):
    manifest = build_manifest("mimic_iv_ecg", fx.write_mimic_iv_ecg(tmp_path / "ecg"), report_dir=str(tmp_path / "r"))
    first = Path(manifest["ecg_report_path"].iloc[0])
    assert first == (tmp_path / "r" / "40689238.txt").resolve()
    assert first.read_text().startswith("Sinus rhythm\nPossible")
    assert pd.isna(manifest["ecg_report_path"].iloc[2])


# ---------------------------------------------------------------- MIMIC-CXR-JPG

def test_mimic_cxr_jpg_one_frontal_image_per_study_from_gzipped_csvs(tmp_path):
    root = fx.write_mimic_cxr_jpg(tmp_path / "jpg")
    assert (root / "mimic-cxr-2.0.0-metadata.csv.gz").is_file()
    assert not (root / "mimic-cxr-2.0.0-metadata.csv").exists()
    manifest = build_manifest("mimic_cxr_jpg", root)
    assert manifest["study_id"].tolist() == ["50414267", "53189527", "57375967"]  # lateral-only 56699142 left out
    assert manifest["view_position"].tolist() == ["PA", "PA", "AP"]
    assert manifest["cxr_path"].tolist()[1] == (
        "files/p10/p10000032/s53189527/e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c.jpg")
    assert all((root / p).is_file() for p in manifest["cxr_path"])
    assert manifest["official_split"].tolist() == ["train", "train", "test"]
    assert manifest["study_date"].tolist()[0] == "2180-05-06"


@pytest.mark.parametrize(("policy", "uncertain"), [("unknown", None), ("positive", 1.0), ("negative", 0.0)])
def test_mimic_cxr_jpg_chexpert_label_policy(tmp_path, policy, uncertain):
    manifest = build_manifest("mimic_cxr_jpg", fx.write_mimic_cxr_jpg(tmp_path), uncertain=policy)
    columns = ["atelectasis", "cardiomegaly", "consolidation", "edema", "no_finding"]
    assert labels_of(manifest, "50414267", columns) == [uncertain, 1.0, None, 0.0, None]
    assert labels_of(manifest, "57375967", columns) == [None] * 5  # study without a label row


def test_mimic_cxr_jpg_reports_from_the_mimic_cxr_release(tmp_path):
    root = fx.write_mimic_cxr_jpg(tmp_path / "jpg", reports_root=tmp_path / "cxr")
    manifest = build_manifest("mimic_cxr_jpg", root, reports_root=str(tmp_path / "cxr"))
    assert manifest["report_path"].iloc[0] == str(tmp_path / "cxr/files/p10/p10000032/s50414267.txt")
    assert manifest["report_path"].iloc[1:].isna().all()  # report files absent


def test_mimic_cxr_jpg_missing_column_names_the_file(tmp_path):
    root = fx.write_mimic_cxr_jpg(tmp_path)
    path = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    text = gzip.decompress(path.read_bytes()).decode().replace("ViewPosition", "View")
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(DatasetLayoutError, match=r"metadata.csv.gz: column\(s\) \['ViewPosition'\] missing"):
        build_manifest("mimic_cxr_jpg", root)


# ---------------------------------------------------------------- CheXpert

def test_chexpert_ids_from_paths_and_frontal_choice(tmp_path):
    manifest = build_manifest("chexpert", fx.write_chexpert(tmp_path))
    assert manifest["patient_id"].tolist() == ["patient00001", "patient00002", "patient64541"]
    assert manifest["study_id"].tolist() == ["patient00001/study1", "patient00002/study2", "patient64541/study1"]
    # Relative to the folder holding train.csv: the release prefix is dropped; PA beats AP.
    assert manifest["cxr_path"].tolist()[1] == "train/patient00002/study2/view3_frontal.jpg"
    assert manifest["official_split"].tolist() == ["train", "train", "valid"]
    assert manifest["sex"].tolist() == ["F", "F", "M"] and manifest["age"].tolist() == [68.0, 87.0, 73.0]
    with_laterals = build_manifest("chexpert", tmp_path, frontal_only=False)
    lateral = with_laterals.set_index("study_id").loc["patient00003/study1"]
    assert lateral["cxr_path"] == "train/patient00003/study1/view1_lateral.jpg" and pd.isna(lateral["sex"])


@pytest.mark.parametrize(("policy", "uncertain"), [("unknown", None), ("positive", 1.0), ("negative", 0.0)])
def test_chexpert_uncertain_and_blank_labels(tmp_path, policy, uncertain):
    manifest = build_manifest("chexpert", fx.write_chexpert(tmp_path), uncertain=policy)
    columns = ["no_finding", "cardiomegaly", "lung_opacity", "edema", "pleural_effusion", "fracture"]
    assert labels_of(manifest, "patient00002/study2", columns) == [None, uncertain, 1.0, uncertain, 1.0, None]
    assert labels_of(manifest, "patient00001/study1", ["no_finding", "pneumothorax", "support_devices"]) == [
        1.0, 0.0, 1.0]


def test_chexpert_rejects_unpublished_paths_and_label_values(tmp_path):
    root = fx.write_chexpert(tmp_path)
    table = pd.read_csv(root / "valid.csv")
    table.loc[0, "Cardiomegaly"] = 2.0
    table.to_csv(root / "valid.csv", index=False)
    with pytest.raises(MedfmError, match=r"valid.csv: unexpected label values \[2.0\]"):
        build_manifest("chexpert", root)
    table.loc[0, "Path"] = "images/00001.jpg"
    table.to_csv(root / "valid.csv", index=False)
    with pytest.raises(DatasetLayoutError, match=r"valid.csv: Path 'images/00001.jpg'"):
        build_manifest("chexpert", root)


# ---------------------------------------------------------------- registry and cohort wiring

def test_every_adapter_is_registered_with_a_citing_docstring():
    assert {"ptbxl", "mimic_iv_ecg", "mimic_cxr_jpg", "chexpert"} <= set(ADAPTERS)
    for name in ADAPTERS:
        doc = ADAPTERS.get(name).__doc__
        assert "Citation:" in doc and "Access:" in doc and "Labels" in doc
        assert create_adapter(name).config == ADAPTERS.get(name).Config()


WRITERS = {"ptbxl": fx.write_ptbxl, "mimic_iv_ecg": fx.write_mimic_iv_ecg, "mimic_cxr_jpg": fx.write_mimic_cxr_jpg,
           "chexpert": fx.write_chexpert}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_shipped_cohort_yaml_loads_against_the_miniature_dataset(tmp_path, name):
    config = yaml.safe_load((REPO / "cohorts" / f"{name}.yaml").read_text())
    WRITERS[name](tmp_path / "data")
    config["source"]["root"] = "data"  # relative to the YAML's folder
    options = config["source"]["options"]
    if "report_dir" in options:
        options["report_dir"] = str(tmp_path / "reports")
    if "reports_root" in options:
        options["reports_root"] = str(tmp_path / "data")
    path = tmp_path / "cohort.yaml"
    path.write_text(yaml.safe_dump(config))
    cohort = load_cohort(path)
    assert isinstance(cohort, Cohort)
    assert cohort.root == tmp_path / "data" and cohort.manifest_path == tmp_path / "data" / "manifest.csv"
    assert not cohort.manifest_path.exists()  # virtual: nothing is written into the dataset
    assert len(cohort.table) > 0 and cohort.table["study_id"].is_unique
    if name == "ptbxl":
        assert cohort.excluded == 1 and cohort.table["norm"].notna().all()  # the undiagnosed record


def write_source_cohort(tmp_path, **extra):
    fx.write_chexpert(tmp_path / "chexpert")
    config = {"name": "c", "source": {"adapter": "chexpert", "root": "chexpert", "options": {"uncertain": "positive"}},
              "modalities": {"cxr": "cxr_path"}, "labels": ["cardiomegaly"], "metadata": ["age", "sex"], **extra}
    path = tmp_path / "cohort.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_load_cohort_builds_the_manifest_from_source(tmp_path):
    cohort = load_cohort(write_source_cohort(tmp_path, include="age >= 70"))
    assert cohort.table["study_id"].tolist() == ["patient00002/study2", "patient64541/study1"]
    assert cohort.table["cardiomegaly"].tolist() == [1.0, 1.0]  # -1 with the positive policy
    assert (cohort.root / cohort.table["cxr_path"].iloc[0]).parent.name == "study2"


@pytest.mark.parametrize(("extra", "key", "message"), [
    ({"manifest": "m.csv"}, None, "exactly one of 'manifest'.*'source'.*not both"),
    ({"source": None}, None, "not neither"),
    ({"source": {"adapter": "ptb", "root": "x"}}, "source.adapter", "unknown adapter 'ptb'.*ptbxl"),
    ({"source": {"adapter": "chexpert", "root": "x", "options": {"uncertain": "maybe"}}}, "source",
     "options.uncertain"),
    ({"source": {"adapter": "chexpert", "root": "x", "options": {"resolution": 320}}}, "source", "options.resolution"),
    ({"source": {"adapter": "chexpert", "root": "missing"}}, "source.root", "file not found: missing"),
    ({"labels": ["cardiomegaly", "effusion"]}, "labels", r"\['effusion'\] not in chexpert manifest"),
])
def test_source_errors_name_the_key(tmp_path, extra, key, message):
    path = write_source_cohort(tmp_path, **extra)
    with pytest.raises(ConfigError, match=message) as err:
        load_cohort(path)
    assert err.value.key == key


def test_a_broken_dataset_layout_is_a_config_error_on_source(tmp_path):
    path = write_source_cohort(tmp_path)
    (tmp_path / "chexpert" / "valid.csv").unlink()
    with pytest.raises(ConfigError, match=r"source: adapter 'chexpert': .*valid.csv") as err:
        load_cohort(path)
    assert err.value.key == "source"


def test_label_columns_are_float_with_nan_never_object(tmp_path):
    manifest = build_manifest("mimic_cxr_jpg", fx.write_mimic_cxr_jpg(tmp_path))
    assert manifest["cardiomegaly"].dtype == np.float64 and np.isnan(manifest["cardiomegaly"].iloc[1])
