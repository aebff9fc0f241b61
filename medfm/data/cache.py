"""On-disk cache of preprocessed tensors, keyed by file content and transform config.

Decoding a DICOM and resampling it costs milliseconds to seconds; reading the
finished tensor back costs microseconds. An entry's key is the SHA-256 of

    (cache format, modality, the transform's input spec, the source files' content)

so a changed file or a changed transform gets a new key, and an old entry is never
served for it. Hashing a large series on every access would cost a read of every
byte, so a small index remembers each file's (size, mtime_ns) → content digest and
re-hashes only when those change, the trade-off make and rsync accept: a file edited
in place with its size and modification time restored is not noticed.

Entries and index records are written atomically under per-writer temp names, so
several DataLoader workers or torchrun ranks can share one cache folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medfm.atomic import write_atomic, write_json_atomic

CACHE_FORMAT = "medfm-preprocess/1"


class PreprocessCache:
    """A folder of preprocessed tensors.

    Args:
        directory: where entries live (created on first write).

    Attributes:
        hits, misses: counts since construction, for progress reports and tests.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, modality: str, sources: Sequence[Path], spec: Mapping[str, Any],
                       compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Return the cached tensor for ``sources`` under ``spec``, computing and storing it on a miss.

        Args:
            modality: the modality key (entries of different modalities never collide).
            sources: every file the tensor is computed from (e.g. a WFDB header and its signal files).
            spec: the transform's input spec (image size, spacing, rate...); JSON-serialisable.
            compute: reads and preprocesses the sources; called only on a miss.
        """
        path = self.entry_path(modality, sources, spec)
        if path.is_file():
            try:
                tensor = load_file(str(path))["value"]
                self.hits += 1
                return tensor
            except (SafetensorError, OSError, KeyError):
                pass  # a damaged entry is recomputed and replaced, never served
        tensor = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        value = tensor.detach().contiguous()
        write_atomic(path, lambda tmp: save_file({"value": value}, str(tmp)), durable=False)
        self.misses += 1
        return tensor

    def entry_path(self, modality: str, sources: Sequence[Path], spec: Mapping[str, Any]) -> Path:
        key = hashlib.sha256()
        key.update(json.dumps([CACHE_FORMAT, str(modality), dict(spec)], sort_keys=True).encode())
        for source in sources:
            key.update(self.content_digest(Path(source)).encode())
        digest = key.hexdigest()
        return self.directory / "entries" / digest[:2] / f"{digest}.safetensors"

    def content_digest(self, path: Path) -> str:
        """SHA-256 of a file's bytes, re-read only when its size or mtime changed."""
        stat = path.stat()
        record_path = self.directory / "index" / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()}.json"
        try:
            record = json.loads(record_path.read_text())
            if record["size"] == stat.st_size and record["mtime_ns"] == stat.st_mtime_ns:
                return record["sha256"]
        except (OSError, ValueError, KeyError):
            pass
        digest = _sha256_file(path)
        record_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record_path, {"path": str(path), "size": stat.st_size,
                                        "mtime_ns": stat.st_mtime_ns, "sha256": digest})
        return digest


def wfdb_record_files(record: Path) -> list[Path]:
    """The header and every signal file of a WFDB record (``record.hea``, ``record.dat``, ``record.d0``...)."""
    record = Path(record)
    files = sorted(p for p in record.parent.glob(f"{record.name}.*") if p.is_file())
    return files or [record.with_name(record.name + ".hea")]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
