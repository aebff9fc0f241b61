"""`medfm ingest dicomweb` against a real Orthanc loaded with the synthetic demo studies."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from medfm.cli import main
from medfm.cohort import dicomweb as dw
from medfm.cohort import load_cohort
from medfm.cohort.dicomweb import DicomWebError, deid_key_location, ingest_dicomweb, study_key
from medfm.data.dataset import READERS
from medfm.heads.retrieval import CaseIndex
from medfm.io.deid import DeidKey, load_key
from medfm.keys import Modality
from tests.cohort.orthanc import free_port, run_orthanc

IMAGES = (Modality.CXR, Modality.OCT, Modality.FUNDUS, Modality.CT)
LABELS = ["cardiomegaly", "pleural_effusion", "atrial_fibrillation", "lvh", "drusen", "intraretinal_fluid",
          "haemorrhage", "lung_nodule"]


@dataclass(frozen=True)
class Expected:
    """What the server holds, per original StudyInstanceUID, from the synthetic cohort's manifest and files."""

    rows: dict[str, dict]  # StudyInstanceUID → demo manifest row
    modalities: dict[str, set[Modality]]  # StudyInstanceUID → image modalities stored as DICOM
    slices: dict[str, int]  # StudyInstanceUID → CT slice count

    def keys(self, cohort_path: Path) -> dict[str, str]:
        """StudyInstanceUID → study key in this cohort (a hash of the UID as its de-identification key remaps it)."""
        key = cohort_key(cohort_path)
        return {uid: study_key(key.uid(uid)) for uid in self.rows}


def cohort_key(cohort_path: Path) -> DeidKey:
    return load_key(deid_key_location(load_cohort(cohort_path).manifest_path))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, indexed_cohort):
    """Orthanc holding every DICOM file of the indexed demo cohort, plus one MR series medfm does not map."""
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        files = sorted((indexed_cohort.root / "data").rglob("*.dcm"))
        for path in files:
            server.upload(path.read_bytes())
        mr = pydicom.dcmread(files[0])  # a second, unmapped series in the first file's study
        mr.Modality = "MR"
        mr.SeriesInstanceUID = generate_uid(entropy_srcs=["medfm-test", "mr-series"])
        mr.SOPInstanceUID = mr.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["medfm-test", "mr"])
        buffer = pydicom.filebase.DicomBytesIO()
        mr.save_as(buffer, enforce_file_format=True)
        server.upload(buffer.getvalue())
        yield server


@pytest.fixture(scope="module")
def expected(indexed_cohort) -> Expected:
    demo = pd.read_csv(indexed_cohort.manifest, dtype=str, keep_default_na=False)
    root = indexed_cohort.manifest.parent
    rows, modalities, slices = {}, {}, {}
    for _, row in demo.iterrows():
        stored = {}
        for modality in IMAGES:
            cell = row[f"{modality}_path"]
            if cell and (cell.endswith(".dcm") or modality == Modality.CT):
                stored[modality] = root / cell
        if not stored:
            continue
        first = next(iter(stored.values()))
        first = sorted(first.glob("*.dcm"))[0] if first.is_dir() else first
        uid = str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
        rows[uid], modalities[uid] = row.to_dict(), set(stored)
        if Modality.CT in stored:
            slices[uid] = len(list(stored[Modality.CT].glob("*.dcm")))
    return Expected(rows, modalities, slices)


def new_cohort(folder: Path, indexed_cohort, header: bool = True) -> Path:
    """A cohort YAML like the demo's whose manifest holds only the header (or does not exist yet).

    Its accrual rule is left out: ingest shifts each patient's dates (an accrual window belongs in the
    QIDO-RS ``StudyDate`` filter, where the dates are real).
    """
    folder.mkdir(parents=True, exist_ok=True)
    text = indexed_cohort.cohort.read_text().replace("name: demo", "name: pacs")
    text = "".join(line for line in text.splitlines(keepends=True) if "accrual" not in line)
    (folder / "cohort.yaml").write_text(text)
    if header:
        first_line = indexed_cohort.manifest.read_text().splitlines()[0]
        (folder / "data").mkdir()
        (folder / "data" / "manifest.csv").write_text(first_line + "\n")
    return folder / "cohort.yaml"


