"""Identifiers planted in headers and report text reach no output, log line or HTTP response
(evaluation/bench/planted_identifiers.py; its full-size figures are in docs/reliability.md)."""

from __future__ import annotations

import sys

from .conftest import REPO

sys.path.insert(0, str(REPO / "evaluation/bench"))
import planted_identifiers  # noqa: E402


def test_planted_identifiers_are_found_nowhere(tmp_path):
    result = planted_identifiers.run(tmp_path, patients=16)
    assert result["identifiers_planted"] > 150 and result["places"] > 100
    assert {"search by cxr DICOM", "search by CT series zip", "search by ECG zip", "search by text"} <= \
        set(result["http_responses"])
    assert any(name.startswith("case ") for name in result["http_responses"])
    assert {".sqlite", ".html", ".pdf", ".parquet", "printed and logged"} <= set(result["places_scanned"])
    assert result["hits"] == []


def test_the_scan_finds_what_is_left_in(tmp_path):
    # The same corpus with the report scrubber switched off: the scan must see the leak, or it proves nothing.
    import medfm.io.reports as reports

    original = reports.scrub_report
    reports.scrub_report = lambda text, known=(): text
    reports._scrubbed.cache_clear()  # reports scrubbed by an earlier test would be served from the memo
    try:
        result = planted_identifiers.run(tmp_path, patients=16)
    finally:
        reports.scrub_report = original
        reports._scrubbed.cache_clear()
    assert any("cases.sqlite" in hit for hit in result["hits"])
