"""SIGKILL at random moments during long jobs: nothing written is ever half written, and a rerun finishes the job.

For each job (``train``: ``medfm pretrain --resume``; ``index``: ``medfm index build``; ``ingest``: ``medfm ingest
dicomweb`` from a real Orthanc), the harness

1. runs the job once, uninterrupted, in its own folder: the reference result and its duration;
2. in fresh folders (episodes), starts the same command again and again, each time killing the whole process
   group with SIGKILL after a random delay (uniform between a fraction of the startup time and the reference
   duration), until a run ends by itself; after every kill it checks every file the job writes: each must be
   absent, or a complete previous version, or a complete new one (JSON parses, safetensors and NPZ load,
   a checkpoint or an index loads with its hash checks, a DICOM file parses to its pixel data, the manifest
   parses and names only files that exist);
3. compares each episode's final result with the reference: weights equal bit for bit, the same cases with the
   same vectors, the same manifest rows and file contents.

Episodes repeat until at least ``--kills`` kills happened. ``python evaluation/bench/kill_harness.py --job train
--kills 20 --json out.json``; exit status 1 when an integrity check or a comparison fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

TRAIN_CONFIG = """epochs: 3
batch_size: 8
seed: 0
on_error: skip
precision: fp32
checkpoint_every_steps: 2
"""


class IntegrityError(AssertionError):
    """A file a job writes was found half written, or a finished job's result differs from the reference."""


@dataclass
class Job:
    """A resumable command, how to set up its inputs, and how to check and compare what it writes."""

    name: str
    prepare: Callable[[Path, Path], list[str]]  # (shared inputs, episode folder) -> command
    check: Callable[[Path], None]               # after a kill: raises IntegrityError
    result: Callable[[Path], Any]               # after a clean finish: comparable result
    compare: Callable[[Any, Any], str | None]   # None when equal, else what differs


@dataclass
class Report:
    job: str
    reference_s: float = 0.0
    kills: int = 0
    episodes: int = 0
    kill_times_s: list[float] = field(default_factory=list)
    checks_passed: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


# -- shared inputs ------------------------------------------------------------------------------------


def shared_inputs(folder: Path, patients: int = 24) -> Path:
    """A small synthetic cohort and the files every job reads (created once, read-only for the jobs)."""
    from medfm.cohort.synth import synthesize_cohort

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "data/manifest.csv").is_file():
        synthesize_cohort(folder / "data", n_patients=patients, seed=0, progress=False)
    cohort = (ROOT / "cohorts/demo.yaml").read_text().replace("../data/demo/manifest.csv", "data/manifest.csv")
    cohort = cohort.replace("patients: 600", f"patients: {patients}")
    (folder / "cohort.yaml").write_text(cohort)
    (folder / "train.yaml").write_text(TRAIN_CONFIG)
    return folder


def _env() -> dict[str, str]:
    # One thread: float sums in one order, so an interrupted and a straight run can be compared bit for bit.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# -- train -------------------------------------------------------------------------------------------


def prepare_train(shared: Path, episode: Path) -> list[str]:
    pipeline = episode / "pipeline.yaml"
    pipeline.write_text(f"name: kill\noutput_dir: out\ncohort: {shared / 'cohort.yaml'}\n"
                        f"model: {ROOT / 'configs/models/tiny.yaml'}\ntrain: {shared / 'train.yaml'}\n"
                        f"plan: {ROOT / 'evaluation/plans/demo.yaml'}\n")
    return [PYTHON, "-m", "medfm.cli", "pretrain", str(pipeline), "--resume"]


def check_train(episode: Path) -> None:
    from safetensors.torch import load_file

    checkpoint = episode / "out/checkpoint"
    for path in checkpoint.glob("*.safetensors") if checkpoint.is_dir() else []:
        _must(lambda p=path: load_file(str(p)), path)
    for path in checkpoint.glob("*.json") if checkpoint.is_dir() else []:
        _must(lambda p=path: json.loads(p.read_text()), path)
    log = checkpoint / "train_log.jsonl"
    if log.is_file():  # an append-only log: every line but a last one cut mid-write parses; resume rewrites it
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        for line in lines[:-1]:
            _must(lambda text=line: json.loads(text), log)
    if (checkpoint / "model.safetensors").is_file() and (checkpoint / "config.json").is_file():
        from medfm.models import MultimodalModel

        _must(lambda: MultimodalModel.from_pretrained(checkpoint), checkpoint)
    for entry in (episode / "out/cache").rglob("*.safetensors") if (episode / "out/cache").is_dir() else []:
        _must(lambda p=entry: load_file(str(p)), entry)
    _no_temporaries(episode / "out", allowed=("cache",))