class CountingClient(DICOMwebClient):
    """Counts WADO-RS retrieves, to show that a re-run retrieves nothing."""

    retrieved = 0

    def retrieve_series(self, *args, **kwargs):
        CountingClient.retrieved += 1
        return super().retrieve_series(*args, **kwargs)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, indexed_cohort, orthanc):
    """One full ingest into an empty cohort, also adding the studies to a copy of the demo index."""
    root = tmp_path_factory.mktemp("ingest")
    cohort = new_cohort(root, indexed_cohort)
    index = root / "index"
    shutil.copytree(indexed_cohort.index, index)
    before = len(CaseIndex.load(index))
    summary = ingest_dicomweb(orthanc.dicomweb, cohort, index_dir=index)
    return cohort, index, before, summary


def test_ingest_writes_files_and_rows(ingested, expected):
    cohort_path, _, _, summary = ingested
    assert summary["ingested"] == summary["matched"] == len(expected.rows)
    assert summary["skipped_series"] == {"MR": 1} and summary["refused_burned_in"] == 0
    cohort = load_cohort(cohort_path)  # empty label cells are accepted: unknown, not negative
    table = cohort.table.set_index("study_id")
    keys, deid = expected.keys(cohort_path), cohort_key(cohort_path)
    assert set(table.index) == set(keys.values())
    assert table[LABELS].isna().all().all()
    for uid, demo in expected.rows.items():
        key = keys[uid]
        row = table.loc[key]
        # Pseudonyms keyed by the cohort's key: one patient stays one patient, one site one site.
        assert row["patient_id"] == deid.patient_pseudonym(demo["patient_id"])
        assert row["site"] == deid.site_pseudonym(demo["site"])
        assert (str(row["sex"]), float(row["age"])) == (demo["sex"], float(demo["age"]))  # characteristics kept
        shifted = dt.date.fromisoformat(demo["study_date"]) + dt.timedelta(deid.date_shift_days(demo["patient_id"]))
        assert row["study_date"] == shifted.isoformat() != demo["study_date"]  # a patient's intervals are kept
        for modality in IMAGES:
            if modality in expected.modalities[uid]:
                assert row[f"{modality}_device"] == demo[f"{modality}_device"]
                path = cohort.root / row[f"{modality}_path"]
                assert path.resolve().is_relative_to((cohort.root / "dicomweb" / modality / key).resolve())
            else:
                assert pd.isna(row[f"{modality}_path"])
        assert pd.isna(row["ecg_path"]) and pd.isna(row["cxr_report_path"])
    text = (cohort.root / "manifest.csv").read_text()
    assert "SYNTH^" not in text and not re.search(r"P\d{5}", text)  # no name, no original patient id
    assert not re.search(r"P\d{5}", summary["message"]) and "mf-" not in summary["message"]


def test_files_are_complete_readable_and_named_by_hash(ingested, expected, indexed_cohort):
    cohort = load_cohort(ingested[0])
    table = cohort.table.set_index("study_id")
    keys = expected.keys(ingested[0])
    for uid, count in expected.slices.items():
        folder = cohort.root / table.loc[keys[uid], "ct_path"]
        assert len(list(folder.glob("*.dcm"))) == count
        # The de-identified slices still form one series, read as the volume the original slices make.
        original = READERS[Modality.CT](indexed_cohort.manifest.parent / expected.rows[uid]["ct_path"])
        volume = READERS[Modality.CT](folder)
        assert np.array_equal(volume.array, original.array) and np.allclose(volume.affine, original.affine)
    for modality in IMAGES:
        cells = table[f"{modality}_path"].dropna()
        assert len(cells) == sum(modality in m for m in expected.modalities.values())
        for cell in cells:
            image = READERS[modality](cohort.root / cell)
            assert np.isfinite(np.asarray(image.array, dtype=np.float32)).all()
    stored = [p for p in (cohort.root / "dicomweb").rglob("*") if p.is_file()]
    assert stored and all(re.fullmatch(r"[0-9a-f]{24}\.dcm", p.name) for p in stored)
    assert not list((cohort.root / "dicomweb").rglob(".*.partial"))


