"""Identifiers removed from free-text reports before any of their text is embedded, indexed or shown.

DICOM de-identification (:mod:`medfm.io.deid`) cleans headers; a report is free text, and a radiology
system often writes a header of its own into it ("Patient: …  MRN: …  DOB: …"). This scrubber removes, by
rule, what HIPAA's Safe Harbor list names and such headers carry:

- the value of a labelled identifier field (name, patient, MRN, ID, DOB, address, phone, accession, SSN,
  referring/ordering physician, e-mail), up to the end of its line or the next field;
- full dates (2024-03-02, 03/02/2024, 2 March 2024, March 2, 2024); a year alone stays;
- telephone numbers, e-mail addresses, runs of 6 or more digits (record and accession numbers), US ZIP
  codes after a state or town, UK postcodes;
- street addresses (a number, capitalised words and a street type: "17 Larkspur Lane");
- a title followed by a capitalised name ("Dr. Ophelia Brandywine", "Mrs Quill");
- any ``known`` string (e.g. the study's patient name and id from its DICOM header, in each order).

Each is replaced by a bracketed tag ("[name]", "[date]", …), so a reader sees that something was removed.
Rules cannot find a bare name with no cue ("Seen with John today"): reports from a source that writes such
text need a human or model-based de-identifier first (docs/deidentification.md). Clinical numbers (sizes,
rates, intervals: at most 5 digits) and section headings are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_MONTHS = ("january|february|march|april|may|june|july|august|september|october|november|december|"
           "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec")
_FIELD_LABELS = ("patient name|patient|name|mrn|medical record number|medical record no|record number|"
                 "hospital number|nhs number|patient id|pid|id|date of birth|birth date|dob|born|address|"
                 "home address|phone|telephone|tel|mobile|fax|accession number|accession|acc|ssn|"
                 "social security number|referring physician|referring doctor|referring|ordering physician|"
                 "ordered by|requested by|email|e-mail")
# A labelled field's value runs to the line's end or to two spaces / a separator before the next label.
_FIELD = re.compile(rf"(?im)\b(?P<label>{_FIELD_LABELS})\s*(?:[:#=]|no\.?:?)\s*(?P<value>[^\n;|]*?)"
                    rf"(?=\s{{2,}}|\s*[;|]|\.\s|\s+(?:{_FIELD_LABELS})\s*[:#=]|$)")
# Titled names go first: "Dr. Ophelia Brandywine" holds the ". " that ends a field's value.
_TITLED_NAME = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Professor|Doctor)\b\.?\s+"
                          r"(?:[A-Z][a-zA-Z'-]+\.?\s+){0,2}[A-Z][a-zA-Z'-]+\b")
_TAGS = [
    ("[email]", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("[date]", re.compile(r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}[/.]\d{1,2}[/.]\d{2,4}\b")),
    ("[date]", re.compile(rf"(?i)\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{_MONTHS})\.?,?\s+\d{{4}}\b")),
    ("[date]", re.compile(rf"(?i)\b(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b")),
    ("[phone]", re.compile(r"(?:\+\d{1,3}[\s.-]?)?\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b")),
    ("[address]", re.compile(r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|"
                             r"Dr|Boulevard|Blvd|Way|Court|Ct|Place|Pl|Close|Crescent|Terrace|Square)\b\.?")),
    ("[postcode]", re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s+\d[A-Z]{2}\b")),
    ("[number]", re.compile(r"\b(?=[A-Z]*\d)[A-Z\d-]*\d{6,}[A-Z\d-]*\b")),
    ("[zip]", re.compile(r"(?<=[A-Za-z],\s)\d{5}(?:-\d{4})?\b|(?<=\b[A-Z]{2}\s)\d{5}(?:-\d{4})?\b")),
]


def scrub_report(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with identifiers replaced by bracketed tags (module docstring for the rules).

    Args:
        text: a report.
        known: identifiers known for this study (names, ids); DICOM person names ``Family^Given`` are also
            matched as "Given Family" and "Family, Given".
    """
    for value in _variants(known):
        text = re.sub(rf"(?i)(?<![\w]){re.escape(value)}(?![\w])", "[identifier]", text)
    text = _TITLED_NAME.sub("[name]", text)
    text = _FIELD.sub(_field_value_removed, text)
    for tag, pattern in _TAGS:
        text = pattern.sub(tag, text)
    return text


def _field_value_removed(match: re.Match) -> str:
    value = match.group("value")
    if not value.strip() or value.strip().startswith("["):
        return match.group(0)
    return match.group(0)[: match.start("value") - match.start(0)] + "[removed]"


def _variants(known: Iterable[str]) -> list[str]:
    """Every way a known identifier may be written, longest first (so a full name goes before its parts)."""
    out: set[str] = set()
    for value in known:
        value = str(value).strip()
        if len(value) < 3:
            continue  # a two-letter "identifier" would remove words such as "PA"
        parts = [p for p in re.split(r"[\^,\s]+", value) if p]
        out.add(value.replace("^", " ").strip())
        if len(parts) >= 2:
            out.add(" ".join(parts[1:] + parts[:1]))  # Family^Given → Given Family
            out.add(f"{parts[0]}, {' '.join(parts[1:])}")
            out.update(p for p in parts if len(p) >= 4)  # a family or given name on its own
    return sorted(out, key=len, reverse=True)
