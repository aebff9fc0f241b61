"""Cohort → similar-case index: every study embedded in batches, resumable, with a thumbnail per case.

``update_index`` is both ``medfm index build`` (into an empty folder) and ``medfm index
add`` (the cohort's studies not yet indexed): one code path, so a re-run skips what is
already there. Work is cut into chunks of studies; each finished chunk (vectors, case
metadata) is written atomically into ``<index>/.pending-<plan>/`` before the next starts,
so a killed build resumes at the first missing chunk. The plan hash covers the model,
the manifest and the chunking: a changed cohort or model starts a new plan instead of
mixing vectors from two.

No patient identifier reaches the index: a case stores a keyed hash of the patient id
(HMAC-SHA-256 with a random salt kept in ``index.json``), enough to leave out a query
patient's own studies, and a thumbnail drawn from the model's preprocessed input, not
from the file (no burned-in header text beyond what the pixels themselves hold).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageDraw
from rich.console import Console
from rich.progress import Progress

from medfm.atomic import sha256_file, write_atomic, write_text_atomic
from medfm.cohort import Cohort, load_cohort
from medfm.data.cache import PreprocessCache
from medfm.data.dataset import CohortDataset, materialize
from medfm.errors import MedfmError
from medfm.heads.embedding import embed_samples
from medfm.heads.retrieval import CURRENT, Case, CaseIndex, IndexConfig
from medfm.keys import IMAGE_MODALITIES, Field, Modality, report_of
from medfm.models import MultimodalModel

THUMBNAILS = "thumbnails"
THUMBNAIL_SIZE = 192  # pixels, longer side


class IndexMismatchError(MedfmError):
    """An index built with another model: its vectors and new ones do not share a space."""


def checkpoint_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 over a checkpoint's weights, adapters and config: equal fingerprints embed identically."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith("train_"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(model_dir)}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def patient_key(salt: str, patient_id: str) -> str:
    """The pseudonym a case stores instead of its patient id (same salt, same patient, same key)."""
    return hmac.new(salt.encode(), str(patient_id).encode(), hashlib.sha256).hexdigest()[:20]


def open_or_create(index_dir: Path, model_dir: Path, config: IndexConfig | None, fresh: bool) -> CaseIndex | None:
    """The saved index to extend (None: nothing saved yet, or ``fresh``), checked against the model."""
    if fresh or not (index_dir / CURRENT).is_file():
        return None
    index = CaseIndex.load(index_dir)
    built_with = index.info.get("model_sha256")
    if built_with != checkpoint_fingerprint(model_dir):
        raise IndexMismatchError(f"{index_dir}: built with another model checkpoint than {model_dir} "
                                 "(fingerprints differ); use the same checkpoint, or --fresh to rebuild")
    if config is not None and config != index.config:
        raise MedfmError(f"{index_dir}: saved with another index config; use --fresh to rebuild with this one")
    return index


def update_index(index_dir: str | Path, model_dir: str | Path, cohort_path: str | Path, *,
                 config: IndexConfig | None = None, batch_size: int = 64, cache_dir: str | Path | None = None,
                 fresh: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Embed the cohort's studies that the index lacks and save the index (a new one if none exists).

    Args:
        index_dir: the index folder (created if missing).
        model_dir: the checkpoint whose encoders embed the studies (queries must use the same one).
        cohort_path: the cohort YAML; every image modality the model has is indexed.
        config: index kind and parameters for a new index (an existing one keeps its own).
        batch_size: studies per chunk: the unit of progress and of resumption.
        cache_dir: a preprocessing cache to read through (e.g. a pipeline run's ``cache``).
        fresh: discard a saved index and pending work, and build from scratch.

    Returns:
        ``{"added", "skipped_existing", "quarantined", "cases", "kind", "recall_at_10", "path"}``.
    """
    console = console or Console()
    index_dir, model_dir = Path(index_dir), Path(model_dir)
    index = open_or_create(index_dir, model_dir, config, fresh)
    if fresh:
        for stale in index_dir.glob(".pending-*"):
            shutil.rmtree(stale)
    model = MultimodalModel.from_pretrained(model_dir)
    cohort = load_cohort(cohort_path)
    if index is not None:
        _refuse_study_ids_of_other_cohorts(index, cohort, cohort_path)
    present = index.keys() if index is not None else set()
    rows, skipped = _rows_to_index(cohort, model, present)
    chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    pending = index_dir / f".pending-{_plan_hash(model_dir, cohort, chunks)[:16]}"
    salt = _pending_salt(pending, index.info["patient_salt"] if index is not None else secrets.token_hex(16))
    cache = PreprocessCache(Path(cache_dir)) if cache_dir is not None else None

    quarantined = 0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("embedding studies", total=len(chunks))
        for number, chunk in enumerate(chunks):
            target = pending / f"chunk-{number:05d}.npz"
            if not target.is_file():
                vectors, cases, problems = _embed_chunk(model, cohort, chunk, present, salt, index_dir, cache)
                quarantined += problems
                _write_chunk(target, vectors, cases)
            progress.advance(task)

    vectors, cases = _read_chunks(pending, len(chunks), model.config.embed_dim)
    # Chunks written before cases recorded their cohort (a build resumed across the upgrade) say it here.
    cases = [case if case.cohort else replace(case, cohort=cohort.config.name) for case in cases]
    if index is None:
        index = CaseIndex.build(vectors, cases, config)
    elif cases:
        index.add(vectors, cases)
    index.info = {**index.info, "patient_salt": salt, "model": str(model_dir.resolve()),
                  "model_sha256": checkpoint_fingerprint(model_dir), "cohorts": sorted(
                      {*index.info.get("cohorts", []), cohort.config.name})}
    saved = index.save(index_dir)
    shutil.rmtree(pending)
    if fresh:
        _remove_unlisted_thumbnails(index_dir, index)
    return {"added": len(cases), "skipped_existing": skipped, "quarantined": quarantined, "cases": len(index),
            "kind": index.kind, "recall_at_10": index.recall_at_10, "path": str(saved)}