def test_no_original_identifier_reaches_the_disk(ingested, indexed_cohort):
    """Every byte of every stored file and of the manifest, scanned for what the server's headers held."""
    cohort = load_cohort(ingested[0])
    originals, births = set(), set()
    for path in (indexed_cohort.root / "data").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        originals |= {ds.PatientID, str(ds.PatientName), ds.AccessionNumber, ds.StudyID, ds.InstitutionName,
                      ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
        births.add(ds.PatientBirthDate)
    stored = [p for p in (cohort.root / "dicomweb").rglob("*") if p.is_file()]
    assert stored and all(len(v) >= 6 for v in originals)
    for path in [*stored, cohort.manifest_path]:
        data = path.read_bytes()
        found = [v for v in originals | births if v.encode() in data]
        assert not found, f"{path.name}: {found}"
    for path in stored:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientBirthDate == "" and ds.PatientID.startswith("mf-")
        assert not [e for e in ds.iterall() if e.tag.is_private]
    key_file = deid_key_location(cohort.manifest_path)  # beside the storage, owner-only, never inside it
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    secret = key_file.read_text().strip().encode()
    assert not any(secret in p.read_bytes() for p in [*stored, cohort.manifest_path])


def test_index_gains_the_studies(ingested, expected):
    cohort, index_dir, before, summary = ingested
    index = CaseIndex.load(index_dir)
    images = sum(len(m) for m in expected.modalities.values())
    assert summary["index"]["added"] == images == len(index) - before
    keys = expected.keys(cohort)
    assert {(keys[uid], str(m)) for uid, ms in expected.modalities.items() for m in ms} <= index.keys()


def test_rerun_retrieves_and_adds_nothing(ingested, orthanc):
    cohort, index, _, first = ingested
    manifest = load_cohort(cohort).manifest_path
    text = manifest.read_text()
    CountingClient.retrieved = 0
    again = ingest_dicomweb(orthanc.dicomweb, cohort, index_dir=index, client=CountingClient(orthanc.dicomweb))
    assert CountingClient.retrieved == 0
    assert (again["ingested"], again["already_present"], again["index"]["added"]) == (0, first["ingested"], 0)
    assert manifest.read_text() == text


@pytest.mark.parametrize("filters, wanted", [
    ({"ModalitiesInStudy": "CT"}, lambda demo, modalities: Modality.CT in modalities),
    ({"StudyDate": "20200101-20211231"}, lambda demo, modalities: "2020-01-01" <= demo["study_date"] <= "2021-12-31"),
])
def test_qido_filter_limits_what_is_ingested(tmp_path, indexed_cohort, orthanc, expected, filters, wanted):
    cohort = new_cohort(tmp_path, indexed_cohort, header=False)  # the manifest is created from the YAML
    summary = ingest_dicomweb(orthanc.dicomweb, cohort, filters=filters)
    study_keys = expected.keys(cohort)
    keys = {study_keys[uid] for uid, demo in expected.rows.items() if wanted(demo, expected.modalities[uid])}
    assert keys and len(keys) < len(expected.rows)
    assert set(load_cohort(cohort).table["study_id"]) == keys and summary["ingested"] == len(keys)


def test_limit_then_resume(tmp_path, indexed_cohort, orthanc, expected):
    cohort = new_cohort(tmp_path, indexed_cohort)
    assert ingest_dicomweb(orthanc.dicomweb, cohort, limit=2)["ingested"] == 2
    rest = ingest_dicomweb(orthanc.dicomweb, cohort)
    assert (rest["already_present"], rest["ingested"]) == (2, len(expected.rows) - 2)
    assert len(load_cohort(cohort).table) == len(expected.rows)


def test_burned_in_annotation_is_refused_unless_allowed(tmp_path, indexed_cohort, orthanc, monkeypatch):
    cohort = new_cohort(tmp_path, indexed_cohort)
    real, flagged = dw._retrieve, []

    def first_study_burned_in(client, url, study_uid, key, series):
        instances = real(client, url, study_uid, key, series)
        if not flagged or flagged[0] == key:
            flagged[:1] = [key]
            for ds in instances:
                ds.BurnedInAnnotation = "YES"
        return instances

    monkeypatch.setattr(dw, "_retrieve", first_study_burned_in)
    refused = ingest_dicomweb(orthanc.dicomweb, cohort, limit=1)
    assert refused["refused_burned_in"] >= 1 and "BurnedInAnnotation YES" in refused["message"]
    table = load_cohort(cohort).table
    assert flagged[0] not in set(table["study_id"]) and len(table) == 1  # the next study filled the limit
    assert not list((tmp_path / "data" / "dicomweb").glob(f"*/{flagged[0]}"))  # nothing of it written
    allowed = ingest_dicomweb(orthanc.dicomweb, cohort, limit=1, allow_burned_in=True)
    assert allowed["refused_burned_in"] == 0 and flagged[0] in set(load_cohort(cohort).table["study_id"])


def test_failure_keeps_finished_studies_and_a_valid_manifest(tmp_path, indexed_cohort, orthanc, monkeypatch):
    cohort = new_cohort(tmp_path, indexed_cohort)
    real, calls = dw._retrieve, []

    def failing_after_one_study(client, url, study_uid, key, series):
        calls.append(key)
        if len(set(calls)) > 1:
            raise DicomWebError(f"{url}: study {key}: injected failure")
        return real(client, url, study_uid, key, series)

    monkeypatch.setattr(dw, "_retrieve", failing_after_one_study)
    with pytest.raises(DicomWebError, match="injected failure"):
        ingest_dicomweb(orthanc.dicomweb, cohort)
    table = load_cohort(cohort).table
    assert list(table["study_id"]) == [calls[0]]
    folders = [p for p in (tmp_path / "data" / "dicomweb").glob("*/*") if p.is_dir()]
    assert {p.name for p in folders} == {calls[0]}  # nothing half-written of the failed study


def test_unreachable_server_and_http_errors_are_one_line(tmp_path, indexed_cohort, orthanc):
    cohort = new_cohort(tmp_path, indexed_cohort)
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DicomWebError, match=r"cannot connect \(Connection refused\)") as err:
        ingest_dicomweb(url, cohort)
    assert url in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DicomWebError, match=r"QIDO-RS study search: HTTP 404"):
        ingest_dicomweb(f"{orthanc.url}/no-such-root", cohort)
    with pytest.raises(DicomWebError, match="no index there"):  # checked before anything is retrieved
        ingest_dicomweb(orthanc.dicomweb, cohort, index_dir=tmp_path / "no-index")
    assert (tmp_path / "data" / "manifest.csv").read_text().count("\n") == 1  # still just the header


def test_cli(tmp_path, indexed_cohort, orthanc, expected, capsys):
    cohort = new_cohort(tmp_path, indexed_cohort)
    assert main(["ingest", "dicomweb", orthanc.dicomweb, "--cohort", str(cohort),
                 "--filter", "ModalitiesInStudy=CT", "--limit", "1"]) == 0
    assert "ingested 1 studies" in capsys.readouterr().out
    assert main(["ingest", "dicomweb", f"http://127.0.0.1:{free_port()}/dicom-web", "--cohort", str(cohort)]) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and "Traceback" not in err
