"""Cohort → case index: one case per image, findings and thumbnails, skip what is there, resume, remove."""

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medfm.errors import MedfmError
from medfm.heads import cases as cases_module
from medfm.heads.cases import IndexMismatchError, remove_studies, update_index
from medfm.heads.retrieval import CaseIndex
from medfm.io import read_report
from medfm.models import create_model, load_model_config

from ..conftest import REPO

IMAGES = ("cxr", "ecg", "oct", "fundus", "ct")
FINDINGS = {"cxr": ["cardiomegaly", "pleural_effusion"], "ecg": ["atrial_fibrillation", "lvh"],
            "oct": ["drusen", "intraretinal_fluid"], "fundus": ["drusen", "haemorrhage"], "ct": ["lung_nodule"]}


def by_key(index: CaseIndex) -> dict[tuple[str, str], np.ndarray]:
    return {(s, m): index.vector(i) for i, s, m in index.db.execute("SELECT id, study_id, modality FROM cases")}


def test_every_image_is_one_case_with_its_findings_report_and_thumbnail(indexed_cohort):
    manifest = pd.read_csv(indexed_cohort.manifest)
    index = CaseIndex.load(indexed_cohort.index)
    expected = {(row.study_id, m) for row in manifest.itertuples() for m in IMAGES
                if isinstance(getattr(row, f"{m}_path"), str)}
    assert index.keys() == expected
    for study_id, modality in expected:
        [(_, case)] = index.find(study_id, modality)
        row = manifest.set_index("study_id").loc[study_id]
        positive = [f for f in FINDINGS[modality] if row[f] == 1]
        assert case.findings == ", ".join(positive)
        assert case.device == row[f"{modality}_device"] and case.site == row["site"]
        assert case.date == row["study_date"]
        assert case.report == read_report(indexed_cohort.manifest.parent / row[f"{modality}_report_path"])
        with Image.open(indexed_cohort.index / "thumbnails" / case.thumbnail) as thumb:
            assert max(thumb.size) <= 384 and thumb.getextrema() != (0, 0)


def test_no_patient_id_or_study_id_is_stored_in_clear(indexed_cohort):
    manifest = pd.read_csv(indexed_cohort.manifest)
    index = CaseIndex.load(indexed_cohort.index)
    keys = {row[0] for row in index.db.execute("SELECT patient_key FROM cases")}
    assert not keys & set(manifest["patient_id"])
    assert len(keys) == manifest["patient_id"].nunique()  # one pseudonym per patient
    blobs = b"".join(p.read_bytes() for p in indexed_cohort.index.rglob("*") if p.is_file())
    assert not any(pid.encode() in blobs for pid in manifest["patient_id"])
    names = {p.name for p in (indexed_cohort.index / "thumbnails").iterdir()}
    assert not any(s in n for s in manifest["study_id"] for n in names)


def test_a_rerun_adds_nothing_and_a_removed_study_comes_back_alone(indexed_cohort, tmp_path):
    index_dir = tmp_path / "index"
    shutil.copytree(indexed_cohort.index, index_dir)
    before = by_key(CaseIndex.load(index_dir))
    again = update_index(index_dir, indexed_cohort.model, indexed_cohort.cohort)
    assert again["added"] == 0 and again["skipped_existing"] == len(before)

    study = sorted(before)[0][0]
    thumbs = {c.thumbnail for _, c in CaseIndex.load(index_dir).find(study)}
    removed = remove_studies(index_dir, [study])
    assert removed == sum(s == study for s, _ in before)
    assert not any((index_dir / "thumbnails" / t).exists() for t in thumbs)
    assert not CaseIndex.load(index_dir).find(study)

    added = update_index(index_dir, indexed_cohort.model, indexed_cohort.cohort)
    assert added["added"] == removed
    after = by_key(CaseIndex.load(index_dir))
    assert after.keys() == before.keys()
    for key, vector in before.items():
        np.testing.assert_allclose(after[key], vector, atol=1e-6)


def test_a_killed_build_resumes_from_its_finished_chunks(indexed_cohort, tmp_path, monkeypatch):
    real, calls = cases_module._embed_chunk, []

    def dies_at_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a SIGINT does mid-build
        return real(*args, **kwargs)

    monkeypatch.setattr(cases_module, "_embed_chunk", dies_at_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        update_index(tmp_path / "index", indexed_cohort.model, indexed_cohort.cohort, batch_size=4)
    [pending] = (tmp_path / "index").glob(".pending-*")
    assert len(list(pending.glob("chunk-*.npz"))) == 2 and not (tmp_path / "index/CURRENT").exists()

    calls.clear()
    monkeypatch.setattr(cases_module, "_embed_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    update_index(tmp_path / "index", indexed_cohort.model, indexed_cohort.cohort, batch_size=4)
    chunks = -(-len(pd.read_csv(indexed_cohort.manifest)) // 4)
    assert len(calls) == chunks - 2  # the two finished chunks were not embedded again
    assert not list((tmp_path / "index").glob(".pending-*"))
    resumed, uninterrupted = by_key(CaseIndex.load(tmp_path / "index")), by_key(CaseIndex.load(indexed_cohort.index))
    assert resumed.keys() == uninterrupted.keys()
    for key, vector in uninterrupted.items():
        np.testing.assert_allclose(resumed[key], vector, atol=1e-6)


def test_adding_with_another_model_is_refused(indexed_cohort, tmp_path):
    other = create_model(load_model_config(REPO / "configs/models/tiny.yaml"), seed=1)
    other.save_pretrained(tmp_path / "other")
    index_dir = tmp_path / "index"
    shutil.copytree(indexed_cohort.index, index_dir)
    with pytest.raises(IndexMismatchError, match="another model"):
        update_index(index_dir, tmp_path / "other", indexed_cohort.cohort)


def test_findings_must_name_labels_of_image_modalities(tmp_path):
    from medfm.cohort import load_cohort

    text = (REPO / "cohorts/demo.yaml").read_text().replace("ct: [lung_nodule]}", "ct: [lung_mass]}")
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(MedfmError, match="lung_mass"):
        load_cohort(tmp_path / "c.yaml", require_manifest=False)


def test_every_case_records_its_cohort(indexed_cohort):
    index = CaseIndex.load(indexed_cohort.index)
    assert {case.cohort for case in (index.case(i) for i, in index.db.execute("SELECT id FROM cases"))} == {"demo"}
    assert index.info["cohorts"] == ["demo"]


def test_a_second_cohort_reusing_study_ids_is_refused_not_skipped(indexed_cohort, tmp_path):
    index_dir = tmp_path / "index"
    shutil.copytree(indexed_cohort.index, index_dir)
    other = indexed_cohort.cohort.read_text().replace("name: demo\n", "name: other\n", 1)
    (tmp_path / "other.yaml").write_text(other.replace("manifest: data/manifest.csv",
                                                       f"manifest: {indexed_cohort.manifest}"))
    with pytest.raises(MedfmError, match="already in the index under another cohort"):
        update_index(index_dir, indexed_cohort.model, tmp_path / "other.yaml")
    assert len(CaseIndex.load(index_dir)) == len(CaseIndex.load(indexed_cohort.index))