def result_train(episode: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    checkpoint = episode / "out/checkpoint"
    return {"weights": load_file(str(checkpoint / "model.safetensors")),
            "history": json.loads((checkpoint / "train_log.json").read_text())["history"],
            "steps": [json.loads(line)["loss"] for line in (checkpoint / "train_log.jsonl").read_text().splitlines()]}


def compare_train(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    import torch

    if a["weights"].keys() != b["weights"].keys():
        return "different tensors"
    differing = [k for k in a["weights"] if not torch.equal(a["weights"][k], b["weights"][k])]
    if differing:
        worst = max(float((a["weights"][k] - b["weights"][k]).abs().max()) for k in differing)
        return f"{len(differing)} tensors differ (max |Δ| {worst:.3g}), e.g. {differing[0]}"
    if a["steps"] != b["steps"]:
        return "the step logs differ"
    return None if a["history"] == b["history"] else "the epoch histories differ"


# -- index -------------------------------------------------------------------------------------------


def prepare_index(shared: Path, episode: Path) -> list[str]:
    model = shared / "model"
    if not (model / "model.safetensors").is_file():
        raise RuntimeError(f"{model}: run the train job first (the index job embeds with its checkpoint)")
    return [PYTHON, "-m", "medfm.cli", "index", "build", "--out", str(episode / "index"), "--model", str(model),
            "--cohort", str(shared / "cohort.yaml"), "--batch", "4"]


def check_index(episode: Path) -> None:
    from PIL import Image

    from medfm.heads.retrieval import CURRENT, CaseIndex

    index = episode / "index"
    if (index / CURRENT).is_file():
        _must(lambda: CaseIndex.load(index), index)
    for png in (index / "thumbnails").glob("*.png") if (index / "thumbnails").is_dir() else []:
        _must(lambda p=png: Image.open(p).load(), png)
    for chunk in index.glob(".pending-*/chunk-*.npz"):
        _must(lambda p=chunk: dict(np.load(p, allow_pickle=False)), chunk)
    _no_temporaries(index, allowed=())


# Keyed with a salt drawn per build (and kept across a resumed one): two builds name patients and thumbnails
# differently by design, so they are compared by what they group and hold, not by name.
SALTED = ("patient_key", "thumbnail")


def result_index(episode: Path) -> dict[str, Any]:
    from medfm.heads.retrieval import CaseIndex

    index = CaseIndex.load(episode / "index")
    cases, patients = {}, {}
    for study, modality in index.keys():
        for case_id, case in index.find(study, modality):
            fields = {k: v for k, v in case.__dict__.items() if k not in SALTED}
            picture = episode / "index/thumbnails" / case.thumbnail if case.thumbnail else None
            image = hashlib.sha256(picture.read_bytes()).hexdigest() if picture and picture.is_file() else None
            cases[(study, modality)] = (index.vector(case_id), tuple(sorted(fields.items())), image)
            patients.setdefault(case.patient_key, set()).add(study)
    return {"cases": cases, "patients": sorted(sorted(group) for group in patients.values())}


def compare_index(a: dict, b: dict) -> str | None:
    if a["cases"].keys() != b["cases"].keys():
        return f"different cases: {len(a['cases'].keys() ^ b['cases'].keys())} not in both"
    for key, (vector, fields, image) in a["cases"].items():
        other_vector, other_fields, other_image = b["cases"][key]
        if fields != other_fields:
            return f"case {key} has other metadata"
        if image is None or image != other_image:
            return f"case {key} has a missing or different thumbnail"
        if not np.array_equal(vector, other_vector):
            return f"case {key} has another vector (max |Δ| {np.abs(vector - other_vector).max():.3g})"
    return None if a["patients"] == b["patients"] else "studies are grouped into other patients"


def trained_model(shared: Path, workdir: Path) -> Path:
    """``shared/model``: the train job's checkpoint, trained once uninterrupted if no reference run left one."""
    model = shared / "model"
    if not (model / "model.safetensors").is_file():
        folder = workdir / "train-reference"
        if not (folder / "out/checkpoint/model.safetensors").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            code, _ = _run(prepare_train(shared, folder), folder, folder / "log.txt", None)
            if code != 0:
                raise RuntimeError(f"training the index job's model failed; see {folder / 'log.txt'}")
        shutil.copytree(folder / "out/checkpoint", model, dirs_exist_ok=True)
    return model


# -- ingest ------------------------------------------------------------------------------------------


def ingest_job(dicomweb_url: str, key_source: Path) -> Job:
    """``medfm ingest dicomweb`` from a running server into an empty cohort; every episode uses one
    de-identification key (``key_source``), so a finished episode's files must equal the reference's byte for byte."""

    def prepare(shared: Path, episode: Path) -> list[str]:
        text = (shared / "cohort.yaml").read_text().replace("data/manifest.csv", "ingested/manifest.csv")
        # Ingest shifts each patient's dates, so an accrual rule on dates belongs in the QIDO-RS filter instead.
        text = "".join(line for line in text.splitlines(keepends=True) if "accrual" not in line)
        (episode / "cohort.yaml").write_text(text)
        if key_source.is_file():
            key = episode / "ingested/private/deid.key"
            key.parent.mkdir(parents=True, mode=0o700)
            shutil.copyfile(key_source, key)
            key.chmod(0o600)
        return [PYTHON, "-m", "medfm.cli", "ingest", "dicomweb", dicomweb_url, "--cohort", str(episode / "cohort.yaml")]

    return Job("ingest", prepare, check_ingest, result_ingest, compare_ingest)


def _stored_dicom(episode: Path) -> list[Path]:
    """The stored study files; a study is written into a hidden ``.<key>.partial`` folder and renamed into place
    when complete, so files still in such a folder are scratch, never outputs (the next run starts it over)."""
    folder = episode / "ingested"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*.dcm")
                  if "private" not in p.parts and not any(part.endswith(".partial") for part in p.parts))


def check_ingest(episode: Path) -> None:
    import pandas as pd
    import pydicom

    for path in _stored_dicom(episode):
        _must(lambda p=path: pydicom.dcmread(p).pixel_array, path)
    manifest = episode / "ingested/manifest.csv"
    if manifest.is_file():
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        for column in (c for c in table.columns if c.endswith("_path")):
            for cell in table[column]:
                if cell and not (manifest.parent / cell).exists():
                    raise IntegrityError(f"{manifest}: names {cell}, which does not exist after a kill")


def result_ingest(episode: Path) -> dict[str, Any]:
    import pandas as pd

    manifest = pd.read_csv(episode / "ingested/manifest.csv", dtype=str, keep_default_na=False)
    rows = sorted(tuple(r) for r in manifest.itertuples(index=False))
    files = {str(p.relative_to(episode)): hashlib.sha256(p.read_bytes()).hexdigest() for p in _stored_dicom(episode)}
    return {"columns": list(manifest.columns), "rows": rows, "files": files}


def compare_ingest(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    if a["columns"] != b["columns"] or a["rows"] != b["rows"]:
        return "the manifests differ"
    if a["files"].keys() != b["files"].keys():
        return f"{len(a['files'].keys() ^ b['files'].keys())} stored files are not in both"
    differing = [name for name in a["files"] if a["files"][name] != b["files"][name]]
    return f"{len(differing)} stored files differ, e.g. {differing[0]}" if differing else None


def run_ingest(shared: Path, workdir: Path, kills: int, seed: int) -> Report:
    """Start Orthanc (as the ingest tests do), load it with the shared cohort's DICOM files, run the ingest job."""
    sys.path.insert(0, str(ROOT))
    from tests.cohort.orthanc import run_orthanc

    (workdir / "orthanc").mkdir(parents=True, exist_ok=True)
    with run_orthanc(workdir / "orthanc") as server:
        for path in sorted((shared / "data").rglob("*.dcm")):
            server.upload(path.read_bytes())
        key = workdir / "ingest-reference/ingested/private/deid.key"
        return run_job(ingest_job(server.dicomweb, key), shared, workdir, kills, seed)


# -- the runner --------------------------------------------------------------------------------------


def _must(load: Callable[[], Any], path: Path) -> None:
    try:
        load()
    except Exception as err:  # noqa: BLE001 - any failure to read back is what the harness reports
        raise IntegrityError(f"{path}: unreadable after a kill: {type(err).__name__}: {err}") from None


def _no_temporaries(folder: Path, allowed: tuple[str, ...]) -> None:
    """Temporary files of an interrupted atomic write may remain, but never under a final name (checked above);
    this only bounds how many: one per writer at most, so a kill loop cannot fill the disk."""
    if not folder.is_dir():
        return
    stale = [p for p in folder.rglob("*.tmp") if not any(part in allowed for part in p.relative_to(folder).parts)]
    if len(stale) > 50:
        raise IntegrityError(f"{folder}: {len(stale)} temporary files left by interrupted writes")


JOBS = {
    "train": Job("train", prepare_train, check_train, result_train, compare_train),
    "index": Job("index", prepare_index, check_index, result_index, compare_index),
    "ingest": None,  # needs a server: run_ingest
}


def _run(command: list[str], cwd: Path, log: Path, timeout: float | None) -> tuple[int | None, float]:
    """Run to completion, or kill the process group after ``timeout`` s: (return code or None if killed, elapsed)."""
    started = time.perf_counter()
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=out, stderr=out, start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None, time.perf_counter() - started
    return code, time.perf_counter() - started


def run_job(job: Job, shared: Path, workdir: Path, kills: int, seed: int = 0, max_runs: int = 400) -> Report:
    """The reference run, then episodes of killed runs until ``kills`` kills, each checked and compared."""
    rng = np.random.default_rng(seed)
    report, started = Report(job.name), time.perf_counter()
    reference = workdir / f"{job.name}-reference"
    shutil.rmtree(reference, ignore_errors=True)
    reference.mkdir(parents=True)
    code, report.reference_s = _run(job.prepare(shared, reference), reference, reference / "log.txt", None)
    if code != 0:
        raise RuntimeError(f"{job.name}: the reference run failed (exit {code}); see {reference / 'log.txt'}")
    expected = job.result(reference)
    startup = min(report.reference_s, 6.0)
    runs = 0
    while report.kills < kills and runs < max_runs:
        episode = workdir / f"{job.name}-episode-{report.episodes}"
        shutil.rmtree(episode, ignore_errors=True)
        episode.mkdir(parents=True)
        command = job.prepare(shared, episode)
        report.episodes += 1
        while runs < max_runs:
            runs += 1
            delay = float(rng.uniform(0.5 * startup, 1.1 * report.reference_s))
            code, elapsed = _run(command, episode, episode / "log.txt", delay)
            if code is None:
                report.kills += 1
                report.kill_times_s.append(round(elapsed, 2))
                try:
                    job.check(episode)
                    report.checks_passed += 1
                except IntegrityError as err:
                    report.failures.append(str(err))
                continue
            if code != 0:
                report.failures.append(f"{episode}: a resumed run failed with exit {code}; see {episode / 'log.txt'}")
            else:
                difference = job.compare(expected, job.result(episode))
                if difference:
                    report.failures.append(f"{episode}: finished, but differs from the uninterrupted run: {difference}")
            break
    report.seconds = time.perf_counter() - started
    return report


def summary(report: Report) -> dict[str, Any]:
    return {**report.__dict__, "kill_times_s": {"min": min(report.kill_times_s, default=None),
                                                "max": max(report.kill_times_s, default=None),
                                                "all": report.kill_times_s}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=sorted(JOBS), action="append", help="default: every job")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder, removed afterwards")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="medfm-kill-"))
    try:
        shared = shared_inputs(workdir / "shared")
        reports = []
        for name in args.job or ["train", "index", "ingest"]:
            if name == "index":
                trained_model(shared, workdir)
            if name == "ingest":
                report = run_ingest(shared, workdir, args.kills, args.seed)
            else:
                report = run_job(JOBS[name], shared, workdir, args.kills, args.seed)
            reports.append(summary(report))
            print(f"{name}: {report.kills} kills in {report.episodes} episodes, {report.checks_passed} integrity "
                  f"checks passed, {len(report.failures)} failures, {report.seconds:.0f} s")
            for failure in report.failures:
                print(f"  FAIL {failure}")
        if args.json:
            args.json.write_text(json.dumps(reports, indent=2))
        return 1 if any(r["failures"] for r in reports) else 0
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
