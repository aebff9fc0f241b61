"""Patients, visits, devices and the manifest of the synthetic demo cohort.

Every patient is drawn from its own generator ``default_rng([seed, index])``
and every rendered file from ``default_rng([seed, index, visit, stream])``, so
a patient's files do not depend on iteration order or on how many patients
are drawn: the first k patients of an n-patient cohort are the k-patient cohort.
The eye (OCT, fundus) and chest CT part of a patient comes from a stream of its
own, ``default_rng([seed, index, 0, 7])``, so adding it left every chest X-ray,
ECG and their reports byte-identical to what the cohort held before.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medfm.atomic import write_text_atomic
from medfm.cohort.synth import ct, cxr, ecg, fundus, oct, reports
from medfm.cohort.synth.dicom_header import StudyHeader
from medfm.keys import Modality

FINDINGS: tuple[str, ...] = ("cardiomegaly", "pleural_effusion", "atrial_fibrillation", "lvh")
EYE_FINDINGS: tuple[str, ...] = ("drusen", "intraretinal_fluid", "haemorrhage")
CT_FINDINGS: tuple[str, ...] = ("lung_nodule",)
ALL_FINDINGS: tuple[str, ...] = (*FINDINGS, *EYE_FINDINGS, *CT_FINDINGS)
SITES: tuple[str, ...] = ("site_a", "site_b", "site_c")
REPORTS_DIR = "reports"

_CXR, _ECG = str(Modality.CXR), str(Modality.ECG)
_OCT, _FUNDUS, _CT = str(Modality.OCT), str(Modality.FUNDUS), str(Modality.CT)
MODALITIES: tuple[str, ...] = (_CXR, _ECG, _OCT, _FUNDUS, _CT)
# Columns added with the eye and CT modalities come after the original ones, which keep their order.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "patient_id", "study_id", "site", "study_date", "age", "sex",
    f"{_CXR}_path", f"{_CXR}_device", f"{_ECG}_path", f"{_ECG}_device",
    f"{_CXR}_report_path", f"{_ECG}_report_path", *FINDINGS,
    f"{_OCT}_path", f"{_OCT}_device", f"{_FUNDUS}_path", f"{_FUNDUS}_device", f"{_CT}_path", f"{_CT}_device",
    f"{_OCT}_report_path", f"{_FUNDUS}_report_path", f"{_CT}_report_path", *EYE_FINDINGS, *CT_FINDINGS,
)


@dataclass(frozen=True)
class SiteDevices:
    """Devices a site owns; a study picks one uniformly."""

    cxr: tuple[str, ...]
    ecg: tuple[str, ...]
    oct: tuple[str, ...]
    fundus: tuple[str, ...]
    ct: tuple[str, ...]


SITE_DEVICES: dict[str, SiteDevices] = {
    "site_a": SiteDevices(("ACME DX-500",), ("Cardiolink 500",), ("Heliox Spectral-25",), ("Iris FC-50",),
                          ("Axion CT-64",)),
    "site_b": SiteDevices(("Borealis CR-200",), ("PulseWave 250",), ("Quanta SS-49",), ("Oculus OP-2",),
                          ("Brevis CT-16",)),
    "site_c": SiteDevices(("ACME DX-500", "Corvid DX-9"), ("Cardiolink 500", "PulseWave 250"),
                          ("Heliox Spectral-25", "Quanta SS-49"), ("Iris FC-50", "Oculus OP-2"),
                          ("Axion CT-64", "Brevis CT-16")),
}

_VISIT_COUNT_P = (0.68, 0.24, 0.08)  # 1, 2, 3 visits: mean 1.4
_P_CXR, _P_ECG = 0.9, 0.8
# Logistic models of each finding (intercept, age slope per 17 y, effect of cardiomegaly),
# calibrated to visit-level prevalences of about 30/25/25/25 %.
_LOGIT = {
    "cardiomegaly": (-0.94, 0.9, 0.0),
    "pleural_effusion": (-1.55, 0.0, 1.3),
    "atrial_fibrillation": (-1.45, 0.9, 0.5),
    "lvh": (-1.13, 0.4, 0.0),
}
# Chance per follow-up visit that a finding is redrawn (it may come out the same).
_REDRAW = {"cardiomegaly": 0.12, "pleural_effusion": 0.35, "atrial_fibrillation": 0.15, "lvh": 0.1}
_STREAM_CXR, _STREAM_ECG, _STREAM_REPORT = 1, 2, 3
# Streams added with the eye and CT modalities; the plan stream is used with visit 0 and
# draws the patient's eye and chest and every visit's eye/CT findings.
_STREAM_OCT, _STREAM_FUNDUS, _STREAM_CT, _STREAM_EYE_CT_PLAN, _STREAM_EYE_CT_REPORT = 4, 5, 6, 7, 8

_P_EYE, _P_OCT_GIVEN_EYE, _P_FUNDUS_GIVEN_EYE, _P_CT = 0.4, 0.9, 0.9, 0.25
# Eye and CT findings: (intercept, age slope per 17 y, effect of drusen), about 22/13/12/22 % of visits.
_LOGIT_EYE_CT = {
    "drusen": (-1.45, 1.0, 0.0),
    "intraretinal_fluid": (-2.1, 0.3, 0.8),
    "haemorrhage": (-2.05, 0.4, 0.0),
    "lung_nodule": (-1.35, 0.5, 0.0),
}
_REDRAW_EYE_CT = {"drusen": 0.08, "intraretinal_fluid": 0.4, "haemorrhage": 0.5, "lung_nodule": 0.1}


@dataclass(frozen=True)
class Visit:
    """One study: date, modalities acquired, ground truth and its severities."""

    index: int
    study_id: str
    study_date: dt.date
    age: int
    cxr_device: str | None
    ecg_device: str | None
    labels: dict[str, int]
    ctr: float
    effusion_height: float
    rate_bpm: float
    lvh_factor: float
    strain: bool
    oct_device: str | None = None
    fundus_device: str | None = None
    ct_device: str | None = None
    drusen_load: float = 0.0  # mm of RPE elevation scale; 0 without drusen
    cysts: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.float32))  # oct.render_reflectivity
    haemorrhages: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.float32))  # fundus.render_fundus
    nodule_mm: float = 0.0  # diameter; 0 without a nodule
    table_mm: float = 0.0  # CT scan range shift along z


@dataclass(frozen=True)
class Patient:
    """A patient, the traits that persist across visits, and the visits."""

    index: int
    patient_id: str
    site: str
    sex: str
    birth_date: dt.date
    effusion_side: str
    anatomy: cxr.ChestAnatomy
    physiology: ecg.HeartPhysiology
    visits: tuple[Visit, ...]
    eye: oct.EyeAnatomy | None = None
    chest_ct: ct.ChestCtAnatomy | None = None


def _age_on(birth: dt.date, day: dt.date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _finding_probability(name: str, age_z: float, cardiomegaly: int) -> float:
    b0, b_age, b_card = _LOGIT[name]
    return float(1.0 / (1.0 + np.exp(-(b0 + b_age * age_z + b_card * cardiomegaly))))


def _draw_findings(rng: np.random.Generator, age_z: float, prev: dict[str, int] | None) -> dict[str, int]:
    """Draws labels in FINDINGS order; a follow-up keeps each label unless it is redrawn."""
    labels: dict[str, int] = {}
    for name in FINDINGS:
        redraw = prev is None or rng.random() < _REDRAW[name]
        if redraw:
            p = _finding_probability(name, age_z, labels.get("cardiomegaly", 0))
            labels[name] = int(rng.random() < p)
        else:
            labels[name] = prev[name]
    return labels


def sample_patient(seed: int, index: int, first_study_number: int) -> Patient:
    """Draws one patient and their visits from ``default_rng([seed, index])``.

    Args:
        seed: cohort seed.
        index: 0-based patient index.
        first_study_number: number of this patient's first study (IDs run on across patients).
    """
    rng = np.random.default_rng([seed, index])
    site = SITES[index % len(SITES)]
    sex = ("F", "M")[int(rng.integers(2))]
    age0 = int(rng.integers(30, 88))
    first = dt.date(2016, 1, 1) + dt.timedelta(days=int(rng.integers(0, 6 * 365)))
    birth = first - dt.timedelta(days=int(age0 * 365.25) + int(rng.integers(1, 364)))
    anatomy = cxr.sample_anatomy(rng)
    physiology = ecg.sample_physiology(rng)
    effusion_side = ("left", "right", "bilateral")[int(rng.choice(3, p=(0.3, 0.3, 0.4)))]
    strain_prone = rng.random() < 0.5
    u_ctr, u_eff, u_lvh = rng.random(3)  # where in its range each severity sits
    n_visits = 1 + int(rng.choice(3, p=_VISIT_COUNT_P))
    age_z = (age0 - 59.0) / 17.0

    visits: list[Visit] = []
    day, labels = first, None
    for v in range(n_visits):
        if v:
            day += dt.timedelta(days=int(rng.integers(60, 500)))
        labels = _draw_findings(rng, age_z, labels)
        has_cxr, has_ecg = rng.random() < _P_CXR, rng.random() < _P_ECG
        if not (has_cxr or has_ecg):
            has_cxr = rng.random() < _P_CXR / (_P_CXR + _P_ECG)
            has_ecg = not has_cxr
        devices = SITE_DEVICES[site]
        cxr_device = devices.cxr[int(rng.integers(len(devices.cxr)))]
        ecg_device = devices.ecg[int(rng.integers(len(devices.ecg)))]
        jitter = np.clip(np.array([u_ctr, u_eff, u_lvh]) + rng.normal(0, 0.05, 3), 0, 1)
        ctr = 0.55 + 0.15 * jitter[0] if labels["cardiomegaly"] else 0.38 + 0.10 * jitter[0]
        effusion_height = 0.10 + 0.30 * jitter[1] if labels["pleural_effusion"] else 0.0
        lvh_factor = 1.8 + 0.8 * jitter[2] if labels["lvh"] else 1.0
        if labels["atrial_fibrillation"]:
            rate = np.clip(physiology.af_rate + rng.normal(0, 5), 80, 130)
        else:
            rate = np.clip(physiology.sinus_rate + rng.normal(0, 3), 55, 95)
        visits.append(Visit(
            index=v,
            study_id=f"S{first_study_number + v:06d}",
            study_date=day,
            age=_age_on(birth, day),
            cxr_device=cxr_device if has_cxr else None,
            ecg_device=ecg_device if has_ecg else None,
            labels=labels,
            ctr=float(ctr),
            effusion_height=float(effusion_height),
            rate_bpm=float(rate),
            lvh_factor=float(lvh_factor),
            strain=bool(strain_prone and labels["lvh"] and lvh_factor >= 2.1),
        ))
    eye, chest_ct, visits = _sample_eye_ct(seed, index, site, age_z, visits)
    return Patient(index, f"P{index + 1:05d}", site, sex, birth, effusion_side,
                   anatomy, physiology, tuple(visits), eye, chest_ct)


def _sample_eye_ct(seed: int, index: int, site: str, age_z: float,
                   visits: list[Visit]) -> tuple[oct.EyeAnatomy, ct.ChestCtAnatomy, list[Visit]]:
    """Adds the eye and CT part of a patient from its own stream (see the module docstring)."""
    rng = np.random.default_rng([seed, index, 0, _STREAM_EYE_CT_PLAN])
    eye = oct.sample_eye(rng)
    chest_ct = ct.sample_ct_anatomy(rng)
    u_drusen, u_fluid, u_haem = rng.random(3)
    devices = SITE_DEVICES[site]
    out, labels = [], None
    for visit in visits:
        new: dict[str, int] = {}
        for name in (*EYE_FINDINGS, *CT_FINDINGS):
            if labels is None or rng.random() < _REDRAW_EYE_CT[name]:
                b0, b_age, b_drusen = _LOGIT_EYE_CT[name]
                z = b0 + b_age * age_z + b_drusen * new.get("drusen", 0)
                new[name] = int(rng.random() < 1.0 / (1.0 + np.exp(-z)))
            else:
                new[name] = labels[name]
        labels = new
        has_eye, has_ct = rng.random() < _P_EYE, rng.random() < _P_CT
        has_oct, has_fundus = rng.random() < _P_OCT_GIVEN_EYE, rng.random() < _P_FUNDUS_GIVEN_EYE
        if not (has_oct or has_fundus):
            has_oct = not has_fundus
        oct_device = devices.oct[int(rng.integers(len(devices.oct)))]
        fundus_device = devices.fundus[int(rng.integers(len(devices.fundus)))]
        ct_device = devices.ct[int(rng.integers(len(devices.ct)))]
        jitter = np.clip(np.array([u_drusen, u_fluid, u_haem]) + rng.normal(0, 0.05, 3), 0, 1)
        drusen_load = 0.045 + 0.06 * jitter[0] if labels["drusen"] else 0.0
        n_cysts = 1 + int(4.99 * jitter[1]) if labels["intraretinal_fluid"] else 0
        ang, rad = rng.uniform(0, 2 * np.pi, n_cysts), rng.uniform(0.3, 1.3, n_cysts)
        cysts = np.stack([rad * np.cos(ang), rad * np.sin(ang), rng.uniform(0.15, 0.35, n_cysts),
                          rng.uniform(0.15, 0.35, n_cysts), rng.uniform(0.03, 0.06, n_cysts)], axis=1)
        n_haem = 1 + int(5.99 * jitter[2]) if labels["haemorrhage"] else 0
        ang, rad = rng.uniform(0, 2 * np.pi, n_haem), rng.uniform(1.0, 4.5, n_haem)
        long = rng.uniform(0.15, 0.4, n_haem)
        haemorrhages = np.stack([rad * np.cos(ang), rad * np.sin(ang), long,
                                 long * rng.uniform(0.35, 1.0, n_haem), rng.uniform(0, np.pi, n_haem)], axis=1)
        nodule_mm = chest_ct.nodule_mm * rng.uniform(0.95, 1.05) if labels["lung_nodule"] else 0.0
        out.append(replace(
            visit, labels={**visit.labels, **labels},
            oct_device=oct_device if has_eye and has_oct else None,
            fundus_device=fundus_device if has_eye and has_fundus else None,
            ct_device=ct_device if has_ct else None,
            drusen_load=float(drusen_load), cysts=cysts.astype(np.float32),
            haemorrhages=haemorrhages.astype(np.float32), nodule_mm=float(nodule_mm),
            table_mm=float(rng.uniform(-4, 4)),
        ))
    return eye, chest_ct, out


def plan_cohort(n_patients: int, seed: int) -> list[Patient]:
    """Draws all patients, numbering studies consecutively in patient order."""
    patients, next_study = [], 1
    for i in range(n_patients):
        p = sample_patient(seed, i, next_study)
        patients.append(p)
        next_study += len(p.visits)
    return patients


def _write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text, durable=False)  # regenerable from the seed


def _visit_rng(seed: int, patient: Patient, visit: Visit, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, patient.index, visit.index, stream])


def _write_cxr(root: Path, rel: Path, seed: int, patient: Patient, visit: Visit,
               report_rng: np.random.Generator) -> dict[str, str]:
    device = cxr.CXR_DEVICES[visit.cxr_device]
    rng = _visit_rng(seed, patient, visit, _STREAM_CXR)
    side = patient.effusion_side
    att = cxr.render_attenuation(patient.anatomy, device, visit.ctr, visit.effusion_height, side, rng)
    pixels = cxr.to_stored_pixels(att, device, rng)
    sec = int(rng.integers(8 * 3600, 18 * 3600))
    header = StudyHeader(
        patient.patient_id, visit.study_id, patient.site, patient.sex, visit.age,
        patient.birth_date, visit.study_date, f"{sec // 3600:02d}{sec // 60 % 60:02d}{sec % 60:02d}",
        uid_entropy=("medfm-synth", str(seed), visit.study_id),
    )
    path = root / _CXR / rel / f"{visit.study_id}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    cxr.write_cxr_dicom(path, pixels, device, header)
    report = root / REPORTS_DIR / rel / f"{visit.study_id}_{_CXR}.txt"
    _write_text(report, reports.radiology_report(
        report_rng, cardiomegaly=visit.labels["cardiomegaly"], ctr=visit.ctr,
        pleural_effusion=visit.labels["pleural_effusion"],
        effusion_height=visit.effusion_height, effusion_side=side))
    return {f"{_CXR}_path": path.relative_to(root).as_posix(), f"{_CXR}_device": device.name,
            f"{_CXR}_report_path": report.relative_to(root).as_posix()}


def _write_ecg(root: Path, rel: Path, seed: int, patient: Patient, visit: Visit,
               report_rng: np.random.Generator) -> dict[str, str]:
    device = ecg.ECG_DEVICES[visit.ecg_device]
    rng = _visit_rng(seed, patient, visit, _STREAM_ECG)
    signal, rate = ecg.synthesize_ecg(
        device, patient.physiology, visit.rate_bpm, bool(visit.labels["atrial_fibrillation"]),
        visit.lvh_factor, visit.strain, rng)
    start = dt.datetime.combine(visit.study_date, dt.time()) + dt.timedelta(
        seconds=int(rng.integers(8 * 3600, 18 * 3600)))
    folder = root / _ECG / rel
    folder.mkdir(parents=True, exist_ok=True)
    ecg.write_ecg_record(folder, visit.study_id, signal, device,
                         [f"age: {visit.age}", f"sex: {patient.sex}"], start)
    report = root / REPORTS_DIR / rel / f"{visit.study_id}_{_ECG}.txt"
    # The report quotes the rate actually in the record, not the target rate.
    _write_text(report, reports.cardiology_report(
        report_rng, rate_bpm=rate, atrial_fibrillation=visit.labels["atrial_fibrillation"],
        lvh=visit.labels["lvh"], lvh_factor=visit.lvh_factor, strain=visit.strain))
    return {f"{_ECG}_path": (folder / visit.study_id).relative_to(root).as_posix(),
            f"{_ECG}_device": device.name, f"{_ECG}_report_path": report.relative_to(root).as_posix()}


def _header(seed: int, patient: Patient, visit: Visit, rng: np.random.Generator) -> StudyHeader:
    sec = int(rng.integers(8 * 3600, 18 * 3600))
    return cxr.StudyHeader(
        patient.patient_id, visit.study_id, patient.site, patient.sex, visit.age,
        patient.birth_date, visit.study_date, f"{sec // 3600:02d}{sec // 60 % 60:02d}{sec % 60:02d}",
        uid_entropy=("medfm-synth", str(seed), visit.study_id),
    )


def _write_oct(root: Path, rel: Path, seed: int, patient: Patient, visit: Visit,
               report_rng: np.random.Generator) -> dict[str, str]:
    device = oct.OCT_DEVICES[visit.oct_device]
    rng = _visit_rng(seed, patient, visit, _STREAM_OCT)
    refl = oct.render_reflectivity(patient.eye, device, visit.drusen_load, visit.cysts, rng)
    volume = oct.to_stored_volume(refl, device, rng)
    path = root / _OCT / rel / f"{visit.study_id}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    oct.write_oct_dicom(path, volume, device, _header(seed, patient, visit, rng), patient.eye.laterality)
    report = root / REPORTS_DIR / rel / f"{visit.study_id}_{_OCT}.txt"
    _write_text(report, reports.oct_report(
        report_rng, laterality=patient.eye.laterality, drusen=visit.labels["drusen"],
        drusen_load=visit.drusen_load, intraretinal_fluid=visit.labels["intraretinal_fluid"],
        n_cysts=len(visit.cysts)))
    return {f"{_OCT}_path": path.relative_to(root).as_posix(), f"{_OCT}_device": device.name,
            f"{_OCT}_report_path": report.relative_to(root).as_posix()}


def _write_fundus(root: Path, rel: Path, seed: int, patient: Patient, visit: Visit,
                  report_rng: np.random.Generator) -> dict[str, str]:
    camera = fundus.FUNDUS_CAMERAS[visit.fundus_device]
    rng = _visit_rng(seed, patient, visit, _STREAM_FUNDUS)
    rgb = fundus.render_fundus(patient.eye, camera, visit.drusen_load, visit.haemorrhages, rng)
    pixels = fundus.to_stored_rgb(rgb, camera, rng)
    header = _header(seed, patient, visit, rng)
    folder = root / _FUNDUS / rel
    folder.mkdir(parents=True, exist_ok=True)
    if camera.file_format == "png":
        path = folder / f"{visit.study_id}.png"
        fundus.write_fundus_png(path, pixels)
    else:
        path = folder / f"{visit.study_id}.dcm"
        fundus.write_fundus_dicom(path, pixels, camera, header, patient.eye.laterality)
    report = root / REPORTS_DIR / rel / f"{visit.study_id}_{_FUNDUS}.txt"
    _write_text(report, reports.fundus_report(
        report_rng, laterality=patient.eye.laterality, drusen=visit.labels["drusen"],
        drusen_load=visit.drusen_load, haemorrhage=visit.labels["haemorrhage"],
        n_haemorrhages=len(visit.haemorrhages)))
    return {f"{_FUNDUS}_path": path.relative_to(root).as_posix(), f"{_FUNDUS}_device": camera.name,
            f"{_FUNDUS}_report_path": report.relative_to(root).as_posix()}


def _write_ct(root: Path, rel: Path, seed: int, patient: Patient, visit: Visit,
              report_rng: np.random.Generator) -> dict[str, str]:
    device = ct.CT_DEVICES[visit.ct_device]
    rng = _visit_rng(seed, patient, visit, _STREAM_CT)
    hu = ct.render_hu(patient.chest_ct, device, visit.nodule_mm, visit.table_mm, rng)
    folder = root / _CT / rel / visit.study_id
    ct.write_ct_series(folder, ct.to_stored(hu), device, _header(seed, patient, visit, rng), visit.table_mm, rng)
    report = root / REPORTS_DIR / rel / f"{visit.study_id}_{_CT}.txt"
    _write_text(report, reports.ct_report(
        report_rng, lung_nodule=visit.labels["lung_nodule"], nodule_mm=visit.nodule_mm,
        location=ct.nodule_location(patient.chest_ct)))
    return {f"{_CT}_path": folder.relative_to(root).as_posix(), f"{_CT}_device": device.name,
            f"{_CT}_report_path": report.relative_to(root).as_posix()}


def write_visit(root: Path, seed: int, patient: Patient, visit: Visit,
                modalities: tuple[str, ...] = MODALITIES) -> dict[str, str | int]:
    """Renders and writes one visit's files (only those of ``modalities``); returns its manifest row."""
    rel = Path(patient.site) / patient.patient_id
    row: dict[str, str | int] = {c: "" for c in MANIFEST_COLUMNS}
    row.update(patient_id=patient.patient_id, study_id=visit.study_id, site=patient.site,
               study_date=visit.study_date.isoformat(), age=visit.age, sex=patient.sex, **visit.labels)
    (root / REPORTS_DIR / rel).mkdir(parents=True, exist_ok=True)
    report_rng = _visit_rng(seed, patient, visit, _STREAM_REPORT)
    if visit.cxr_device is not None and _CXR in modalities:
        row.update(_write_cxr(root, rel, seed, patient, visit, report_rng))
    if visit.ecg_device is not None and _ECG in modalities:
        row.update(_write_ecg(root, rel, seed, patient, visit, report_rng))
    report_rng = _visit_rng(seed, patient, visit, _STREAM_EYE_CT_REPORT)
    if visit.oct_device is not None and _OCT in modalities:
        row.update(_write_oct(root, rel, seed, patient, visit, report_rng))
    if visit.fundus_device is not None and _FUNDUS in modalities:
        row.update(_write_fundus(root, rel, seed, patient, visit, report_rng))
    if visit.ct_device is not None and _CT in modalities:
        row.update(_write_ct(root, rel, seed, patient, visit, report_rng))
    return row


