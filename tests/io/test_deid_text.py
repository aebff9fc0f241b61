"""Free-text report scrubbing: identifiers go, clinical text stays."""

from __future__ import annotations

import pytest

from medfm.io.deid_text import scrub_report

PLANTED = """Patient: Zebulon Quixworth   MRN: 83920571   DOB: 03/02/1956
Address: 17 Larkspur Lane, Hollowbrook, CA 90210   Phone: (555) 301-8842
Referring physician: Dr. Ophelia Brandywine; email o.brandywine@stquillon.org
Accession: ACC99887766. Seen on March 2, 2021 and 2021-03-04; NHS number 943 476 5919.
EXAMINATION: Chest radiograph, PA view.
FINDINGS: Mild cardiomegaly. A 12 mm nodule in the right upper lobe. Ventricular rate 85 bpm, QRS 95 ms.
IMPRESSION: Cardiomegaly. Compared with Mrs Quixworth's film of 2019.
"""


def test_planted_identifiers_are_gone():
    scrubbed = scrub_report(PLANTED, known=["Quixworth^Zebulon", "83920571"])
    for planted in ("Zebulon", "Quixworth", "83920571", "03/02/1956", "1956", "Larkspur", "Hollowbrook", "90210",
                    "555", "301-8842", "Ophelia", "Brandywine", "stquillon", "ACC99887766", "March 2, 2021",
                    "2021-03-04", "943 476 5919"):
        assert planted not in scrubbed, planted


def test_clinical_text_stays():
    scrubbed = scrub_report(PLANTED, known=["Quixworth^Zebulon"])
    for clinical in ("EXAMINATION: Chest radiograph, PA view.", "Mild cardiomegaly.",
                     "A 12 mm nodule in the right upper lobe.", "Ventricular rate 85 bpm, QRS 95 ms.",
                     "IMPRESSION: Cardiomegaly.", "film of 2019"):
        assert clinical in scrubbed, clinical


@pytest.mark.parametrize("text", [
    "EXAMINATION: Chest radiograph, PA view.\n\nFINDINGS: The lungs are clear. No pneumothorax.",
    "12-lead ECG.\nRhythm: Sinus rhythm. Ventricular rate 72 bpm. PR 160 ms, QRS 98 ms, QTc 420 ms.",
    "EXAMINATION: CT chest without contrast.\nFINDINGS: 3 nodules, the largest 8 mm, series 4 image 112.",
    "EXAMINATION: OCT macula, left eye. FINDINGS: Drusen. IMPRESSION: Large drusen, 350 microns.",
])
def test_reports_without_identifiers_are_unchanged(text):
    assert scrub_report(text) == text


def test_known_names_are_found_in_any_order_and_short_values_are_ignored():
    text = "Quixworth, Zebulon seen; Zebulon Quixworth again; PA view."
    assert scrub_report(text, known=["Quixworth^Zebulon", "PA"]) == \
        "[identifier] seen; [identifier] again; PA view."
