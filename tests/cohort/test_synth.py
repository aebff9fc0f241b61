"""The synthetic demo cohort: real files that read back, determinism, and findings in the signals."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage
from scipy.signal import find_peaks

with warnings.catch_warnings():  # wfdb 4.3 trips a pandas deprecation on import
    warnings.simplefilter("ignore")
    import wfdb

from medfm.cohort.synth import CT_FINDINGS, EYE_FINDINGS, FINDINGS, synthesize_cohort
from medfm.cohort.synth.ct import CT_DEVICES
from medfm.cohort.synth.ecg import ECG_DEVICES, wfdb_format16
from medfm.keys import STANDARD_LEADS

N_PATIENTS = 40
COLUMNS = [
    "patient_id", "study_id", "site", "study_date", "age", "sex", "cxr_path", "cxr_device",
    "ecg_path", "ecg_device", "cxr_report_path", "ecg_report_path", *FINDINGS,
    "oct_path", "oct_device", "fundus_path", "fundus_device", "ct_path", "ct_device",
    "oct_report_path", "fundus_report_path", "ct_report_path", *EYE_FINDINGS, *CT_FINDINGS,
]
# SHA-256 of files of the 6-patient, seed-0 cohort as written before the eye and CT
# modalities were added: adding them must leave every earlier file byte-identical.
DIGESTS_BEFORE_EYE_CT = {
    "cxr/site_a/P00001/S000001.dcm": "991e28a5c84bc5ddf32fbcc0c03ccad40414df3419dfdb3c46c9c59d4212f0ee",
    "cxr/site_b/P00002/S000002.dcm": "8385936c25dd1c6dd35eafba4e07b179bde5b05c7c6739e1887a3b0452adebb7",
    "ecg/site_a/P00001/S000001.dat": "f52b54d9b68f121bebcc7eb29870fafc3d0f3965c624db0d3f2ad669664dcbe6",
    "ecg/site_c/P00003/S000003.dat": "015dec2ef8d547faed7d1b6d854ab180f535434686475ab3b19a63b4614bd1e5",
    "reports/site_a/P00001/S000001_cxr.txt": "53be98f354d38795d5cefdce55e916ddf915b9f110a8eab80b10544cdf292d46",
    "reports/site_b/P00002/S000002_ecg.txt": "171b8e9598bd46d49a5504855d26514ae6d0b781fa6e83fb68382d67c36970e7",
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("cohort")
    # The eye and CT files have their own tests (test_synth_eye_ct.py); skipping them here keeps this fast.
    manifest = synthesize_cohort(root, n_patients=N_PATIENTS, seed=0, progress=False, modalities=("cxr", "ecg"))
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return root, rows


# ---- measurements on the pixels and samples --------------------------------------


def attenuation(ds: pydicom.Dataset) -> np.ndarray:
    """Rescaled pixels, oriented so higher means more attenuation on every device."""
    v = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return -v if ds.PhotometricInterpretation == "MONOCHROME1" else v


def lung_mask(img: np.ndarray) -> np.ndarray:
    """Dark regions inside the body big enough to be lung (a lung may come in pieces)."""
    img = ndimage.gaussian_filter(img, 1.5)
    air = np.percentile(img, 1)
    body = ndimage.binary_fill_holes(img > air + 0.3 * (np.median(img) - air))
    # Keep clear of the skin edge, whose partial-volume ramp is as dark as lung.
    body = ndimage.binary_erosion(body, iterations=img.shape[0] // 40)
    lung_level, soft_level = np.percentile(img[body], [4, 60])
    dark = body & (img < (lung_level + soft_level) / 2)
    labels, n = ndimage.label(dark)
    sizes = ndimage.sum(dark, labels, range(1, n + 1))
    return np.isin(labels, 1 + np.nonzero(sizes > 0.005 * img.size)[0])


def cardiothoracic_ratio(img: np.ndarray) -> float:
    """Widest gap between the lungs at heart level, over the widest lung-to-lung extent.

    Heart level is placed from the apices and thoracic width (lungs are about as
    tall as the thorax is wide), above the domes, whatever the heart hides.
    """
    lungs = lung_mask(img)
    cols = np.nonzero(lungs.any(axis=0))[0]
    thoracic = cols[-1] - cols[0]
    mid = (cols[0] + cols[-1]) // 2
    top = np.nonzero(lungs.any(axis=1))[0][0]
    gap = 0
    for r in range(top + int(0.45 * 0.86 * thoracic), top + int(0.72 * 0.86 * thoracic)):
        right, left = np.nonzero(lungs[r, :mid])[0], np.nonzero(lungs[r, mid:])[0]
        inner_right = right[-1] if len(right) else cols[0]
        inner_left = mid + left[0] if len(left) else cols[-1]
        gap = max(gap, inner_left - inner_right)
    return gap / thoracic


def lateral_base_opacity(img: np.ndarray) -> float:
    """Brightest lateral lung base (either side) relative to mid-lung, in soft-tissue units.

    The base is placed from the body outline and the lung apices, not from the
    lung outline, which an effusion itself moves: lungs reach about 0.4 body
    widths either side of the midline and are about 0.68 body widths tall.
    """
    lungs = lung_mask(img)
    smooth = ndimage.gaussian_filter(img, 2.0)
    air = np.percentile(smooth, 1)
    body_cols = np.nonzero((smooth > air + 0.3 * (np.median(smooth) - air)).any(axis=0))[0]
    width, centre = body_cols[-1] - body_cols[0], (body_cols[0] + body_cols[-1]) / 2
    top = np.nonzero(lungs.any(axis=1))[0][0]
    band = slice(top + int(0.68 * 0.68 * width), top + int(0.82 * 0.68 * width))  # above a normal dome
    lung_level = np.median(smooth[lungs])
    soft = np.median(smooth[~lungs & (smooth > lung_level)])
    scores = []
    for sign in (-1, 1):
        lo, hi = sorted(centre + sign * np.array([0.30, 0.37]) * width)
        box = smooth[band, int(lo):int(hi)]
        scores.append((box.mean() - lung_level) / (soft - lung_level))
    return max(scores)


def r_peaks(lead: np.ndarray, fs: float) -> np.ndarray:
    x = lead - ndimage.median_filter(lead, size=int(0.6 * fs) | 1)
    peaks, _ = find_peaks(x, height=0.5 * np.percentile(x, 99.5), distance=int(0.28 * fs))
    return peaks


def rr_cv(record: wfdb.Record) -> float:
    peaks = r_peaks(record.p_signal[:, STANDARD_LEADS.index("II")], record.fs)
    rr = np.diff(peaks) / record.fs
    return float(rr.std() / rr.mean())


def sokolow_lyon(record: wfdb.Record) -> float:
    """Median over beats of S depth in V1 plus R height in V5 (mV), from a pre-QRS baseline."""
    fs = record.fs
    v1 = record.p_signal[:, STANDARD_LEADS.index("V1")]
    v5 = record.p_signal[:, STANDARD_LEADS.index("V5")]
    w, pre = int(0.06 * fs), (int(0.12 * fs), int(0.06 * fs))
    values = []
    for p in r_peaks(record.p_signal[:, STANDARD_LEADS.index("II")], fs):
        if p - pre[0] < 0 or p + w >= len(v1):
            continue
        b1, b5 = np.median(v1[p - pre[0]:p - pre[1]]), np.median(v5[p - pre[0]:p - pre[1]])
        values.append((b1 - v1[p - w:p + w].min()) + (v5[p - w:p + w].max() - b5))
    return float(np.median(values))


# ---- files and formats -------------------------------------------------------------


def test_manifest_columns_and_integrity(cohort):
    root, rows = cohort
    with open(root / "manifest.csv", newline="") as f:
        assert next(csv.reader(f)) == COLUMNS
    assert len({r["patient_id"] for r in rows}) == N_PATIENTS
    assert len({r["study_id"] for r in rows}) == len(rows)
    assert {r["site"] for r in rows} == {"site_a", "site_b", "site_c"}
    for r in rows:
        assert re.fullmatch(r"P\d{5}", r["patient_id"]) and re.fullmatch(r"S\d{6}", r["study_id"])
        assert 30 <= int(r["age"]) <= 90 and r["sex"] in {"F", "M"}
        assert r["cxr_path"] or r["ecg_path"]
        for mod in ("cxr", "ecg"):
            present = bool(r[f"{mod}_path"])
            assert bool(r[f"{mod}_device"]) == present and bool(r[f"{mod}_report_path"]) == present
        if r["cxr_path"]:
            assert (root / r["cxr_path"]).is_file() and (root / r["cxr_report_path"]).is_file()
            assert r["cxr_path"] == f"cxr/{r['site']}/{r['patient_id']}/{r['study_id']}.dcm"
        if r["ecg_path"]:
            assert (root / f"{r['ecg_path']}.hea").is_file() and (root / f"{r['ecg_path']}.dat").is_file()
            assert (root / r["ecg_report_path"]).is_file()
        assert all(r[f] in {"0", "1"} for f in FINDINGS)
    by_patient: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    for visits in by_patient.values():
        dates = [dt.date.fromisoformat(v["study_date"]) for v in visits]
        assert dates == sorted(dates) and len(set(dates)) == len(dates)
        assert len({v["site"] for v in visits}) == 1
    for f in FINDINGS:  # every finding occurs, none in everyone
        assert 0 < np.mean([int(r[f]) for r in rows]) < 0.6


def test_dicom_reads_back_as_specified(cohort):
    root, rows = cohort
    seen = {}
    expected = {  # device: (photometric, spacing, size, bits stored, slope, intercept, SOP class)
        "ACME DX-500": ("MONOCHROME2", 1.10, 320, 12, 1.0, 0.0, "1.2.840.10008.5.1.4.1.1.1.1"),
        "Borealis CR-200": ("MONOCHROME1", 1.40, 256, 10, 2.0, -1024.0, "1.2.840.10008.5.1.4.1.1.1"),
        "Corvid DX-9": ("MONOCHROME2", 1.25, 288, 14, 0.5, 100.0, "1.2.840.10008.5.1.4.1.1.1.1"),
    }
    for r in (r for r in rows if r["cxr_path"]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = pydicom.dcmread(root / r["cxr_path"])
            pixels = ds.pixel_array
        photometric, spacing, size, bits, slope, intercept, sop = expected[r["cxr_device"]]
        assert ds.PhotometricInterpretation == photometric
        assert [float(v) for v in ds.PixelSpacing] == [spacing, spacing]
        assert [float(v) for v in ds.ImagerPixelSpacing] == [spacing, spacing]
        assert pixels.shape == (size, size) and pixels.dtype == np.uint16
        assert ds.BitsStored == bits and ds.HighBit == bits - 1 and pixels.max() < 2**bits
        assert float(ds.RescaleSlope) == slope and float(ds.RescaleIntercept) == intercept
        assert ds.SOPClassUID == sop == ds.file_meta.MediaStorageSOPClassUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert pydicom.uid.UID(uid).is_valid
        assert ds.PatientID == r["patient_id"] and str(ds.PatientName) == f"SYNTH^{r['patient_id']}"
        assert ds.StudyDate == r["study_date"].replace("-", "") and ds.InstitutionName == r["site"]
        assert ds.PatientAge == f"{int(r['age']):03d}Y" and ds.ViewPosition == "PA"
        assert f"{ds.Manufacturer} {ds.ManufacturerModelName}" == r["cxr_device"]
        seen[r["cxr_device"]] = ds
    assert set(seen) == set(expected)
    uids = [pydicom.dcmread(root / r["cxr_path"], stop_before_pixels=True).StudyInstanceUID
            for r in rows if r["cxr_path"]]
    assert len(set(uids)) == len(uids)


def test_every_device_shows_lungs_dark_and_heart_bright(cohort):
    root, rows = cohort
    for device in {r["cxr_device"] for r in rows if r["cxr_path"]}:
        r = next(r for r in rows if r["cxr_device"] == device
                 and r["cardiomegaly"] == r["pleural_effusion"] == "0")
        img = attenuation(pydicom.dcmread(root / r["cxr_path"]))
        lungs = lung_mask(img)
        n = img.shape[0]
        centre = img[int(0.55 * n):int(0.65 * n), int(0.45 * n):int(0.55 * n)].mean()
        assert img[lungs].mean() < centre, device
        assert 0.1 < lungs.mean() < 0.5, device


def test_ecg_reads_back_as_specified(cohort):
    root, rows = cohort
    fs_seen = set()
    for r in (r for r in rows if r["ecg_path"]):
        rec = wfdb.rdrecord(str(root / r["ecg_path"]))
        device = ECG_DEVICES[r["ecg_device"]]
        assert rec.fs == device.fs and rec.sig_len == 10 * device.fs
        assert rec.sig_name == list(STANDARD_LEADS) and rec.units == ["mV"] * 12
        assert rec.adc_gain == [device.adc_gain] * 12
        assert rec.comments == [f"age: {r['age']}", f"sex: {r['sex']}"]
        sig = rec.p_signal
        assert np.all(np.isfinite(sig)) and np.abs(sig).max() < 10
        assert 0.3 < np.ptp(sig[:, STANDARD_LEADS.index("II")]) < 8
        i, ii, iii = (sig[:, STANDARD_LEADS.index(k)] for k in ("I", "II", "III"))
        lsb = 1.5 / device.adc_gain
        assert np.abs(iii - (ii - i)).max() <= lsb
        assert np.abs(sig[:, STANDARD_LEADS.index("aVR")] + (i + ii) / 2).max() <= lsb
        fs_seen.add(rec.fs)
    assert fs_seen == {500, 250}


def test_format16_writer_matches_wfdb_wrsamp(tmp_path):
    device = ECG_DEVICES["PulseWave 250"]
    digital = np.random.default_rng(0).integers(-3000, 3000, size=(12, 2500)).astype(np.int16)
    start = dt.datetime(2020, 3, 4, 9, 5, 7)
    comments = ["age: 61", "sex: F"]
    header, data = wfdb_format16("S000123", digital, device, comments, start)
    wfdb.wrsamp("S000123", fs=device.fs, units=["mV"] * 12, sig_name=list(STANDARD_LEADS),
                d_signal=digital.T, fmt=["16"] * 12, adc_gain=[device.adc_gain] * 12,
                baseline=[0] * 12, comments=comments, base_date=start.date(),
                base_time=start.time(), write_dir=str(tmp_path))
    assert (tmp_path / "S000123.hea").read_text() == header
    assert (tmp_path / "S000123.dat").read_bytes() == data


def test_reports_agree_with_labels_and_hedge(cohort):
    root, rows = cohort
    texts = []
    negation = re.compile(r"\b(no|not|normal|without)\b", re.I)
    for r in (r for r in rows if r["cxr_report_path"]):
        text = (root / r["cxr_report_path"]).read_text(encoding="utf-8")
        assert text.startswith("EXAMINATION: Chest radiograph, PA view.")
        assert "FINDINGS:" in text and "IMPRESSION:" in text and len(text.split()) < 75
        sentences = re.split(r"(?<=\.)\s+", text)
        heart = [s for s in sentences if re.search(r"enlarg|cardiomegaly|cardi\w* silhouette|heart", s, re.I)]
        if r["cardiomegaly"] == "0":
            assert heart and all(negation.search(s) for s in heart), text
        else:
            assert any(re.search(r"enlarg|cardiomegaly", s, re.I) and not re.search(r"\b(no|not)\b", s, re.I)
                       for s in heart), text
        fluid = [s for s in sentences if re.search(r"effusion|costophrenic", s, re.I)]
        if r["pleural_effusion"] == "0":
            assert fluid and all(re.search(r"\bno\b|sharp", s, re.I) for s in fluid), text
        else:
            assert any(re.search(r"effusion", s, re.I) and not re.search(r"\bno\b", s, re.I) for s in fluid), text
        texts.append(text)
    for r in (r for r in rows if r["ecg_report_path"]):
        text = (root / r["ecg_report_path"]).read_text(encoding="utf-8")
        assert text.startswith("12-lead ECG.") and len(text.split()) < 75
        assert re.search(r"\b\d{2,3} bpm", text)
        assert ("atrial fibrillation" in text.lower()) == (r["atrial_fibrillation"] == "1"), text
        has_lvh = re.search(r"LVH|left ventricular hypertrophy", text, re.I) and not re.search(
            r"No evidence of LVH|No voltage criteria", text)
        assert bool(has_lvh) == (r["lvh"] == "1"), text
        texts.append(text)
    corpus = "\n".join(texts)
    assert re.search(r"\b(No|not)\b", corpus)
    assert re.search(r"[Pp]ossible|[Pp]robable|[Cc]annot exclude|[Bb]orderline", corpus)


# ---- findings in the signals -----------------------------------------------------


def _by_device(rows, modality):
    groups: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        if r[f"{modality}_path"]:
            groups.setdefault(r[f"{modality}_device"], []).append(r)
    return groups


def test_cardiomegaly_widens_the_heart_on_every_device(cohort):
    root, rows = cohort
    compared = 0
    for device, group in _by_device(rows, "cxr").items():
        ratio = {0: [], 1: []}
        for r in group:
            img = attenuation(pydicom.dcmread(root / r["cxr_path"]))
            ratio[int(r["cardiomegaly"])].append(cardiothoracic_ratio(img))
        if min(len(ratio[0]), len(ratio[1])) < 2:
            continue
        compared += 1
        # Medians: a large effusion can hide a heart border and inflate one measurement.
        assert 0.33 < np.median(ratio[0]) < 0.53, device
        assert np.median(ratio[1]) > np.median(ratio[0]) + 0.08, device
    assert compared >= 2


def test_effusion_opacifies_the_lateral_lung_base(cohort):
    root, rows = cohort
    compared = 0
    for device, group in _by_device(rows, "cxr").items():
        score = {0: [], 1: []}
        for r in group:
            img = attenuation(pydicom.dcmread(root / r["cxr_path"]))
            score[int(r["pleural_effusion"])].append(lateral_base_opacity(img))
        if min(len(score[0]), len(score[1])) < 2:
            continue
        compared += 1
        assert np.mean(score[1]) > np.mean(score[0]) + 0.25, device
    assert compared >= 2


def test_af_makes_rr_irregular_and_lvh_raises_voltage(cohort):
    root, rows = cohort
    cv, sl = {0: [], 1: []}, {0: [], 1: []}
    for r in (r for r in rows if r["ecg_path"]):
        rec = wfdb.rdrecord(str(root / r["ecg_path"]))
        cv[int(r["atrial_fibrillation"])].append(rr_cv(rec))
        sl[int(r["lvh"])].append(sokolow_lyon(rec))
    assert max(cv[0]) < 0.12 and np.median(cv[1]) > 0.15
    assert np.median(sl[0]) < 3.0 and np.median(sl[1]) > 3.5
    assert np.mean(sl[1]) > np.mean(sl[0]) + 1.0


# ---- determinism and re-runs -----------------------------------------------------


def test_same_seed_same_bytes_and_prefix_stable(cohort, tmp_path):
    root, rows = cohort
    small = synthesize_cohort(tmp_path / "a", n_patients=6, seed=0, progress=False)
    again = synthesize_cohort(tmp_path / "b", n_patients=6, seed=0, progress=False)
    assert small.read_bytes() == again.read_bytes()
    with open(small, newline="") as f:
        small_rows = list(csv.DictReader(f))
    # The first patients of a larger cohort are the smaller cohort, file for file.
    # (The fixture skipped the eye and CT files, so compare their labels but not their paths.)
    same = [*COLUMNS[:COLUMNS.index("lvh") + 1], *EYE_FINDINGS, *CT_FINDINGS]
    assert [{c: r[c] for c in same} for r in small_rows] == [{c: r[c] for c in same} for r in rows[:len(small_rows)]]
    for r in small_rows:
        for rel in [r["cxr_path"], r["cxr_report_path"], r["ecg_report_path"],
                    *([f"{r['ecg_path']}.dat", f"{r['ecg_path']}.hea"] if r["ecg_path"] else [])]:
            if rel:
                assert (tmp_path / "a" / rel).read_bytes() == (root / rel).read_bytes(), rel
    other = synthesize_cohort(tmp_path / "c", n_patients=6, seed=1, progress=False)
    assert other.read_bytes() != small.read_bytes()
    for rel, digest in DIGESTS_BEFORE_EYE_CT.items():
        assert hashlib.sha256((tmp_path / "a" / rel).read_bytes()).hexdigest() == digest, rel


def _listed_files(row: dict[str, str]) -> set[str]:
    """Every file a manifest row stands for, relative to the cohort root."""
    files = {row[c] for c in ("cxr_path", "oct_path", "fundus_path", "cxr_report_path", "ecg_report_path",
                              "oct_report_path", "fundus_report_path", "ct_report_path") if row[c]}
    if row["ecg_path"]:
        files |= {f"{row['ecg_path']}.hea", f"{row['ecg_path']}.dat"}
    if row["ct_path"]:
        files |= {f"{row['ct_path']}/CT{k:03d}.dcm" for k in range(1, CT_DEVICES[row["ct_device"]].n_slices + 1)}
    return files


def test_rerun_overwrites_cleanly(tmp_path):
    out = tmp_path / "cohort"
    synthesize_cohort(out, n_patients=5, seed=3, progress=False)
    foreign = out / "cxr" / "notes.txt"
    foreign.write_text("kept")
    manifest = synthesize_cohort(out, n_patients=2, seed=3, progress=False)
    with open(manifest, newline="") as f:
        listed = set().union(*(_listed_files(r) for r in csv.DictReader(f)))
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == listed | {"manifest.csv", "cxr/notes.txt"}
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))


def test_the_bedside_ap_unit_magnifies_the_heart_and_layers_fluid_without_a_meniscus():
    from dataclasses import replace

    from medfm.cohort.synth import cxr

    pa = cxr.CXR_DEVICES["ACME DX-500"]
    ap = replace(pa, projection="AP supine")
    anatomy = cxr.sample_anatomy(np.random.default_rng(3))

    def draw(device, ctr=0.45, fluid=0.0):
        return cxr.render_attenuation(anatomy, device, ctr, fluid, "right", np.random.default_rng(9))

    bigger = draw(ap) - draw(pa)  # the same film but for the heart: it gains area
    heart_area = (draw(pa, ctr=0.0001) - draw(pa) < -0.01).sum()  # what a heart adds over (almost) none
    assert (bigger > 0.01).sum() > 0.2 * heart_area and (bigger < -0.01).sum() < 0.05 * heart_area
    upper = (slice(int(0.3 * 320), int(0.45 * 320)), slice(0, 160))  # upper zone of the right lung (image left)
    base = (slice(int(0.62 * 320), int(0.7 * 320)), slice(0, 160))  # above the dome, inside the lung
    for device, upper_rises in ((pa, False), (ap, True)):
        clear, wet = draw(device), draw(device, fluid=0.3)
        assert (wet[base] - clear[base]).mean() > 0.01
        assert ((wet[upper] - clear[upper]).mean() > 0.01) == upper_rises
    assert cxr.CXR_DEVICES["Corvid DX-9"].projection == "AP supine"
