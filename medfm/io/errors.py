"""Typed read errors. Each names the file and the reason, like their base class."""

from __future__ import annotations

from medfm.errors import MedfmReadError


class UnsupportedFormatError(MedfmReadError):
    """The file is readable but is not a format (or a variant) this reader handles."""


class CorruptFileError(MedfmReadError):
    """The file claims a supported format but its content is truncated, inconsistent or undecodable."""


class EmptyFileError(MedfmReadError):
    """The file has zero bytes, or a container with nothing in it."""


__all__ = ["CorruptFileError", "EmptyFileError", "MedfmReadError", "UnsupportedFormatError"]
