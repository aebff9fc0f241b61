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


def test_a_report_read_again_is_not_scrubbed_again_and_an_edited_one_is(tmp_path, monkeypatch):
    import medfm.io.reports as reports

    calls = []
    monkeypatch.setattr(reports, "scrub_report", lambda text: calls.append(text) or text.replace("Zebulon", "[name]"))
    reports._scrubbed.cache_clear()
    path = tmp_path / "r.txt"
    path.write_text("FINDINGS: seen by Zebulon, unique text for this test 4711.")
    assert reports.read_report(path) == reports.read_report(path) == \
        "FINDINGS: seen by [name], unique text for this test 4711."
    assert len(calls) == 1  # the second epoch's read costs a file read, not the scrubber's regexes
    path.write_text("FINDINGS: edited; Zebulon again, unique text for this test 4711.")
    assert reports.read_report(path) == "FINDINGS: edited; [name] again, unique text for this test 4711."
    assert len(calls) == 2
    reports._scrubbed.cache_clear()
