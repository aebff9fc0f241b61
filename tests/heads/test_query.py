"""Queries: a file is embedded exactly as its indexed twin, its modality told from content, its patient left out."""

import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medfm.errors import MedfmError
from medfm.heads.cases import IndexMismatchError
from medfm.heads.query import CaseSearch, QueryError, hit_json, modality_of_file
from medfm.io.archive import ArchiveError
from medfm.models import create_model, load_model_config

from ..conftest import REPO


@pytest.fixture(scope="module")
def engine(indexed_cohort):
    return CaseSearch.open(indexed_cohort.index)


@pytest.fixture(scope="module")
def manifest(indexed_cohort):
    return pd.read_csv(indexed_cohort.manifest)


def first(manifest, modality):
    row = manifest[manifest[f"{modality}_path"].notna()].iloc[0]
    return row, row[f"{modality}_path"]


@pytest.mark.parametrize("modality", ["cxr", "ecg", "oct", "fundus", "ct"])
def test_a_file_finds_its_own_indexed_case_first_when_its_patient_is_allowed(engine, indexed_cohort, manifest,
                                                                             modality):
    row, relative = first(manifest, modality)
    query = engine.file_query(indexed_cohort.manifest.parent / relative)
    assert query.modality == modality
    [hit] = engine.search(query, k=1, modality=modality, include_own_patient=True)
    assert hit.case.study_id == row["study_id"] and hit.score == pytest.approx(1.0, abs=1e-5)


def test_the_query_patients_studies_are_left_out_by_default(engine, indexed_cohort, manifest):
    row, relative = first(manifest, "cxr")
    query = engine.file_query(indexed_cohort.manifest.parent / relative)
    own = set(manifest.loc[manifest["patient_id"] == row["patient_id"], "study_id"])
    hits = engine.search(query, k=50)
    assert hits and not own & {h.case.study_id for h in hits}
    assert len(hits) == len(engine.index) - sum(len(engine.index.find(s)) for s in own)


def test_zipped_series_and_record_embed_like_the_originals(engine, indexed_cohort, manifest, tmp_path):
    root = indexed_cohort.manifest.parent
    for modality, pattern in (("ct", "*"), ("ecg", None)):
        _, relative = first(manifest, modality)
        source = root / relative
        files = sorted(source.glob(pattern)) if modality == "ct" else sorted(source.parent.glob(source.name + ".*"))
        archive = tmp_path / f"{modality}.zip"
        with zipfile.ZipFile(archive, "w") as out:
            for f in files:
                out.write(f, f"upload/{f.name}")
        np.testing.assert_allclose(engine.file_query(archive).vector, engine.file_query(source).vector, atol=1e-6)


def test_modality_is_told_by_content(indexed_cohort, manifest, tmp_path):
    root = indexed_cohort.manifest.parent
    for modality in ("cxr", "ecg", "oct", "fundus", "ct"):
        assert modality_of_file(root / first(manifest, modality)[1]) == modality
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8) * 90,
                               np.zeros((8, 8), np.uint8)])).save(tmp_path / "colour.jpg")
    assert modality_of_file(tmp_path / "grey.png") == "cxr"
    assert modality_of_file(tmp_path / "colour.jpg") == "fundus"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    with pytest.raises(QueryError, match="does not say its modality"):
        modality_of_file(tmp_path / "v.nii.gz")


def test_text_and_indexed_study_queries(engine, manifest):
    hits = engine.search(engine.text_query("Moderate bilateral pleural effusions."), k=3, modality="cxr")
    assert len(hits) == 3 and all(h.case.modality == "cxr" for h in hits)
    both = manifest[manifest["cxr_path"].notna() & manifest["ecg_path"].notna()].iloc[0]["study_id"]
    with pytest.raises(MedfmError, match="say which modality"):
        engine.case_query(both)
    query = engine.case_query(both, "ecg")
    assert all(h.case.patient_key != query.patient_key for h in engine.search(query, k=20))
    with pytest.raises(MedfmError, match="empty"):
        engine.text_query("  ")


def test_results_never_carry_the_patient_key(engine):
    [hit] = engine.search(engine.text_query("normal chest"), k=1)
    assert "patient_key" not in hit_json(hit) and hit_json(hit)["id"] == hit.id


def test_a_zip_that_climbs_out_is_refused(engine, tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("../../outside.dcm", b"x")
    with pytest.raises(ArchiveError, match="outside"):
        engine.file_query(archive)
    assert not (tmp_path.parent / "outside.dcm").exists()


def test_another_checkpoint_cannot_query_the_index(indexed_cohort, tmp_path):
    create_model(load_model_config(REPO / "configs/models/tiny.yaml"), seed=3).save_pretrained(tmp_path / "m")
    with pytest.raises(IndexMismatchError, match="not the checkpoint"):
        CaseSearch.open(indexed_cohort.index, tmp_path / "m")
    shutil.copytree(indexed_cohort.index, tmp_path / "index")
    shutil.rmtree(tmp_path / "m")
    # The recorded model is still there: opening without --model works.
    assert len(CaseSearch.open(tmp_path / "index").index) == len(CaseSearch.open(indexed_cohort.index).index)
