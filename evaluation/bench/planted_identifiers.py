"""Identifiers planted in a cohort's DICOM headers, ECG headers and report text, then looked for everywhere medfm
writes, logs or answers.

1. A small synthetic cohort is written; every patient gets a distinctive name, record number, birth date,
   address, telephone number, referring physician and accession number, set in every DICOM header of theirs
   (PatientName, PatientID, OtherPatientIDs, PatientBirthDate, PatientAddress, AccessionNumber,
   ReferringPhysicianName, InstitutionName), written into every WFDB header as comments, and burned into every
   report as the header lines a radiology system prints, plus a titled name in the text.
2. The whole pipeline runs on it (cohort, pretraining, zero-shot, the validation report, the case index), then
   ``medfm search`` (text and file), ``medfm inspect`` on planted files, and the HTTP service: every search form
   (text, DICOM, zipped CT series, zipped WFDB record), every case it returns and each one's thumbnail.
3. Every file under the run folder is read back (parquet and SQLite as their rows, PDF as its text, the rest as
   bytes and as text), with everything printed or logged and every HTTP response body, and searched for each
   planted string (every way it is written: "Given Family", "Family^Given", each name part, the digits, the date
   in three formats).

``python evaluation/bench/planted_identifiers.py --patients 24 --json out.json``: exit status 1 on any hit.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import sqlite3
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
GIVEN = ["Zebulon", "Philomena", "Thaddeus", "Ottoline", "Barnabas", "Clementine", "Ignatius", "Seraphina"]
FAMILY = ["Quixworth", "Brackenfield", "Sunderholt", "Wimbourne", "Pettigrew", "Ravensclaw", "Fennimore", "Holloway"]
STREETS = ["Larkspur", "Juniper", "Marigold", "Thistle", "Wrenfield", "Blackthorn"]
PHYSICIANS = [("Ophelia", "Brandywine"), ("Cornelius", "Ashdown"), ("Griselda", "Fairweather"),
              ("Lysander", "Oakhurst")]


@dataclass
class Planted:
    """One patient's planted identifiers, each in every form it may be written in."""

    name: tuple[str, str]
    mrn: str
    birth: tuple[int, int, int]
    street: str
    phone: str
    accession: str
    physician: tuple[str, str]

    def strings(self) -> list[str]:
        given, family = self.name
        year, month, day = self.birth
        return [given, family, f"{given} {family}", f"{family}^{given}", self.mrn, f"{year}{month:02d}{day:02d}",
                f"{year}-{month:02d}-{day:02d}", f"{month:02d}/{day:02d}/{year}", self.street, self.phone,
                self.accession, self.physician[0], self.physician[1]]


@dataclass
class Scan:
    identifiers: int = 0
    places: dict[str, int] = field(default_factory=dict)  # what was scanned, by kind
    hits: list[str] = field(default_factory=list)


def planted_for(patient: str, rng: np.random.Generator) -> Planted:
    number = int(patient.lstrip("P"))
    return Planted(name=(GIVEN[number % len(GIVEN)], f"{FAMILY[number % len(FAMILY)]}{chr(97 + number % 26)}ton"),
                   mrn=f"{73000000 + 7919 * number}", birth=(1930 + number % 50, 1 + number % 12, 1 + number % 27),
                   street=f"{STREETS[number % len(STREETS)]}{chr(97 + number % 26)}ton",
                   phone=f"(555) {300 + number:03d}-{1000 + number}",
                   accession=f"ACCX{880000 + number}", physician=PHYSICIANS[number % len(PHYSICIANS)])


