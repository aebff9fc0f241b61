"""Atomic file writes: write a temporary sibling, then rename it over the target.

A crash or an exception mid-write leaves the previous file as it was, never a
half-written one; the temporary file is removed on failure. Also the digest that
checkpoints and indexes record for the files they write (:func:`sha256_file`).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place.

    Args:
        path: the file to create or replace.
        write: writes the complete content to the path it is given.
        durable: fsync the content before the rename, so a power loss cannot leave
            an empty file under the final name. Off only for files that can be
            regenerated (e.g. the synthetic cohort), where thousands of fsyncs cost time.
    """
    path = Path(path)
    # Unique per writer: DataLoader workers or torchrun ranks may write the same entry at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        apply_default_mode(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _process_umask() -> int | None:
    """This process's umask, read without changing it (``os.umask`` would race other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return None


_UMASK = _process_umask()


def apply_default_mode(path: Path) -> None:
    """Give a finished file the mode a plain ``open()`` would have.

    Some writers (safetensors) create their files 0600; a checkpoint beside a 0644
    ``config.json`` would then be unreadable to the rest of the group.
    """
    if _UMASK is not None:
        os.chmod(path, 0o666 & ~_UMASK)


def write_bytes_atomic(path: str | Path, data: bytes, durable: bool = True) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), durable)


def write_text_atomic(path: str | Path, text: str, durable: bool = True) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), durable)


def write_json_atomic(path: str | Path, data: Any, **dumps: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, **dumps))


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