def remove_studies(index_dir: str | Path, study_ids: Iterable[str]) -> int:
    """Remove every case of these studies and their thumbnails; returns how many cases went."""
    index_dir = Path(index_dir)
    index = CaseIndex.load(index_dir)
    study_ids = list(study_ids)
    thumbnails = [case.thumbnail for s in study_ids for _, case in index.find(s) if case.thumbnail]
    removed = index.remove(study_ids)
    if removed:
        index.save(index_dir)
        for name in thumbnails:  # after the save: a crash before it leaves the old index with its thumbnails
            (index_dir / THUMBNAILS / name).unlink(missing_ok=True)
    return removed


# -- planning --------------------------------------------------------------------------------------


def _refuse_study_ids_of_other_cohorts(index: CaseIndex, cohort: Cohort, cohort_path: str | Path) -> None:
    """A study id the index holds for another cohort would be skipped as "already indexed": refuse instead.

    Cases are keyed by (study id, modality); two cohorts numbering their studies alike
    (S000001, ...) cannot share an index, or a token scoped to the second would silently
    miss the studies whose ids the first took.
    """
    name = cohort.config.name
    ids = set(cohort.table[cohort.config.study_column].astype(str))
    taken = sorted({study for study, owner in index.db.execute("SELECT study_id, cohort FROM cases")
                    if study in ids and owner is not None and owner != name})
    if taken:
        raise MedfmError(f"{cohort_path}: {len(taken)} study ids of cohort {name!r} are already in the index under "
                         f"another cohort (e.g. {taken[0]}); study ids must be unique across an index's cohorts")


def _indexed_modalities(cohort: Cohort, model: MultimodalModel) -> list[Modality]:
    return [m for m in IMAGE_MODALITIES if m in cohort.config.modalities and m in model.modalities]


def _rows_to_index(cohort: Cohort, model: MultimodalModel, present: set[tuple[str, str]]) -> tuple[list, int]:
    """Manifest rows with at least one image the index lacks, and how many images were already there."""
    cfg, rows, skipped = cohort.config, [], 0
    for label, row in cohort.table.iterrows():
        missing = False
        for modality in _indexed_modalities(cohort, model):
            if not _has_file(row[cfg.modalities[modality]]):
                continue
            if (str(row[cfg.study_column]), str(modality)) in present:
                skipped += 1
            else:
                missing = True
        if missing:
            rows.append(label)
    return rows, skipped