def plant(root: Path, seed: int = 0) -> dict[str, Planted]:
    """Plant every patient's identifiers in the cohort under ``root`` (manifest.csv and its files)."""
    import pandas as pd
    import pydicom

    rng = np.random.default_rng(seed)
    manifest = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    planted: dict[str, Planted] = {}
    for _, row in manifest.iterrows():
        who = planted.setdefault(row["patient_id"], planted_for(row["patient_id"], rng))
        given, family = who.name
        year, month, day = who.birth
        for column in (c for c in manifest.columns if c.endswith("_path") and row[c]):
            path = root / row[column]
            for dicom in ([path] if path.suffix == ".dcm" else sorted(path.glob("*.dcm")) if path.is_dir() else []):
                ds = pydicom.dcmread(dicom)
                ds.PatientName = f"{family}^{given}"
                ds.PatientID = who.mrn
                ds.OtherPatientIDs = f"NHS{who.mrn}"
                ds.PatientBirthDate = f"{year}{month:02d}{day:02d}"
                ds.PatientAddress = f"{who.street} Lane, Hollowbrook"
                ds.AccessionNumber = who.accession
                ds.ReferringPhysicianName = f"{who.physician[1]}^{who.physician[0]}"
                ds.InstitutionName = f"Saint {family} Infirmary"
                ds.save_as(dicom)
            header = path.with_suffix(".hea") if column.startswith("ecg") else None
            if header is not None and header.is_file():
                header.write_text(header.read_text().rstrip("\n") + f"\n# Patient: {given} {family} MRN {who.mrn}"
                                  f" DOB {month:02d}/{day:02d}/{year}\n")
            if column.endswith("report_path") and path.is_file():
                path.write_text(
                    f"Patient: {given} {family}   MRN: {who.mrn}   DOB: {month:02d}/{day:02d}/{year}\n"
                    f"Address: {who.street} Lane, Hollowbrook   Phone: {who.phone}\n"
                    f"Referring physician: Dr. {who.physician[0]} {who.physician[1]}   Accession: {who.accession}\n"
                    + path.read_text() + f"\nDictated for Mr. {family}.\n")
    return planted


def run(workdir: Path, patients: int = 24) -> dict[str, Any]:
    """Plant, run everything, scan everything; the summary of what was looked for, where, and what was found."""
    from medfm.cli import main
    from medfm.cohort.synth import synthesize_cohort

    data = workdir / "data"
    synthesize_cohort(data, n_patients=patients, seed=0, progress=False)
    planted = plant(data)
    cohort = (ROOT / "cohorts/demo.yaml").read_text().replace("../data/demo/manifest.csv", "data/manifest.csv")
    (workdir / "cohort.yaml").write_text(cohort.replace("patients: 600", f"patients: {patients}"))
    (workdir / "data/synth.json").write_text(json.dumps({"patients": patients, "seed": 0,
                                                        "medfm_version": _version()}))  # keep the planted files
    (workdir / "pipeline.yaml").write_text(
        f"name: planted\noutput_dir: out\ncohort: cohort.yaml\nmodel: {ROOT / 'configs/models/tiny.yaml'}\n"
        f"train: {ROOT / 'configs/train/tiny.yaml'}\nplan: {ROOT / 'evaluation/plans/demo.yaml'}\n")
    printed, responses = io.StringIO(), []
    handler = logging.StreamHandler(printed)
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            codes = [main(["run", str(workdir / "pipeline.yaml")])]
            index = workdir / "out/index"
            a_dicom = next(data.rglob("*.dcm"))
            codes.append(main(["search", "--index", str(index), "--text", "pleural effusion", "--json"]))
            codes.append(main(["search", "--index", str(index), str(a_dicom), "--json"]))
            codes.append(main(["inspect", str(a_dicom), "--json"]))
            codes.append(main(["inspect", str(next(data.rglob("*.hea")))]))
        responses = _service_responses(index, data, workdir)
    finally:
        logging.getLogger().removeHandler(handler)
    if any(code != 0 for code in codes):
        raise RuntimeError(f"a command failed (exit codes {codes}):\n{printed.getvalue()[-3000:]}")
    texts = _output_texts(workdir / "out")
    texts["printed and logged"] = printed.getvalue()
    texts.update({f"HTTP {i}: {what}": body for i, (what, body) in enumerate(responses)})
    scan = Scan(identifiers=sum(len(p.strings()) for p in planted.values()))
    for place, text in texts.items():
        kind = "HTTP response" if place.startswith("HTTP") else Path(place).suffix or place
        scan.places[kind] = scan.places.get(kind, 0) + 1
        lowered = text.lower()
        for who in planted.values():
            for value in who.strings():
                if value.lower() in lowered:
                    scan.hits.append(f"{place}: {value!r}")
    return {"patients": len(planted), "identifiers_planted": scan.identifiers, "places_scanned": scan.places,
            "places": sum(scan.places.values()), "http_responses": [what for what, _ in responses],
            "printed_lines": printed.getvalue().count("\n"), "hits": scan.hits}


