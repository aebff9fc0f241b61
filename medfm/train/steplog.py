"""Per-step metrics: a JSONL file always, TensorBoard when it is installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medfm.atomic import write_text_atomic

LOG_NAME = "train_log.jsonl"


class StepLog:
    """Append one JSON line per optimizer step, flushed so a killed run loses nothing written.

    On resume the lines of steps after the checkpoint are dropped first: those steps
    are about to be trained again, and the log should read as one uninterrupted run.
    """

    def __init__(self, directory: Path, resume_step: int):
        self.path = Path(directory) / LOG_NAME
        kept = [line for line in _lines(self.path) if _step_of(line) is not None and _step_of(line) <= resume_step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self._file = self.path.open("a", encoding="utf-8")
        self._tensorboard = _tensorboard_writer(Path(directory) / "tensorboard")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self._tensorboard.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_step_log(directory: Path) -> list[dict[str, Any]]:
    """The records of a run's ``train_log.jsonl``, in order."""
    return [json.loads(line) for line in _lines(Path(directory) / LOG_NAME)]


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _step_of(line: str) -> int | None:
    """The step of one line, or None for a line a kill cut short."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _tensorboard_writer(directory: Path):
    """A SummaryWriter, or None: tensorboard is optional and never installed for you."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(directory))
