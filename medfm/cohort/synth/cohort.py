"""Patients, visits, devices and the manifest of the synthetic demo cohort.

Every patient is drawn from its own generator ``default_rng([seed, index])``
and every rendered file from ``default_rng([seed, index, visit, stream])``, so
a patient's files do not depend on iteration order or on how many patients
are drawn: the first k patients of an n-patient cohort are the k-patient cohort.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medfm.atomic import write_text_atomic
from medfm.cohort.synth import cxr, ecg, reports
from medfm.keys import Modality

FINDINGS: tuple[str, ...] = ("cardiomegaly", "pleural_effusion", "atrial_fibrillation", "lvh")
SITES: tuple[str, ...] = ("site_a", "site_b", "site_c")
REPORTS_DIR = "reports"

_CXR, _ECG = str(Modality.CXR), str(Modality.ECG)
MANIFEST_COLUMNS: tuple[str, ...] = (
    "patient_id", "study_id", "site", "study_date", "age", "sex",
    f"{_CXR}_path", f"{_CXR}_device", f"{_ECG}_path", f"{_ECG}_device",
    f"{_CXR}_report_path", f"{_ECG}_report_path", *FINDINGS,
)


@dataclass(frozen=True)
class SiteDevices:
    """Devices a site owns; a study picks one uniformly."""

    cxr: tuple[str, ...]
    ecg: tuple[str, ...]


SITE_DEVICES: dict[str, SiteDevices] = {
    "site_a": SiteDevices(("ACME DX-500",), ("Cardiolink 500",)),
    "site_b": SiteDevices(("Borealis CR-200",), ("PulseWave 250",)),
    "site_c": SiteDevices(("ACME DX-500", "Corvid DX-9"), ("Cardiolink 500", "PulseWave 250")),
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
    return Patient(index, f"P{index + 1:05d}", site, sex, birth, effusion_side,
                   anatomy, physiology, tuple(visits))


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
    header = cxr.CxrHeader(
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


def write_visit(root: Path, seed: int, patient: Patient, visit: Visit) -> dict[str, str | int]:
    """Renders and writes one visit's files; returns its manifest row."""
    rel = Path(patient.site) / patient.patient_id
    row: dict[str, str | int] = {c: "" for c in MANIFEST_COLUMNS}
    row.update(patient_id=patient.patient_id, study_id=visit.study_id, site=patient.site,
               study_date=visit.study_date.isoformat(), age=visit.age, sex=patient.sex, **visit.labels)
    (root / REPORTS_DIR / rel).mkdir(parents=True, exist_ok=True)
    report_rng = _visit_rng(seed, patient, visit, _STREAM_REPORT)
    if visit.cxr_device is not None:
        row.update(_write_cxr(root, rel, seed, patient, visit, report_rng))
    if visit.ecg_device is not None:
        row.update(_write_ecg(root, rel, seed, patient, visit, report_rng))
    return row


# Names this module writes; a re-run removes those no longer in the cohort.
_OWN_FILE = re.compile(r"^S\d{6}(\.dcm|\.hea|\.dat|_(cxr|ecg)\.txt)$|^\.S\d{6}.*\.tmp$")


def _remove_stale(root: Path, keep: set[Path]) -> None:
    """Deletes files from an earlier run that this cohort did not write (ours only)."""
    for top in (_CXR, _ECG, REPORTS_DIR):
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


def synthesize_cohort(out_dir: str | Path, n_patients: int = 600, seed: int = 0, progress: bool = True) -> Path:
    """Writes the cohort under out_dir and returns the manifest path (out_dir / "manifest.csv").

    Args:
        out_dir: cohort root; created if missing. Files of an earlier run are
            overwritten, and those this cohort no longer contains are removed.
        n_patients: number of patients (about 1.4 studies each).
        seed: cohort seed; same ``(n_patients, seed)`` gives byte-identical files.
        progress: show a rich progress bar.

    Returns:
        Path of ``manifest.csv``.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
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
            rows.extend(write_visit(root, seed, patient, visit) for visit in patient.visits)
            bar.advance(task)
    keep = set()
    for row in rows:
        for col in (f"{_CXR}_path", f"{_CXR}_report_path", f"{_ECG}_report_path"):
            if row[col]:
                keep.add(root / str(row[col]))
        if row[f"{_ECG}_path"]:
            keep.update(root / f"{row[f'{_ECG}_path']}{ext}" for ext in (".hea", ".dat"))
    _remove_stale(root, keep)
    write_manifest(manifest, rows)
    return manifest
