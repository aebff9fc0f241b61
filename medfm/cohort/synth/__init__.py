"""Synthetic multi-site demo cohort: chest X-ray DICOM, 12-lead WFDB ECG and reports.

Findings (cardiomegaly, pleural effusion, atrial fibrillation, LVH) are drawn
into the pixels and samples, not only into the labels, so a model can learn
them from the signals. See docs/cohort-synth.md.
"""

from medfm.cohort.synth.cohort import FINDINGS, synthesize_cohort

__all__ = ["FINDINGS", "synthesize_cohort"]
