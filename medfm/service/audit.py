"""The audit log: who searched, and which cases were served to whom; append-only and hash-chained.

One JSON line per search or case view (``medfm serve --audit-log PATH``)::

    {"action": "search", "filters": ["site"], "hash": "…", "k": 10, "prev": "…", "query_chars": 27,
     "query_kind": "text", "query_modality": "report", "result_ids": [12, 4, 31], "time": "…", "token": "radiology"}

``prev`` is the SHA-256 of the previous line's bytes (the first line's is ``GENESIS``);
``hash`` is the SHA-256 of the record's canonical JSON without ``hash`` (sorted keys, no
spaces, ASCII). Editing a line breaks its own ``hash``; deleting, inserting or moving one
breaks the next line's ``prev``; a tail cut mid-line is not JSON. Lines removed whole from
the end leave no gap in the chain, so after each record ``PATH.head`` is replaced with the
record count and the last line's SHA-256: a log shorter than its head, or one whose line
at the head's count differs from it, fails. (A chain without a secret key proves the log
is internally whole; someone able to rewrite both files from the start can forge both:
keep ``medfm audit verify``'s last hash somewhere else to anchor it.)

What is never recorded: a token's secret (only its name), a patient identifier or key, a
study id (results are the index's case ids), report text, and the text of a text query,
which could name a patient; its length is recorded instead (a hash of a short text could
be reversed by hashing guesses, a length names no one). Filters are recorded by name only,
since ``site`` and ``device`` are free text from the client.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medfm.atomic import write_text_atomic
from medfm.errors import MedfmError

GENESIS = "0" * 64
FIELDS = ("time", "token", "action", "query_kind", "query_modality", "result_ids", "prev", "hash")


class AuditChainError(MedfmError):
    """An audit log whose chain is broken: the message names the first failing line and why."""


@dataclass(frozen=True)
class Verified:
    """An intact audit log: how many records, the SHA-256 of its last line, and whether a head file vouched for it."""

    records: int
    last: str
    head_checked: bool


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def line_sha256(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


class AuditLog:
    """An open audit log this process appends to; one writer per file (an exclusive ``flock``).

    Opening verifies the existing chain and refuses a broken one: records appended after a
    break would chain from a line nobody can vouch for.

    Raises:
        AuditChainError: the existing log fails verification.
        MedfmError: another process holds the log open for writing.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MedfmError(f"{self.path}: another process is writing this audit log") from None
        self._file = os.fdopen(fd, "ab", buffering=0)
        try:
            state = verify(self.path)
        except AuditChainError as err:
            self._file.close()
            raise AuditChainError(f"{err}; move the log aside (keep it as evidence) to start a new one") from None
        self._records, self._prev = state.records, state.last
        self._lock = threading.Lock()
        self._failed: str | None = None

    def record(self, *, token: str, action: str, query_kind: str, query_modality: str | None,
               result_ids: list[int], **details: Any) -> None:
        """Append one record (one ``write``, then ``fsync``) and move the head file on.

        Raises:
            MedfmError: the log cannot be written (then or at an earlier record): the caller
                must not serve what it would have recorded.
        """
        with self._lock:
            if self._failed:
                raise MedfmError(f"audit log unavailable since an earlier write failed ({self._failed})")
            record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "token": token,
                      "action": action, "query_kind": query_kind, "query_modality": query_modality,
                      "result_ids": [int(i) for i in result_ids], **details, "prev": self._prev}
            record["hash"] = hashlib.sha256(canonical(record)).hexdigest()
            line = canonical(record)
            try:
                self._file.write(line + b"\n")
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as err:
                self._failed = err.strerror or type(err).__name__
                raise MedfmError(f"audit log {self.path.name}: write failed ({self._failed})") from None
            self._records += 1
            self._prev = line_sha256(line)
            # The head may lag the log by one record after a crash (verify accepts that), never lead it.
            write_text_atomic(head_path(self.path), json.dumps({"records": self._records, "last": self._prev}),
                              durable=False)

    def close(self) -> None:
        self._file.close()


def verify(path: str | Path) -> Verified:
    """Walk the chain of an audit log (a missing file is an empty log).

    Raises:
        AuditChainError: ``<path> line N: <why>`` for the first line that fails.
    """
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the log ends with a newline, as every complete record does
    hashes = [line_sha256(line) for line in lines]
    position = {digest: number for number, digest in enumerate(hashes, 1)}
    prev = GENESIS
    for number, line in enumerate(lines, 1):
        problem = _line_problem(line, prev, number, position)
        if problem:
            raise AuditChainError(f"{path} line {number}: {problem}")
        prev = hashes[number - 1]
    if tail:
        raise AuditChainError(f"{path} line {len(lines) + 1}: truncated: the last record ends without a newline "
                              "(its write was cut off, or the log was cut mid-line)")
    head_checked = _check_head(path, hashes)
    return Verified(len(lines), prev, head_checked)


def _line_problem(line: bytes, prev: str, number: int, position: dict[str, int]) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return "edited: not a JSON record"
    if not isinstance(record, dict):
        return "edited: not a JSON record"
    missing = [field for field in FIELDS if field not in record]
    if missing:
        return f"edited: fields missing ({', '.join(missing)})"
    content = {k: v for k, v in record.items() if k != "hash"}
    if hashlib.sha256(canonical(content)).hexdigest() != record["hash"]:
        return "edited: its content does not match its hash"
    if record["prev"] == prev:
        return None
    if number == 1:
        return "does not start the chain: lines were deleted from the start of the log"
    if record["prev"] == GENESIS:
        return "starts a new chain: the log was restarted here, or lines of another log were spliced in"
    follows = position.get(record["prev"])
    if follows is not None and follows >= number:
        return f"reordered: it follows line {follows}, which comes after it"
    if follows is not None:
        return f"reordered or repeated: it follows line {follows}, not line {number - 1}"
    return (f"the line before it is missing: a line was deleted between lines {number - 1} and {number}, "
            f"or line {number - 1} was edited and its hash recomputed")


def _check_head(path: Path, hashes: list[str]) -> bool:
    """Whether the head file vouched for the log; raises if it contradicts it."""
    head = head_path(path)
    if not head.exists():
        return False
    try:
        recorded = json.loads(head.read_text())
        records, last = int(recorded["records"]), str(recorded["last"])
    except (OSError, ValueError, KeyError, TypeError):
        raise AuditChainError(f"{head}: unreadable head file") from None
    if records > len(hashes):
        raise AuditChainError(f"{path} line {len(hashes) + 1}: truncated: the head file records {records} records, "
                              f"the log holds {len(hashes)} (lines were removed from its end)")
    if records and hashes[records - 1] != last:
        raise AuditChainError(f"{path} line {records}: differs from the last record the head file names "
                              "(the log was rewritten)")
    return True
