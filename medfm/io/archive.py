"""Unpacking an uploaded zip (a DICOM series, a WFDB record) without trusting it.

A member may not name an absolute path, climb out with ``..``, or be a link; the
archive may not hold more than ``max_files`` members or expand past ``max_bytes``,
counted on the bytes actually written (a zip's declared sizes can lie) and checked
against the declared ones before anything is written (a zip bomb is refused up front).
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from medfm.errors import MedfmReadError

MAX_FILES = 4096
MAX_BYTES = 2 * 1024**3
_CHUNK = 1 << 20


class ArchiveError(MedfmReadError):
    """A zip that is corrupt, too large once expanded, or names a path outside its folder."""


def extract_zip(path: str | Path, dest: str | Path, max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES) -> Path:
    """Extract ``path`` into the existing folder ``dest``; returns ``dest``.

    Raises:
        ArchiveError: not a zip, unsafe member names, links, too many members, or too many bytes.
    """
    path, dest = Path(path), Path(dest).resolve()
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise ArchiveError(path, f"not a readable zip archive ({type(err).__name__}: {err})") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > max_files:
            raise ArchiveError(path, f"{len(members)} files, more than the limit of {max_files}")
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise ArchiveError(path, f"expands to {declared} bytes, more than the limit of {max_bytes}")
        targets = [(m, _safe_target(path, dest, m)) for m in members]
        written = 0
        for member, target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(member) as source, target.open("wb") as out:
                    while block := source.read(_CHUNK):
                        written += len(block)
                        if written > max_bytes:
                            raise ArchiveError(path, f"expands past the limit of {max_bytes} bytes")
                        out.write(block)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError,
                    zlib.error) as err:  # RuntimeError: an encrypted member; ValueError: a bad name or header
                raise ArchiveError(path, f"member {member.filename!r} cannot be extracted ({err})") from None
    return dest


def _safe_target(path: Path, dest: Path, member: zipfile.ZipInfo) -> Path:
    name = PurePosixPath(member.filename.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or not name.parts:
        raise ArchiveError(path, f"member {member.filename!r} names a path outside the archive's folder")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise ArchiveError(path, f"member {member.filename!r} is a symbolic link")
    target = (dest / Path(*name.parts)).resolve()
    if not target.is_relative_to(dest):
        raise ArchiveError(path, f"member {member.filename!r} names a path outside the archive's folder")
    return target
