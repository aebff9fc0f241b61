"""The audit log: chained records, each kind of tampering named by `medfm audit verify`, what the service writes."""

from __future__ import annotations

import hashlib
import json
import logging

import pydicom
import pytest
from fastapi.testclient import TestClient

from medfm.cli import main
from medfm.errors import MedfmError
from medfm.service import ServiceSettings, create_app
from medfm.service import audit as audit_module
from medfm.service.audit import GENESIS, AuditChainError, AuditLog, canonical, head_path, verify
from tests.service.conftest import SCOPED, SECOND, bearer, scoped_tokens


def write_log(path, n=6) -> list[bytes]:
    log = AuditLog(path)
    for i in range(n):
        log.record(token="radiology", action="search", query_kind="text", query_modality="report",
                   result_ids=[i, i + 1], query_chars=10 + i)
    log.close()
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def resealed(line: bytes, **changes) -> bytes:
    """The line edited and its own hash recomputed (what a careful forger does)."""
    record = {**json.loads(line), **changes}
    record.pop("hash")
    record["hash"] = hashlib.sha256(canonical(record)).hexdigest()
    return canonical(record) + b"\n"


def verify_cli(path, capsys) -> tuple[int, str]:
    code = main(["audit", "verify", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_records_chain_from_the_genesis_value_and_verify(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    records = [json.loads(line) for line in lines]
    assert records[0]["prev"] == GENESIS
    for before, record in zip(lines, records[1:], strict=False):
        assert record["prev"] == hashlib.sha256(before.rstrip(b"\n")).hexdigest()
    assert {"time", "token", "action", "query_kind", "query_modality", "result_ids", "prev", "hash"} <= set(records[0])
    assert verify(path).records == 6 and verify(path).head_checked
    code, out = verify_cli(path, capsys)
    assert code == 0 and out.startswith("6 records, chain intact")


def test_reopening_continues_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    write_log(path, 2)
    assert verify(path).records == 5


def tampered(lines: list[bytes], how: str) -> list[bytes]:
    lines = list(lines)
    if how == "edited":
        lines[2] = lines[2].replace(b'"radiology"', b'"someone"')
    elif how == "edited and resealed":
        lines[2] = resealed(lines[2], result_ids=[99])
    elif how == "deleted":
        del lines[2]
    elif how == "swapped":
        lines[2], lines[3] = lines[3], lines[2]
    elif how == "first deleted":
        del lines[0]
    elif how == "truncated mid-line":
        lines[-1] = lines[-1][:40]
    elif how == "garbage":
        lines[2] = b"not json\n"
    elif how == "replayed":
        lines.insert(3, lines[2])
    return lines


@pytest.mark.parametrize(("how", "line", "words"), [
    ("edited", 3, "edited: its content does not match its hash"),
    ("edited and resealed", 4, "the line before it is missing"),
    ("deleted", 3, "the line before it is missing: a line was deleted between lines 2 and 3"),
    ("swapped", 3, "reordered: it follows line 4"),
    ("first deleted", 1, "deleted from the start"),
    ("truncated mid-line", 6, "truncated"),
    ("garbage", 3, "edited: not a JSON record"),
    ("replayed", 4, "reordered or repeated"),
])
def test_tampering_names_the_first_failing_line_and_why(tmp_path, capsys, how, line, words):
    path = tmp_path / "audit.jsonl"
    rewrite(path, tampered(write_log(path), how))
    with pytest.raises(AuditChainError, match=f"line {line}: ") as caught:
        verify(path)
    assert words in str(caught.value)
    code, out = verify_cli(path, capsys)
    assert code == 2 and f"line {line}:" in out and "chain intact" not in out


def test_whole_lines_cut_from_the_end_are_caught_by_the_head_file(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    rewrite(path, lines[:-2])
    with pytest.raises(AuditChainError, match="line 5: truncated: the head file records 6 records, the log holds 4"):
        verify(path)
    head_path(path).unlink()  # without its head the chain alone cannot tell: said, not hidden
    code, out = verify_cli(path, capsys)
    assert code == 0 and "4 records, chain intact" in out and "no head file" in out


def test_a_tail_rewritten_past_the_head_is_caught(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    rewrite(path, [*lines[:-1], resealed(lines[-1], result_ids=[])])
    with pytest.raises(AuditChainError, match="line 6: differs from the last record the head file names"):
        verify(path)


def test_a_broken_log_is_not_appended_to_and_one_writer_at_a_time(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    first = AuditLog(path)
    with pytest.raises(MedfmError, match="another process is writing"):
        AuditLog(path)
    first.close()
    rewrite(path, tampered(lines, "deleted"))
    with pytest.raises(AuditChainError, match="move the log aside"):
        AuditLog(path)
    assert path.read_bytes() == b"".join(tampered(lines, "deleted"))


def test_each_record_is_one_write_and_one_fsync(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    synced = []
    monkeypatch.setattr(audit_module.os, "fsync", lambda fd: synced.append(fd))
    log.record(token="t", action="case", query_kind="details", query_modality=None, result_ids=[3], case_id=3)
    assert synced == [log._file.fileno()]
    log.close()


# -- what the service records ------------------------------------------------------------------------


@pytest.fixture
def audited(two_cohorts_search, tmp_path):
    path = tmp_path / "audit.jsonl"
    settings = ServiceSettings(tokens=scoped_tokens(), audit_log=path)
    with TestClient(create_app(two_cohorts_search, settings)) as client:
        yield client, path


def read_records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_searches_and_case_views_are_recorded_by_token_name_without_secrets_text_or_identifiers(
        audited, studies, two_cohorts_search, caplog):
    client, path = audited
    caplog.set_level(logging.DEBUG)
    text = "pleural effusion in Jane Doe"
    by_text = client.post("/api/search", data={"text": text, "k": "4", "site": "site_a"}, headers=bearer("demo-only"))
    by_file = client.post("/api/search", files={"file": ("x.dcm", studies["cxr"].read_bytes())}, data={"k": "3"},
                          headers=bearer("everything"))
    case_id = by_text.json()["results"][0]["id"]
    client.get(f"/api/cases/{case_id}", headers=bearer("demo-only"))
    client.get(f"/api/cases/{case_id}/thumbnail", headers=bearer("demo-only"))
    other = two_cohorts_search.index.db.execute("SELECT id FROM cases WHERE cohort = ?", (SECOND,)).fetchone()[0]
    assert client.get(f"/api/cases/{other}", headers=bearer("demo-only")).status_code == 404
    assert client.get("/api/cases/1", headers={"Authorization": "Bearer wrong"}).status_code == 401

    records = read_records(path)
    assert [(r["token"], r["action"], r["query_kind"]) for r in records] == [
        ("demo-only", "search", "text"), ("everything", "search", "file"), ("demo-only", "case", "details"),
        ("demo-only", "case", "thumbnail"), ("demo-only", "case", "details")]
    assert records[0]["result_ids"] == [hit["id"] for hit in by_text.json()["results"]]
    assert records[0]["query_chars"] == len(text) and records[0]["filters"] == ["site"]
    assert records[1]["result_ids"] == [hit["id"] for hit in by_file.json()["results"]]
    assert records[1]["query_modality"] == "cxr" and records[1]["query_chars"] is None
    assert records[2]["result_ids"] == records[3]["result_ids"] == [case_id]
    assert records[4]["result_ids"] == [] and records[4]["case_id"] == other  # the refused view is recorded too
    assert verify(path).records == 5

    written = path.read_text() + head_path(path).read_text()
    header = pydicom.dcmread(studies["cxr"], stop_before_pixels=True)
    never = [secret for secret, _ in SCOPED.values()] + ["wrong", "Jane", "effusion", str(header.PatientID),
                                                        str(header.PatientName)]
    never += [row[0] for row in two_cohorts_search.index.db.execute("SELECT DISTINCT patient_key FROM cases")]
    never += [row[0] for row in two_cohorts_search.index.db.execute("SELECT study_id FROM cases")]
    for value in never:
        assert value not in written, value
    for secret, _ in SCOPED.values():
        assert secret not in caplog.text


def test_nothing_is_served_when_its_record_cannot_be_written(audited, monkeypatch, caplog):
    client, path = audited

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit_module.os, "fsync", full_disk)
    response = client.post("/api/search", data={"text": "effusion"}, headers=bearer("everything"))
    assert response.status_code == 503 and "results" not in response.text
    monkeypatch.undo()
    assert client.get("/api/cases/0", headers=bearer("everything")).status_code == 503  # stays closed
    assert "No space left on device" in caplog.text
