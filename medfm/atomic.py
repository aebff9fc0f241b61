"""Atomic file writes: write a temporary sibling, then rename it over the target.

A crash or an exception mid-write leaves the previous file as it was, never a
half-written one; the temporary file is removed on failure. Also the digest that
checkpoints and indexes record for the files they write (:func:`sha256_file`), and a set of files
replaced together (:func:`commit_together`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
            an empty file under the final name, and the folder after it, so the rename
            itself survives one. Off only for files that can be regenerated (e.g. the
            synthetic cohort), where thousands of fsyncs cost time.
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
    if durable:
        fsync_directory(path.parent)
    return path


def fsync_tree(folder: str | Path) -> None:
    """Flush every file under ``folder`` and every folder's entries: for trees written by other code
    (peft's adapter files, pydicom's instances) before they are renamed into place."""
    folder = Path(folder)
    if os.name != "posix":
        return
    folders = [folder]
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            continue
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for directory in reversed(folders):
        fsync_directory(directory)


def fsync_directory(directory: str | Path) -> None:
    """Flush a folder's entries (renames, creations) to disk; a no-op where folders cannot be opened (Windows)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


STAGING = ".staging"
COMMITTED = "COMMITTED"


def commit_together(directory: Path, write: Callable[[Path], None]) -> None:
    """Replace several files of ``directory`` together: ``write(staging)`` writes the complete new set, which then
    moves in. A kill at any moment leaves the previous set or the new one (after :func:`recover_together`),
    never a mix: a checkpoint's weights, the config recording their hashes and the training state must agree.

    The files are durable (:func:`fsync_tree`) before the ``COMMITTED`` mark; after the mark, each
    top-level entry is moved into place by a rename, which :func:`recover_together` redoes after a kill.
    """
    directory = Path(directory)
    staging = directory / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    fsync_tree(staging)  # files written by other code (peft adapters) are durable too before the mark
    names = sorted(p.name for p in staging.iterdir())
    write_text_atomic(staging / COMMITTED, "\n".join(names) + "\n")
    _roll_forward(directory)


def recover_together(directory: Path) -> bool:
    """Finish a committed set left by a kill, or drop an uncommitted one; True if anything was done."""
    staging = Path(directory) / STAGING
    if not staging.is_dir():
        return False
    if (staging / COMMITTED).is_file():
        _roll_forward(Path(directory))
    else:
        shutil.rmtree(staging)
    return True


def _roll_forward(directory: Path) -> None:
    """Move every committed entry into place; each step can be redone after a kill at any point."""
    staging = directory / STAGING
    for name in (staging / COMMITTED).read_text().split():
        source, target = staging / name, directory / name
        if not source.exists():
            continue  # moved before the kill
        if source.is_dir() and target.exists():
            shutil.rmtree(target)  # a kill mid-way leaves the source to move on the next try
        os.replace(source, target)
    fsync_directory(directory)  # the renames are durable before the staging folder and its mark go
    shutil.rmtree(staging)