def _version() -> str:
    from medfm import __version__

    return __version__


def _service_responses(index: Path, data: Path, workdir: Path) -> list[tuple[str, str]]:
    """Every search form against the service, then every case it returned and its thumbnail."""
    from fastapi.testclient import TestClient

    from medfm.heads.query import CaseSearch
    from medfm.service import ServiceSettings, create_app

    token = "planted-test-token-9b2e"
    settings = ServiceSettings(token=token, audit_log=workdir / "audit.jsonl")
    out: list[tuple[str, str]] = []
    ct_zip, ecg_zip = workdir / "ct.zip", workdir / "ecg.zip"
    ct = next(p for p in (data / "ct").rglob("*") if p.is_dir() and any(p.glob("*.dcm")))
    with zipfile.ZipFile(ct_zip, "w") as archive:
        for dicom in sorted(ct.glob("*.dcm")):
            archive.write(dicom, dicom.name)
    header = next(data.rglob("*.hea"))
    with zipfile.ZipFile(ecg_zip, "w") as archive:
        for part in sorted(header.parent.glob(header.stem + ".*")):
            archive.write(part, part.name)
    uploads = [("cxr DICOM", next((data / "cxr").rglob("*.dcm"))), ("CT series zip", ct_zip), ("ECG zip", ecg_zip)]
    with TestClient(create_app(CaseSearch.open(index), settings),
                    headers={"Authorization": f"Bearer {token}"}) as client:
        found = []
        for what, path in uploads:
            response = client.post("/api/search", files={"file": (path.name, path.read_bytes())}, data={"k": "5"})
            response.raise_for_status()
            out.append((f"search by {what}", response.text))
            found += [r["id"] for r in response.json()["results"]]
        response = client.post("/api/search", data={"text": "small left pleural effusion", "k": "5"})
        response.raise_for_status()
        out.append(("search by text", response.text))
        found += [r["id"] for r in response.json()["results"]]
        for case_id in dict.fromkeys(found):
            response = client.get(f"/api/cases/{case_id}")
            response.raise_for_status()
            out.append((f"case {case_id}", response.text))
            thumbnail = client.get(f"/api/cases/{case_id}/thumbnail")
            thumbnail.raise_for_status()
            out.append((f"thumbnail {case_id}", thumbnail.content.decode("latin-1")))
        out.append(("version", client.get("/api/version").text))
    out.append(("audit log", (workdir / "audit.jsonl").read_text()))
    return out


def _output_texts(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` as text: parquet and SQLite as their rows, PDF as its text, the rest decoded."""
    import pandas as pd
    import pypdfium2 as pdfium

    texts = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        text = raw.decode("utf-8", "replace") + raw.decode("latin-1")
        if path.suffix == ".parquet":
            text += pd.read_parquet(path).astype(str).to_csv()
        elif path.suffix in (".sqlite", ".db"):
            with contextlib.closing(sqlite3.connect(path)) as db:
                text += "\n".join(db.iterdump())
        elif path.suffix == ".pdf":
            pdf = pdfium.PdfDocument(str(path))
            text += "\n".join(pdf[i].get_textpage().get_text_range() for i in range(len(pdf)))
        texts[str(path.relative_to(folder))] = text
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="medfm-planted-"))
    try:
        result = run(workdir, args.patients)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{result['identifiers_planted']} identifier strings of {result['patients']} patients, looked for in "
          f"{result['places']} places ({result['places_scanned']}): {len(result['hits'])} found")
    for hit in result["hits"][:20]:
        print(f"  FOUND {hit}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if result["hits"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
