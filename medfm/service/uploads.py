"""An uploaded query file on disk, and error messages about it that reveal nothing of the server.

The client's file name is never used as a path: the upload is saved as ``upload`` plus
the suffix its first bytes call for (a zip must end in ``.zip`` to be unpacked; the
readers go by content for the rest), inside a fresh temporary folder.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

from fastapi import HTTPException

from medfm.errors import MedfmError

# First bytes → suffix; anything else is saved as DICOM and left to the DICOM reader to judge.
_MAGIC = ((b"PK\x03\x04", ".zip"), (b"PK\x05\x06", ".zip"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"))
_CHUNK = 1 << 20


def save_upload(source: BinaryIO, folder: Path, max_bytes: int) -> Path:
    """Copy an uploaded file into ``folder`` as ``upload.<suffix>``; returns its path.

    Raises:
        HTTPException: 413 past ``max_bytes``, 422 for an empty file.
    """
    head = source.read(8)
    if not head:
        raise HTTPException(422, "the uploaded file is empty")
    suffix = next((s for magic, s in _MAGIC if head.startswith(magic)), ".dcm")
    path = folder / f"upload{suffix}"
    written = len(head)
    with path.open("wb") as out:
        out.write(head)
        while block := source.read(_CHUNK):
            written += len(block)
            if written > max_bytes:
                raise HTTPException(413, f"uploaded file over the limit of {max_bytes} bytes")
            out.write(block)
    if written > max_bytes:
        raise HTTPException(413, f"uploaded file over the limit of {max_bytes} bytes")
    return path


def public_message(err: MedfmError, upload: Path | None = None) -> str:
    """``str(err)`` with the server's temporary paths replaced by the upload's name (``upload.dcm: ...``)."""
    text = str(err)
    if upload is None:
        return text
    for folder in sorted({str(upload.parent), os.path.realpath(upload.parent)}, key=len, reverse=True):
        text = text.replace(folder + os.sep, "")
    for tmp in sorted({tempfile.gettempdir(), os.path.realpath(tempfile.gettempdir())}, key=len, reverse=True):
        # CaseSearch unpacks a zip into a temporary folder of its own: name its members inside the upload.
        text = re.sub(re.escape(tmp + os.sep) + r"medfm-query-[^/\s'\"]+", upload.name, text)
        text = re.sub(re.escape(tmp + os.sep) + r"[^\s'\"]*", upload.name, text)
    return text
