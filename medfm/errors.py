"""Typed errors. Each names the file (or config key) at fault and the reason."""

from __future__ import annotations

from pathlib import Path


class MedfmError(Exception):
    """Base class of every error medfm raises on purpose."""


def first_line(err: BaseException) -> str:
    """The first line of another library's error message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class ConfigError(MedfmError):
    """A YAML config is missing, malformed, or fails validation.

    The message is one line: ``file: key: what was expected``.
    """

    def __init__(self, path: str | Path | None, key: str | None, reason: str):
        self.path = None if path is None else Path(path)
        self.key = key
        self.reason = reason
        parts = [str(p) for p in (self.path, key) if p]
        super().__init__(": ".join([*parts, reason]))


class MedfmReadError(MedfmError):
    """A data file could not be read into a trustworthy array."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class RegistryError(MedfmError):
    """A name is registered twice, or looked up but never registered."""


class CheckpointError(MedfmError):
    """A checkpoint directory is incomplete or does not match the model asked for."""


class InputContractError(MedfmError):
    """An input does not match what the model was trained on (shape, channels, length, leads).

    The message names the modality and says what was expected and what was given.
    """
