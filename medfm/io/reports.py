"""Free-text reports."""

from __future__ import annotations

from pathlib import Path

from medfm.errors import MedfmReadError


def read_report(path: str | Path) -> str:
    """Read a UTF-8 report and normalise its whitespace.

    Raises:
        MedfmReadError: the file is missing, not UTF-8, or empty.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedfmReadError(path, "file not found") from None
    except UnicodeDecodeError as err:
        raise MedfmReadError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    text = " ".join(text.split())
    if not text:
        raise MedfmReadError(path, "report is empty")
    return text
