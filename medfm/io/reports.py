"""Free-text reports, and their sections (FINDINGS, IMPRESSION, ...)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from medfm.errors import MedfmReadError
from medfm.io.deid_text import scrub_report

# Heading as written (upper case, any spacing) → section key. Longer names first so that
# "CLINICAL HISTORY" is not read as "HISTORY".
SECTION_HEADINGS = {
    "CLINICAL HISTORY": "history",
    "CLINICAL INDICATION": "indication",
    "CLINICAL INFORMATION": "indication",
    "REASON FOR EXAMINATION": "indication",
    "REASON FOR EXAM": "indication",
    "EXAMINATION": "examination",
    "EXAM": "examination",
    "INDICATION": "indication",
    "INDICATIONS": "indication",
    "HISTORY": "history",
    "COMPARISON": "comparison",
    "COMPARISONS": "comparison",
    "TECHNIQUE": "technique",
    "FINDINGS": "findings",
    "IMPRESSION": "impression",
    "IMPRESSIONS": "impression",
    "CONCLUSION": "impression",
    "RECOMMENDATION": "recommendation",
    "RECOMMENDATIONS": "recommendation",
}

_NAMES = "|".join(
    name.replace(" ", r"\s+") for name in sorted(SECTION_HEADINGS, key=len, reverse=True)
)
_CANDIDATE = re.compile(rf"\b(?P<name>{_NAMES})[ \t]*:", re.IGNORECASE)


def _is_heading(text: str, match: re.Match) -> bool:
    """A candidate is a heading at the start of the text, after a sentence end (". FINDINGS:"),
    or at a line start when written in capitals or after a blank line; a wrapped line that
    happens to start with "history:" mid-sentence is not one."""
    before = text[: match.start()]
    stripped = before.rstrip()
    if not stripped or stripped[-1] in ".!?":
        return True
    line_start = before[before.rfind("\n") + 1 :].strip() == ""
    if not line_start:
        return False
    blank_line_before = before[len(stripped) :].count("\n") >= 2
    return match.group("name").isupper() or blank_line_before


def read_report(path: str | Path) -> str:
    """Read a UTF-8 report, remove its identifiers (:func:`medfm.io.deid_text.scrub_report`), normalise whitespace.

    Scrubbed here, where every report enters medfm, so no identifier in a report's text reaches an
    embedding, the case index, the search service or a validation report.

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
    text = _scrubbed(text)
    if not text:
        raise MedfmReadError(path, "report is empty")
    return text


# Training reads every report again each epoch, and the scrubber's regexes cost more than the read
# (about 13% of a warm sample's read time in the demo); scrubbing is a pure function of the text.
@functools.lru_cache(maxsize=16384)
def _scrubbed(text: str) -> str:
    return " ".join(scrub_report(text).split())  # before the join: field values end at line ends


def split_report_sections(text: str) -> dict[str, str]:
    """Split a report into its sections, keyed by a normalised name.

    Headings (case-insensitive, followed by a colon) are recognised at the start of the
    text, after a sentence end, or at a line start when in capitals or after a blank line;
    synonyms share a key (``CONCLUSION`` → ``impression``, ``CLINICAL HISTORY`` →
    ``history``), see :data:`SECTION_HEADINGS`. Text before the
    first heading is ``"preamble"``; a section that occurs twice is joined with a space.
    Whitespace inside each section is normalised; empty sections are kept as ``""``.

    Returns:
        ``{"preamble": ..., "findings": ..., "impression": ...}`` in the report's order;
        ``"preamble"`` only when non-empty.
    """
    sections: dict[str, str] = {}
    matches = [match for match in _CANDIDATE.finditer(text) if _is_heading(text, match)]
    preamble = " ".join(text[: matches[0].start() if matches else len(text)].split())
    if preamble:
        sections["preamble"] = preamble
    ends = [match.start() for match in matches[1:]] + [len(text)] * bool(matches)
    for match, end in zip(matches, ends, strict=True):
        key = SECTION_HEADINGS[" ".join(match.group("name").upper().split())]
        body = " ".join(text[match.end() : end].split())
        sections[key] = f"{sections[key]} {body}".strip() if key in sections else body
    return sections


def keep_sections(text: str, names: list[str]) -> str:
    """The bodies of the sections ``names`` (normalised keys, e.g. ``findings``), in the report's order.

    A text with none of them (a prompt such as "Small pleural effusion.", a search query)
    is returned whole, so the same function serves reports and queries.
    """
    sections = split_report_sections(text)
    kept = [body for key, body in sections.items() if key in names and body]
    return " ".join(kept) if kept else text