# Names this module writes; a re-run removes those no longer in the cohort.
_OWN_FILE = re.compile(
    r"^S\d{6}(\.dcm|\.png|\.hea|\.dat|_(cxr|ecg|oct|fundus|ct)\.txt)$|^CT\d{3}\.dcm$|^\.(S\d{6}|CT\d{3}).*\.tmp$")


def _remove_stale(root: Path, keep: set[Path]) -> None:
    """Deletes files from an earlier run that this cohort did not write (ours only)."""
    for top in (*MODALITIES, REPORTS_DIR):
        base = root / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*"), reverse=True):  # children before parents
            if path.is_dir():
                if not any(path.iterdir()):
                    path.rmdir()
            elif path not in keep and _OWN_FILE.match(path.name):
                path.unlink()


def write_manifest(path: Path, rows: list[dict[str, str | int]]) -> None:
    """Writes the manifest CSV (``\\n`` line ends, so bytes do not depend on the platform)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_text(path, buf.getvalue())


def _files_of_row(root: Path, row: dict[str, str | int]) -> set[Path]:
    """Every file a manifest row stands for."""
    files = set()
    for col in (f"{_CXR}_path", f"{_OCT}_path", f"{_FUNDUS}_path",
                *(f"{m}_report_path" for m in MODALITIES)):
        if row[col]:
            files.add(root / str(row[col]))
    if row[f"{_ECG}_path"]:
        files.update(root / f"{row[f'{_ECG}_path']}{ext}" for ext in (".hea", ".dat"))
    if row[f"{_CT}_path"]:
        n_slices = ct.CT_DEVICES[str(row[f"{_CT}_device"])].n_slices
        files.update(root / str(row[f"{_CT}_path"]) / f"CT{k:03d}.dcm" for k in range(1, n_slices + 1))
    return files


def synthesize_cohort(out_dir: str | Path, n_patients: int = 600, seed: int = 0, progress: bool = True,
                      modalities: tuple[str, ...] | None = None) -> Path:
    """Writes the cohort under out_dir and returns the manifest path (out_dir / "manifest.csv").

    Args:
        out_dir: cohort root; created if missing. Files of an earlier run are
            overwritten, and those this cohort no longer contains are removed.
        n_patients: number of patients (about 1.4 studies each).
        seed: cohort seed; same ``(n_patients, seed)`` gives byte-identical files.
        progress: show a rich progress bar.
        modalities: write only these modalities' files (``cxr``, ``ecg``, ``oct``,
            ``fundus``, ``ct``); None writes all. Patients, labels and every written
            file are the same whichever are chosen; cells of skipped modalities stay empty.

    Returns:
        Path of ``manifest.csv``.

    Raises:
        ValueError: ``n_patients`` below 1 or an unknown modality.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    chosen = MODALITIES if modalities is None else tuple(modalities)
    unknown = sorted(set(chosen) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; expected some of {list(MODALITIES)}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.csv"
    # An old manifest must not outlive a run that stops half-way; the new one is written last.
    manifest.unlink(missing_ok=True)
    patients = plan_cohort(n_patients, seed)
    rows: list[dict[str, str | int]] = []
    columns = (TextColumn("synthesizing cohort"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("patients", total=len(patients))
        for patient in patients:
            rows.extend(write_visit(root, seed, patient, visit, chosen) for visit in patient.visits)
            bar.advance(task)
    keep = set().union(*(_files_of_row(root, row) for row in rows))
    _remove_stale(root, keep)
    write_manifest(manifest, rows)
    return manifest
