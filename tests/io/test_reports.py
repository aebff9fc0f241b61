"""Report sections."""

from medfm.io import split_report_sections

MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. Patient with a
 history: of smoking (not a heading: no sentence end before it).

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_mimic_style_report():
    sections = split_report_sections(MIMIC_STYLE)
    assert list(sections) == ["preamble", "examination", "indication", "technique", "comparison", "findings",
                              "impression"]
    assert sections["preamble"] == "FINAL REPORT"
    assert sections["indication"] == "___F with new onset ascites // eval for infection"
    assert sections["findings"].startswith("There is no focal consolidation") and "history: of smoking" in sections[
        "findings"]
    assert sections["impression"] == "No acute cardiopulmonary process."


def test_inline_lowercase_headings_synonyms_and_no_heading():
    text = "Clinical history: cough. Findings: clear lungs. impression: normal. Conclusion: no change."
    assert split_report_sections(text) == {
        "history": "cough.", "findings": "clear lungs.", "impression": "normal. no change.",
    }
    assert split_report_sections("Heart size normal.") == {"preamble": "Heart size normal."}
    assert split_report_sections("") == {}
