"""Cohort rows → dict samples ``{"cxr": tensor, "ecg": tensor, "report": str, "meta": {...}}``.

A cohort that gives each image its own report carries ``"report.cxr": str`` and so
on instead of one ``"report"`` (see :func:`medfm.keys.report_of`).

A modality a study lacks is simply absent from its sample. A file that cannot be
read either raises (policy ``raise``) or drops the modality from that sample and
is listed in the quarantine (policy ``skip``): never silently replaced by zeros.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from medfm.atomic import write_json_atomic
from medfm.cohort.manifest import Cohort
from medfm.data.cache import PreprocessCache, source_files
from medfm.data.transforms import preprocess_study
from medfm.errors import MedfmReadError
from medfm.io import (
    Image,
    UnsupportedFormatError,
    detect_format,
    read_dicom_image,
    read_dicom_series,
    read_ecg,
    read_nifti,
    read_oct_vendor,
    read_photo,
    read_radiograph,
    read_report,
)
from medfm.keys import Field, Modality, input_keys, is_text

ErrorPolicy = Literal["raise", "skip"]
Preprocess = Callable[[Any], Any]


def _by_format(modality: Modality, readers: dict[str, Callable[[Path], Image]],
               fallback: Callable[[Path], Image] | None = None) -> Callable[[Path], Image]:
    """A reader that dispatches on the file's content (:func:`medfm.io.detect_format`), not its name.

    ``fallback`` reads every format not listed (OCT vendor files, whose reader names the
    formats it knows); without one an unlisted format is an ``UnsupportedFormatError``.
    """

    def read(path: Path) -> Image:
        fmt = detect_format(path)
        reader = readers.get(fmt, fallback)
        if reader is None:
            raise UnsupportedFormatError(path, f"{fmt} is not a {modality} format; expected one of "
                                               f"{', '.join(sorted(readers))}")
        return reader(path)

    read.__name__ = f"read_{modality}"
    return read


_PHOTO_FORMATS = ("png", "jpeg", "tiff", "gif")

# Reader per modality; a new modality adds one entry here.
READERS: dict[Modality, Callable[[Path], Any]] = {
    Modality.CXR: read_radiograph,
    Modality.ECG: read_ecg,
    Modality.REPORT: read_report,
    # DICOM Ophthalmic Tomography (multi-frame), NIfTI, or a vendor export (.vol, .img, ...).
    Modality.OCT: _by_format(Modality.OCT, {"dicom": read_dicom_image, "nifti": read_nifti}, read_oct_vendor),
    # DICOM Ophthalmic Photography, or a PNG/JPEG/TIFF/GIF photograph.
    Modality.FUNDUS: _by_format(Modality.FUNDUS, {"dicom": read_dicom_image,
                                                  **dict.fromkeys(_PHOTO_FORMATS, read_photo)}),
    # A folder of single-slice DICOM files, one enhanced multi-frame CT file, or NIfTI.
    Modality.CT: _by_format(Modality.CT, {"dicom_series": read_dicom_series, "dicom": read_dicom_image,
                                          "nifti": read_nifti}),
}


@dataclass(frozen=True)
class QuarantineEntry:
    study_id: str
    modality: str
    path: str
    reason: str


class CohortDataset(Dataset):
    """Reads and preprocesses one manifest row per item.

    Args:
        cohort: the loaded cohort.
        rows: index labels of ``cohort.table`` to serve (e.g. one split).
        preprocess: per-modality function from the reader's output to a tensor;
            modalities without an entry are not loaded.
        on_error: ``raise`` stops at the first unreadable file; ``skip`` drops that
            modality from the sample and records the file in :attr:`quarantine`.
        cache: where preprocessed tensors are kept between epochs and runs.
        specs: per modality, the input spec that keys its cache entries and bounds its working
            size (:func:`~medfm.data.transforms.check_working_size`); a modality
            without a spec is never cached.
    """

    def __init__(self, cohort: Cohort, rows: list, preprocess: dict[Modality, Preprocess],
                 on_error: ErrorPolicy = "raise", cache: PreprocessCache | None = None,
                 specs: dict[Modality, dict | None] | None = None):
        self.cohort = cohort
        self.rows = list(rows)
        self.preprocess = preprocess
        self.on_error = on_error
        self.cache = cache
        self.specs = specs or {}
        cfg = cohort.config
        columns = [cfg.study_column, cfg.patient_column, *cfg.labels, *cfg.metadata,
                   *(c for m in preprocess for _, cs in cfg.inputs_of(m) for c in cs)]
        # Plain dicts, read once: a pandas row lookup per item cost a fifth of a cache-hit read.
        self._records = cohort.table.loc[self.rows, list(dict.fromkeys(columns))].to_dict("records")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict[str, Any], list[QuarantineEntry]]:
        cfg = self.cohort.config
        row = self._records[i]
        sample: dict[str, Any] = {}
        problems: list[QuarantineEntry] = []
        for modality, fn in self.preprocess.items():
            for key, columns in self.cohort.config.inputs_of(modality):
                paths = [row[c] for c in columns if _present(row[c])]
                if not paths:
                    continue
                try:
                    values = [self._load(modality, fn, self.cohort.root / p) for p in paths]
                except MedfmReadError as err:
                    if self.on_error == "raise":
                        raise
                    problems.append(QuarantineEntry(row[cfg.study_column], key, str(err.path), err.reason))
                    continue
                # Several report columns (radiology + cardiology) form one document.
                sample[key] = "\n\n".join(values) if modality == Modality.REPORT else values[0]
        sample[Field.LABEL] = {name: float(row[name]) for name in cfg.labels}
        sample[Field.META] = {
            "study_id": str(row[cfg.study_column]),
            "patient_id": str(row[cfg.patient_column]),
            **{name: _plain(row[name]) for name in cfg.metadata},
        }
        return sample, problems

    def _load(self, modality: Modality, fn: Preprocess, path: Path) -> Any:
        spec = self.specs.get(modality)

        def compute() -> Any:
            return preprocess_study(path, spec, READERS[modality](path), fn)

        if self.cache is None or spec is None:
            return compute()
        sources = source_files(modality, path)
        if not sources or not all(s.is_file() for s in sources):
            return compute()  # the reader raises the typed error naming the missing file
        return self.cache.get_or_compute(modality, sources, spec, compute)


def materialize(dataset: CohortDataset, workers: int | None = None, description: str | None = "reading studies",
                ) -> tuple[list[dict[str, Any]], list[QuarantineEntry]]:
    """Read every item once (in worker processes) and keep the preprocessed samples in memory.

    Contrastive pretraining revisits every study each epoch; decoding DICOM and
    resampling ECGs once instead of per epoch is what keeps a CPU demo fast.
    ``description`` None shows no progress bar (the caller shows its own).
    """
    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        persistent_workers=False, multiprocessing_context="fork" if workers else None)
    samples, quarantine = [], []
    with Progress(transient=True, disable=description is None) as progress:
        task = progress.add_task(description or "", total=len(dataset))
        for sample, problems in loader:
            samples.append(sample)
            quarantine.extend(problems)
            progress.advance(task)
    if dataset.cache is not None:
        dataset.cache.flush()  # entries computed in this process (workers flush as they exit)
    return samples, quarantine


def write_quarantine(entries: list[QuarantineEntry], path: Path) -> None:
    """Write the list of skipped files (possibly empty) as JSON, atomically."""
    write_json_atomic(path, [e.__dict__ for e in entries])


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the modalities present into packed tensors plus a presence mask.

    ``batch["cxr"]`` holds only the samples that have a CXR, in batch order;
    ``batch["mask"]["cxr"]`` is a ``(B,)`` bool tensor saying which those are. Reports
    (``report``, or each image's own ``report.<image>``) stay lists of strings.
    Absent modalities are never filled with zeros that could enter a loss.
    """
    batch: dict[str, Any] = {Field.MASK: {}}
    for key in input_keys(samples):
        values = [s[key] for s in samples if key in s]
        batch[key] = values if is_text(key) else torch.stack(values)
        batch[Field.MASK][key] = torch.tensor([key in s for s in samples])
    batch[Field.LABEL] = {k: torch.tensor([s[Field.LABEL][k] for s in samples]) for k in samples[0][Field.LABEL]}
    batch[Field.META] = [s[Field.META] for s in samples]
    return batch


def _present(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value
