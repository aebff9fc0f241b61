"""Reading weights others wrote: safetensors only, checked against the SHA-256 recorded when written.

A pickle file (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) can run arbitrary code when
it is loaded, so medfm refuses one unless the caller passes ``trust_pickle=True``; even
then it is read with ``torch.load(weights_only=True)``, which rebuilds tensors and
containers only. This module holds the one ``torch.load`` of the package
(``tests/test_no_unsafe_loading.py`` checks that).

Every weights file medfm writes has its SHA-256 recorded beside it (``config.json`` or
``train_state.json``, under ``files``); the bytes are hashed as they are read and a
truncated or altered file is refused before it is parsed. The record is integrity, not
authenticity: whoever can rewrite a file can rewrite its recorded hash too.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes

from medfm.atomic import sha256_file
from medfm.errors import CheckpointError, first_line

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FILES = "files"  # key of the {relative path: SHA-256} record in a checkpoint's JSON


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint written before medfm recorded file hashes: loaded, but its integrity is unchecked."""


def is_pickle(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES


def pickle_refusal(path: Path) -> str:
    """The one-line reason a pickle file is not loaded."""
    return (f"{path}: is a pickle file, which can run code when loaded; medfm loads safetensors only; "
            "convert it, or pass trust_pickle=True to load it with torch.load(weights_only=True)")


def weights_file(folder: Path, name: str, trust_pickle: bool = False) -> Path | None:
    """``folder / name`` if it exists; else the folder's one pickle weights file, if trusted.

    Returns:
        The file to load, or None when the folder holds neither.

    Raises:
        CheckpointError: the folder holds pickle weights instead of ``name`` and
            ``trust_pickle`` is off, or several pickle files (which one is meant is unclear).
    """
    if (folder / name).is_file():
        return folder / name
    pickles = sorted(p for p in folder.glob("*") if p.is_file() and is_pickle(p)) if folder.is_dir() else []
    if not pickles:
        return None
    if not trust_pickle:
        raise CheckpointError(pickle_refusal(pickles[0]))
    if len(pickles) > 1:
        raise CheckpointError(f"{folder}: holds {', '.join(p.name for p in pickles)} instead of {name}; "
                              "pass the one to load as the path")
    return pickles[0]


def record_of(directory: Path, files: list[Path]) -> dict[str, str]:
    """``{path relative to directory (POSIX): SHA-256}`` of files just written."""
    return {path.relative_to(directory).as_posix(): sha256_file(path) for path in files}


def checked_record(directory: Path, record: object, where: Path) -> dict[str, str] | None:
    """A ``files`` record read from ``where``, validated: relative paths inside ``directory``, hex digests.

    Returns:
        The record, or None for a checkpoint written before hashes were recorded (with an
        :class:`UnverifiedCheckpointWarning`).

    Raises:
        CheckpointError: the record is not a mapping, an entry escapes the folder, or a
            digest is not 64 hex digits.
    """
    if record is None:
        warnings.warn(f"{where}: no file hashes recorded (written by a medfm before they were); loading its files "
                      "unverified; save it again to record them", UnverifiedCheckpointWarning, stacklevel=3)
        return None
    if not isinstance(record, dict):
        raise CheckpointError(f"{where}: '{FILES}' must map file names to SHA-256 digests")
    for name, digest in record.items():
        posix = PurePosixPath(name)
        if not posix.parts or posix.is_absolute() or ".." in posix.parts:
            raise CheckpointError(f"{where}: '{FILES}' names {name!r}, which is not a file inside {directory}")
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")):
            raise CheckpointError(f"{where}: '{FILES}' entry {name!r} is not a SHA-256 hex digest")
    return record


def expected_sha256(record: dict[str, str] | None, directory: Path, path: Path, where: Path) -> str | None:
    """The SHA-256 ``record`` (read from ``where``) holds for ``path``.

    Returns:
        The digest; None for a legacy checkpoint (``record`` is None) or a pickle file
        (medfm never writes one, so none is recorded; loading it takes ``trust_pickle``).

    Raises:
        CheckpointError: the checkpoint records hashes but none for ``path``.
    """
    if record is None or is_pickle(path):
        return None
    name = path.relative_to(directory).as_posix()
    if name not in record:
        raise CheckpointError(f"{path}: no SHA-256 recorded for it in {where.name}; refusing a file the "
                              "checkpoint did not list")
    return record[name]


def read_verified(path: Path, sha256: str | None, where: Path | None = None) -> bytes:
    """The bytes of ``path``, refused if they do not hash to ``sha256`` (None: not checked).

    Raises:
        CheckpointError: the file is missing or unreadable, or its hash differs.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: checkpoint file unreadable ({err.strerror or err})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        recorded_in = f" in {where.name}" if where is not None else ""
        raise CheckpointError(f"{path}: does not match the SHA-256 recorded{recorded_in} when it was written "
                              "(truncated, altered, or its save was interrupted); refusing to load it")
    return data


def load_tensors(path: Path, sha256: str | None = None, where: Path | None = None,
                 trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, verified against ``sha256``; a pickle file only if trusted.

    Args:
        sha256: the digest recorded when the file was written (None: legacy, unchecked).
        where: the JSON file that recorded it, named in the error.
        trust_pickle: load a pickle file with ``torch.load(weights_only=True)`` instead of
            refusing it. medfm never writes pickle files, so no hash is checked for one.

    Raises:
        CheckpointError: a pickle file without ``trust_pickle``, a hash mismatch, a file
            that is not valid safetensors, or a pickle that is not a flat ``{name: tensor}``.
    """
    if is_pickle(path):
        if not trust_pickle:
            raise CheckpointError(pickle_refusal(path))
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001  (the unpickler raises many types; each becomes one line)
            raise CheckpointError(f"{path}: not loadable with torch.load(weights_only=True) "
                                  f"({first_line(err)})") from None
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
        return state
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: not a .safetensors file; medfm loads safetensors only")
    data = read_verified(path, sha256, where)
    try:
        return load_safetensors_bytes(data)
    except (SafetensorError, ValueError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors file ({first_line(err)})") from None