def _plan_hash(model_dir: Path, cohort: Cohort, chunks: list[list]) -> str:
    """What a chunk file's content depends on: model, manifest, cohort config and the chunking."""
    studies = [[str(cohort.table.loc[r, cohort.config.study_column]) for r in chunk] for chunk in chunks]
    record = {"model": checkpoint_fingerprint(model_dir), "manifest": sha256_file(cohort.manifest_path),
              "config": cohort.config.model_dump(mode="json"), "chunks": studies}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _pending_salt(pending: Path, salt: str) -> str:
    """The patient-key salt of an unfinished build (its chunks' keys use it), else ``salt``, recorded for a resume."""
    recorded = pending / "salt"
    if recorded.is_file():
        return recorded.read_text().strip()
    pending.mkdir(parents=True, exist_ok=True)
    write_text_atomic(recorded, salt)
    return salt


# -- one chunk -------------------------------------------------------------------------------------


def _embed_chunk(model: MultimodalModel, cohort: Cohort, rows: list, present: set[tuple[str, str]], salt: str,
                 index_dir: Path, cache: PreprocessCache | None) -> tuple[np.ndarray, list[Case], int]:
    """Vectors and cases of the chunk's images that the index lacks; unreadable files are skipped and counted."""
    modalities = _indexed_modalities(cohort, model)
    preprocess = {m: (lambda value, m=m: model.preprocess(m, value)) for m in modalities}
    if Modality.REPORT in cohort.config.modalities:
        preprocess[Modality.REPORT] = lambda text: text
    specs = {m: model.input_spec(m) for m in modalities}
    dataset = CohortDataset(cohort, rows, preprocess, on_error="skip", cache=cache, specs=specs)
    samples, problems = materialize(dataset, description=None)
    vectors, cases = cases_of_samples(model, cohort, samples, salt, index_dir, present)
    return vectors, cases, len(problems)


def cases_of_samples(model: MultimodalModel, cohort: Cohort, samples: list[dict[str, Any]], salt: str,
                     index_dir: Path, present: set[tuple[str, str]] = frozenset()) -> tuple[np.ndarray, list[Case]]:
    """Embeddings and cases of every image in preprocessed ``samples`` not in ``present``; writes thumbnails."""
    (index_dir / THUMBNAILS).mkdir(parents=True, exist_ok=True)
    vectors, cases = [], []
    for modality in _indexed_modalities(cohort, model):
        embedded, where = embed_samples(model, samples, str(modality))
        for vector, i in zip(embedded, where, strict=True):
            sample = samples[i]
            if (sample[Field.META]["study_id"], str(modality)) in present:
                continue
            case = _case(cohort, sample, modality, salt)
            thumbnail = _thumbnail_name(salt, case)
            _write_thumbnail(sample[modality], index_dir / THUMBNAILS / thumbnail)
            cases.append(Case(**{**case.__dict__, "thumbnail": thumbnail}))
            vectors.append(vector.numpy())
    stacked = np.stack(vectors) if vectors else np.zeros((0, model.config.embed_dim), np.float32)
    return stacked, cases


def index_samples(index_dir: str | Path, model: MultimodalModel, model_dir: str | Path, cohort: Cohort,
                  samples: list[dict[str, Any]], config: IndexConfig | None = None) -> CaseIndex:
    """A new index of already-read samples (a pipeline's splits), saved to ``index_dir``, replacing any there."""
    index_dir, salt = Path(index_dir), secrets.token_hex(16)
    vectors, cases = cases_of_samples(model, cohort, samples, salt, index_dir)
    index = CaseIndex.build(vectors, cases, config)
    index.info = {"patient_salt": salt, "model": str(Path(model_dir).resolve()),
                  "model_sha256": checkpoint_fingerprint(model_dir), "cohorts": [cohort.config.name]}
    index.save(index_dir)
    _remove_unlisted_thumbnails(index_dir, index)
    return index


