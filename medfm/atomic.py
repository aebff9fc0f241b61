"""Atomic file writes: write a temporary sibling, then rename it over the target.

A crash or an exception mid-write leaves the previous file as it was, never a
half-written one; the temporary file is removed on failure.
"""

from __future__ import annotations

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
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes, durable: bool = True) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), durable)


def write_text_atomic(path: str | Path, text: str, durable: bool = True) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), durable)


def write_json_atomic(path: str | Path, data: Any, **dumps: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, **dumps))
