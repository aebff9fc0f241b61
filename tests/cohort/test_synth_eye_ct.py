"""The eye (OCT, fundus) and chest CT part of the demo cohort: files, findings in the signals, reports."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from medfm.cohort.synth import ALL_FINDINGS, CT_FINDINGS, EYE_FINDINGS, synthesize_cohort
from medfm.cohort.synth.ct import CT_DEVICES, ChestCtAnatomy, render_hu, sample_ct_anatomy
from medfm.cohort.synth.fundus import DISC_OFFSET_MM, FUNDUS_CAMERAS, render_fundus, to_stored_rgb
from medfm.cohort.synth.oct import OCT_DEVICES, render_reflectivity, sample_eye, to_stored_volume

N_PATIENTS = 30
SEED = 8  # a seed whose first 30 patients hold positives of every eye and CT finding on CT and eye studies
NEW_COLUMNS = [
    "oct_path", "oct_device", "fundus_path", "fundus_device", "ct_path", "ct_device",
    "oct_report_path", "fundus_report_path", "ct_report_path", *EYE_FINDINGS, *CT_FINDINGS,
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("eye_ct")
    manifest = synthesize_cohort(root, n_patients=N_PATIENTS, seed=SEED, progress=False,
                                 modalities=("oct", "fundus", "ct"))
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return root, rows


def read_quietly(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = pydicom.dcmread(path)
        ds.pixel_array  # noqa: B018  (decodes without warnings)
    return ds


# ---- measurements -------------------------------------------------------------------


def rpe_elevation_px(volume: np.ndarray) -> float:
    """Largest local rise of the RPE above its smooth course, in rows (robust 99.5th percentile).

    The RPE is the deepest band nearly as bright as the brightest (the nasal nerve fibre
    layer can be as bright, but lies above it).
    """
    smooth = ndimage.gaussian_filter(volume.astype(np.float32), (0, 1.5, 2.0))
    bright = smooth > 0.85 * smooth.max(axis=1, keepdims=True)
    rpe = (volume.shape[1] - 1 - np.argmax(bright[:, ::-1], axis=1)).astype(np.float32)  # (B-scans, A-scans)
    baseline = ndimage.median_filter(rpe, size=(1, volume.shape[2] // 3))
    rise = ndimage.median_filter(baseline - rpe, size=(1, 3))[:, 6:-6]  # the scan edges are noisy
    return float(np.percentile(rise, 99.5))


def dark_fraction_in_retina(volume: np.ndarray) -> float:
    """Share of voxels between the ILM and the RPE that are nearly as dark as the vitreous."""
    smooth = ndimage.gaussian_filter(volume.astype(np.float32), (0, 1.5, 1.5))
    vitreous = np.median(smooth[:, :8])
    rpe_row = np.argmax(smooth, axis=1)
    bright = np.take_along_axis(smooth, rpe_row[:, None], axis=1)[:, 0]
    above = smooth > (vitreous + 0.5 * (bright[:, None] - vitreous))
    ilm_row = np.argmax(above, axis=1)  # first bright row: the RNFL
    rows = np.arange(volume.shape[1])[None, :, None]
    retina = (rows > ilm_row[:, None] + 2) & (rows < rpe_row[:, None] - 6)
    dark = smooth < vitreous + 0.1 * (bright[:, None] - vitreous)
    return float((dark & retina).sum() / max(1, retina.sum()))


def fovea_region(n: int, spacing: float, r_mm: float, disc_side: float | None = None) -> np.ndarray:
    axis = (np.arange(n) - (n - 1) / 2) * spacing
    r2 = axis[:, None] ** 2 + axis[None, :] ** 2
    region = r2 < r_mm**2
    if disc_side is not None:  # keep clear of the optic disc
        region &= (axis[None, :] - disc_side * DISC_OFFSET_MM) ** 2 + axis[:, None] ** 2 > 1.4**2
    return region


def yellow_fraction(rgb: np.ndarray, spacing: float) -> float:
    r, g = rgb[..., 0].astype(np.float32) + 1, rgb[..., 1].astype(np.float32)
    return float((g / r > 0.85)[fovea_region(rgb.shape[0], spacing, 2.2)].mean())


def darkest_red(rgb: np.ndarray, spacing: float, laterality: str) -> float:
    """Minimum of the smoothed red channel near the posterior pole, relative to its median."""
    red = ndimage.gaussian_filter(rgb[..., 0].astype(np.float32), 1.0)
    region = fovea_region(rgb.shape[0], spacing, 4.8, 1.0 if laterality == "R" else -1.0)
    return float(red[region].min() / np.median(red[region]))


def sort_series(folder: Path) -> tuple[list[pydicom.Dataset], np.ndarray]:
    slices = [read_quietly(p) for p in folder.glob("*.dcm")]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]), reverse=True)
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    return slices, hu


def nodule_score(hu: np.ndarray) -> float:
    """Densest spot inside the aerated lungs (holes such as a nodule filled in), in HU."""
    smooth = ndimage.gaussian_filter(hu, (0.5, 1.0, 1.0))
    air = smooth < -500
    outside = ndimage.label(air)[0]
    border = np.unique(np.concatenate([outside[:, 0].ravel(), outside[:, -1].ravel(),
                                       outside[:, :, 0].ravel(), outside[:, :, -1].ravel()]))
    lungs = air & ~np.isin(outside, border[border > 0])
    filled = np.stack([ndimage.binary_fill_holes(s) for s in lungs])
    filled = np.stack([ndimage.binary_erosion(s, iterations=2) for s in filled])
    return float(smooth[filled].max()) if filled.any() else -1000.0


# ---- files and formats --------------------------------------------------------------


def test_manifest_has_new_columns_after_the_old_ones(cohort):
    root, rows = cohort
    with open(root / "manifest.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[-len(NEW_COLUMNS):] == NEW_COLUMNS and header[15] == "lvh"
    assert list(ALL_FINDINGS[-4:]) == ["drusen", "intraretinal_fluid", "haemorrhage", "lung_nodule"]
    eye = np.mean([bool(r["oct_path"] or r["fundus_path"]) for r in rows])
    both = np.mean([bool(r["oct_path"] and r["fundus_path"]) for r in rows])
    ct = np.mean([bool(r["ct_path"]) for r in rows])
    assert 0.2 < eye < 0.6 and both > 0.6 * eye and 0.1 < ct < 0.45
    for r in rows:
        assert not r["cxr_path"] and not r["ecg_path"]  # not asked for
        assert all(r[f] in {"0", "1"} for f in ALL_FINDINGS)
        for mod in ("oct", "fundus", "ct"):
            present = bool(r[f"{mod}_path"])
            assert bool(r[f"{mod}_device"]) == present == bool(r[f"{mod}_report_path"])
            if present:
                assert (root / r[f"{mod}_report_path"]).is_file()
        if r["oct_path"]:
            assert r["oct_path"] == f"oct/{r['site']}/{r['patient_id']}/{r['study_id']}.dcm"
        if r["ct_path"]:
            assert r["ct_path"] == f"ct/{r['site']}/{r['patient_id']}/{r['study_id']}"
    for f in (*EYE_FINDINGS, *CT_FINDINGS):
        assert 0 < np.mean([int(r[f]) for r in rows]) < 0.6


def test_oct_reads_back_as_multiframe_ophthalmic_tomography(cohort):
    root, rows = cohort
    seen = set()
    for r in (r for r in rows if r["oct_path"]):
        ds = read_quietly(root / r["oct_path"])
        device = OCT_DEVICES[r["oct_device"]]
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.5.4" == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "OPT" and ds.ImageLaterality in {"R", "L"}
        assert int(ds.NumberOfFrames) == device.n_bscans == len(ds.PerFrameFunctionalGroupsSequence)
        assert ds.pixel_array.shape == (device.n_bscans, device.depth_px, device.n_ascans)
        assert ds.pixel_array.dtype == np.uint8
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        spacing = [float(v) for v in measures.PixelSpacing]
        assert spacing == pytest.approx([device.axial_um / 1000, device.lateral_mm], abs=1e-4)
        assert float(measures.SpacingBetweenSlices) == pytest.approx(device.bscan_spacing_mm, abs=1e-4)
        ys = [float(f.PlanePositionSequence[0].ImagePositionPatient[1]) for f in ds.PerFrameFunctionalGroupsSequence]
        assert np.allclose(np.diff(ys), device.bscan_spacing_mm, atol=1e-4)
        assert ds.PatientID == r["patient_id"] and f"{ds.Manufacturer} {ds.ManufacturerModelName}" == r["oct_device"]
        seen.add(device.n_bscans)
    assert seen == {25, 49}


def test_fundus_reads_back_as_rgb(cohort):
    root, rows = cohort
    seen = set()
    for r in (r for r in rows if r["fundus_path"]):
        camera = FUNDUS_CAMERAS[r["fundus_device"]]
        if camera.file_format == "png":
            assert r["fundus_path"].endswith(".png")
            with Image.open(root / r["fundus_path"]) as im:
                assert im.mode == "RGB"
                rgb = np.asarray(im)
        else:
            ds = read_quietly(root / r["fundus_path"])
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.5.1" and ds.Modality == "OP"
            assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
            assert float(ds.PixelSpacing[0]) == pytest.approx(camera.spacing_mm, abs=1e-4)
            rgb = ds.pixel_array
        assert rgb.shape == (camera.size, camera.size, 3)
        centre = rgb[camera.size // 2 - 40:camera.size // 2 + 40, camera.size // 2 - 40:camera.size // 2 + 40]
        red, green, blue = (centre[..., c].mean() for c in range(3))
        assert red > green > blue and red > 100  # orange-red fundus
        assert rgb[:4, :4].mean() < 30  # outside the field stop
        seen.add(camera.file_format)
    assert seen == {"png", "dicom"}


def test_ct_series_sorts_by_position_into_plausible_hu(cohort):
    root, rows = cohort
    seen = set()
    for r in (r for r in rows if r["ct_path"]):
        device = CT_DEVICES[r["ct_device"]]
        folder = root / r["ct_path"]
        files = sorted(folder.iterdir())
        assert len(files) == device.n_slices
        slices, hu = sort_series(folder)
        assert len({ds.SeriesInstanceUID for ds in slices}) == 1
        assert len({ds.SOPInstanceUID for ds in slices}) == device.n_slices
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in slices])
        assert np.allclose(np.diff(z), -device.slice_mm, atol=0.02)
        # File names do not follow the slice order.
        by_name = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files]
        assert by_name != sorted(by_name) and by_name != sorted(by_name, reverse=True)
        for ds in slices:
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert float(ds.PixelSpacing[0]) == device.spacing_mm and float(ds.SliceThickness) == device.slice_mm
            assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
        assert hu.shape == (device.n_slices, device.size, device.size)
        assert np.median(hu[:, :3, :3]) == pytest.approx(-1000, abs=60)  # air in the corners
        mid = hu[device.n_slices // 2]
        lung = mid[(mid > -950) & (mid < -700)]
        assert lung.size > 0.1 * mid.size and np.median(lung) == pytest.approx(-850, abs=40)
        soft = mid[(mid > -50) & (mid < 120)]
        assert np.median(soft) == pytest.approx(40, abs=20)
        assert hu.max() > 500  # bone
        seen.add(device.name)
    assert seen == set(CT_DEVICES)


# ---- findings in the signals ------------------------------------------------------


@pytest.mark.parametrize("device", list(OCT_DEVICES))
def test_drusen_raise_the_rpe_and_fluid_darkens_the_retina(device):
    dev, eye = OCT_DEVICES[device], sample_eye(np.random.default_rng(5))
    none = np.zeros((0, 5), np.float32)
    cysts = np.array([[0.6, 0.3, 0.3, 0.25, 0.05], [-0.7, -0.2, 0.25, 0.3, 0.045]], np.float32)

    def scan(load: float, c: np.ndarray) -> np.ndarray:
        refl = render_reflectivity(eye, dev, load, c, np.random.default_rng(1))
        return to_stored_volume(refl, dev, np.random.default_rng(2))

    normal, drusen, fluid = scan(0.0, none), scan(0.06, none), scan(0.0, cysts)
    assert rpe_elevation_px(normal) <= 1.5
    assert rpe_elevation_px(drusen) >= 3.0
    # Cysts are a small part of the retina, but nothing else in it is as dark.
    assert dark_fraction_in_retina(fluid) > 3 * dark_fraction_in_retina(normal) + 0.001


def test_oct_findings_separate_across_the_cohort(cohort):
    root, rows = cohort
    elevation, dark = {0: [], 1: []}, {0: [], 1: []}
    for r in (r for r in rows if r["oct_path"]):
        volume = read_quietly(root / r["oct_path"]).pixel_array
        elevation[int(r["drusen"])].append(rpe_elevation_px(volume))
        dark[int(r["intraretinal_fluid"])].append(dark_fraction_in_retina(volume))
    assert min(map(len, elevation.values())) >= 2 and min(map(len, dark.values())) >= 2
    assert np.median(elevation[1]) > np.median(elevation[0]) + 1.5
    assert np.median(dark[1]) > 3 * np.median(dark[0]) + 0.0005


@pytest.mark.parametrize("camera", list(FUNDUS_CAMERAS))
def test_fundus_drusen_are_yellow_and_haemorrhages_dark_red(camera):
    cam, eye = FUNDUS_CAMERAS[camera], sample_eye(np.random.default_rng(5))
    blots = np.array([[1.8, 1.2, 0.35, 0.2, 0.4], [-2.5, -1.0, 0.3, 0.3, 0.0]], np.float32)
    none = np.zeros((0, 5), np.float32)

    def photo(load: float, haem: np.ndarray) -> np.ndarray:
        return to_stored_rgb(render_fundus(eye, cam, load, haem, np.random.default_rng(1)), cam,
                             np.random.default_rng(2))

    normal, drusen, haem = photo(0.0, none), photo(0.06, none), photo(0.0, blots)
    assert yellow_fraction(drusen, cam.spacing_mm) > yellow_fraction(normal, cam.spacing_mm) + 0.02
    assert yellow_fraction(normal, cam.spacing_mm) < 0.01
    assert darkest_red(haem, cam.spacing_mm, eye.laterality) < darkest_red(normal, cam.spacing_mm, eye.laterality) - 0.2


def test_fundus_findings_separate_across_the_cohort(cohort):
    root, rows = cohort
    yellow, red = {0: [], 1: []}, {0: [], 1: []}
    for r in (r for r in rows if r["fundus_path"]):
        camera = FUNDUS_CAMERAS[r["fundus_device"]]
        path = root / r["fundus_path"]
        rgb = np.asarray(Image.open(path)) if camera.file_format == "png" else read_quietly(path).pixel_array
        laterality = "R" if "right eye" in (root / r["fundus_report_path"]).read_text() else "L"
        yellow[int(r["drusen"])].append(yellow_fraction(rgb, camera.spacing_mm))
        red[int(r["haemorrhage"])].append(darkest_red(rgb, camera.spacing_mm, laterality))
    assert max(yellow[0]) < 0.01 and min(yellow[1]) > 0.01
    if red[1]:
        assert np.median(red[1]) < np.median(red[0]) - 0.1


@pytest.mark.parametrize("device", list(CT_DEVICES))
def test_nodule_adds_soft_tissue_inside_the_lung(device):
    dev = CT_DEVICES[device]
    anatomy: ChestCtAnatomy = sample_ct_anatomy(np.random.default_rng(3))
    normal = render_hu(anatomy, dev, 0.0, 0.0, np.random.default_rng(1))
    small = render_hu(anatomy, dev, 10.0, 0.0, np.random.default_rng(1))
    large = render_hu(anatomy, dev, 14.0, 0.0, np.random.default_rng(1))
    assert nodule_score(normal) < -650
    assert nodule_score(small) > nodule_score(normal) + 100
    assert nodule_score(large) > -400


def test_ct_findings_separate_across_the_cohort(cohort):
    root, rows = cohort
    score = {0: [], 1: []}
    for r in (r for r in rows if r["ct_path"]):
        score[int(r["lung_nodule"])].append(nodule_score(sort_series(root / r["ct_path"])[1]))
    assert max(score[0]) < -600 and len(score[1]) >= 1
    assert np.median(score[1]) > max(score[0]) + 100


# ---- reports ------------------------------------------------------------------------


def test_reports_agree_with_labels(cohort):
    root, rows = cohort
    hedge = re.compile(r"[Pp]ossibl|[Cc]annot exclude")
    corpus = []

    def sentences(text: str, pattern: str) -> list[str]:
        body = text.split("FINDINGS:")[1].split("IMPRESSION:")[0]
        return [s for s in re.split(r"(?<=\.)\s+", body) if re.search(pattern, s, re.I)]

    def check(text: str, label: str, pattern: str) -> None:
        found = sentences(text, pattern)
        assert found, text
        if label == "0":
            assert all(re.search(r"\b(no|without|free of|smooth)\b", s, re.I) for s in found), text
        else:
            assert any(not re.search(r"\b(no|without)\b", s, re.I) for s in found), text

    for r in rows:
        if r["oct_report_path"]:
            text = (root / r["oct_report_path"]).read_text(encoding="utf-8")
            assert text.startswith("EXAMINATION: OCT macula,") and len(text.split()) < 75
            check(text, r["drusen"], r"drusen")
            check(text, r["intraretinal_fluid"], r"intraretinal")
            corpus.append(text)
        if r["fundus_report_path"]:
            text = (root / r["fundus_report_path"]).read_text(encoding="utf-8")
            assert text.startswith("EXAMINATION: Colour fundus photograph,")
            check(text, r["drusen"], r"drusen")
            check(text, r["haemorrhage"], r"haemorrhage")
            corpus.append(text)
        if r["ct_report_path"]:
            text = (root / r["ct_report_path"]).read_text(encoding="utf-8")
            assert text.startswith("EXAMINATION: CT chest without contrast.")
            check(text, r["lung_nodule"], r"nodule")
            if r["lung_nodule"] == "1":
                assert re.search(r"\b\d{1,2} mm\b.*\b(upper|middle|lower) lobe|lingula", text), text
            else:
                assert "No pulmonary nodules" in text or "No suspicious pulmonary nodule" in text \
                    or "without nodules" in text, text
            corpus.append(text)
    # Hedged statements only ever stand for positives.
    for r in rows:
        for mod, labels in (("oct", ("drusen", "intraretinal_fluid")), ("fundus", ("drusen", "haemorrhage")),
                            ("ct", ("lung_nodule",))):
            if r[f"{mod}_report_path"] and hedge.search((root / r[f"{mod}_report_path"]).read_text()):
                assert any(r[f] == "1" for f in labels)
    assert re.search(r"\bNo\b", "\n".join(corpus))


def test_eye_ct_files_are_deterministic_and_prefix_stable(cohort, tmp_path):
    root, rows = cohort
    manifest = synthesize_cohort(tmp_path, n_patients=4, seed=SEED, progress=False, modalities=("oct", "fundus", "ct"))
    with open(manifest, newline="") as f:
        small = list(csv.DictReader(f))
    assert small == rows[:len(small)]
    compared = 0
    for r in small:
        for col in ("oct_path", "fundus_path", "oct_report_path", "fundus_report_path", "ct_report_path"):
            if r[col]:
                assert (tmp_path / r[col]).read_bytes() == (root / r[col]).read_bytes(), r[col]
                compared += 1
        if r["ct_path"]:
            for p in (tmp_path / r["ct_path"]).iterdir():
                assert p.read_bytes() == (root / r["ct_path"] / p.name).read_bytes()
                compared += 1
    assert compared > 0