def _remove_unlisted_thumbnails(index_dir: Path, index: CaseIndex) -> None:
    """Thumbnails of an earlier index in the same folder, which no live case names any more."""
    listed = {row[0] for row in index.db.execute("SELECT thumbnail FROM cases")}
    for path in (index_dir / THUMBNAILS).glob("*.png"):
        if path.name not in listed:
            path.unlink(missing_ok=True)


def _case(cohort: Cohort, sample: dict[str, Any], modality: Modality, salt: str) -> Case:
    """What a radiologist sees about one image: from the manifest's metadata, labels and own report."""
    meta, cfg = sample[Field.META], cohort.config
    report = sample.get(report_of(modality), sample.get(Modality.REPORT))
    positive = [name for name in cfg.findings.get(modality, []) if sample[Field.LABEL].get(name) == 1.0]
    return Case(
        study_id=meta["study_id"], patient_key=patient_key(salt, meta["patient_id"]), modality=str(modality),
        site=_text(meta.get("site")), device=_text(meta.get(f"{modality}_device")),
        date=_text(meta.get("study_date")), report=report,
        findings=", ".join(positive) if modality in cfg.findings else None, cohort=cfg.name)


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _has_file(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _write_chunk(path: Path, vectors: np.ndarray, cases: list[Case]) -> None:
    payload = json.dumps([c.__dict__ for c in cases])

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, vectors=vectors.astype(np.float32), cases=np.frombuffer(payload.encode(), np.uint8))

    write_atomic(path, write)


def _read_chunks(pending: Path, count: int, dim: int) -> tuple[np.ndarray, list[Case]]:
    vectors, cases = [np.zeros((0, dim), np.float32)], []
    for number in range(count):
        with np.load(pending / f"chunk-{number:05d}.npz") as chunk:
            vectors.append(chunk["vectors"])
            cases += [Case(**c) for c in json.loads(chunk["cases"].tobytes().decode())]
    return np.concatenate(vectors), cases


# -- thumbnails ------------------------------------------------------------------------------------


def _thumbnail_name(salt: str, case: Case) -> str:
    """A name that reveals neither the study id nor the patient: a keyed hash of (study, modality)."""
    return patient_key(salt, f"{case.study_id}\0{case.modality}") + ".png"


def _write_thumbnail(tensor: torch.Tensor, path: Path) -> None:
    """A PNG of the model's input: a 2D image as is, a volume's middle slice, an ECG's first three leads.

    Renamed into place but not fsynced: a thumbnail is derived data, and after a power cut
    a lost one is shown as missing (fsync per file tripled the cost of indexing the demo).
    """
    image = thumbnail_image(tensor)
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"), durable=False)


def thumbnail_image(tensor: torch.Tensor) -> PILImage.Image:
    """Render a preprocessed input: (C, H, W) image, (C, D, H, W) volume, or (leads, samples) signal."""
    x = tensor.detach().float().numpy()
    if x.ndim == 2:
        return _signal_image(x)
    if x.ndim == 4:
        x = x[:, x.shape[1] // 2]  # the middle slice: an OCT's central B-scan, a CT's mid-axial slice
    pixels = x.transpose(1, 2, 0) if x.shape[0] == 3 else x.mean(axis=0)
    low, high = np.percentile(pixels, [1, 99])
    scaled = np.clip((pixels - low) / max(high - low, 1e-6), 0, 1)
    image = PILImage.fromarray((scaled * 255).astype(np.uint8))
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return image


def _signal_image(signal: np.ndarray, width: int = 2 * THUMBNAIL_SIZE, lead_height: int = 40) -> PILImage.Image:
    leads = signal[:3]
    image = PILImage.new("L", (width, lead_height * len(leads)), 255)
    draw = ImageDraw.Draw(image)
    xs = np.linspace(0, width - 1, leads.shape[1])
    for row, lead in enumerate(leads):
        span = max(float(np.ptp(lead)), 1e-6)
        ys = row * lead_height + (lead_height - 4) * (1 - (lead - lead.min()) / span) + 2
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=0, width=1)
    return image
