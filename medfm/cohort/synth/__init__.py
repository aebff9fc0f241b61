"""Synthetic multi-site demo cohort: chest X-ray DICOM, 12-lead WFDB ECG, retinal OCT
and fundus photographs, chest CT series, and reports.

Findings (cardiomegaly, pleural effusion, atrial fibrillation, LVH; drusen,
intraretinal fluid, haemorrhage; lung nodule) are drawn into the pixels and
samples, not only into the labels, so a model can learn them from the signals.
See docs/cohort-synth.md.
"""

from medfm.cohort.synth.cohort import ALL_FINDINGS, CT_FINDINGS, EYE_FINDINGS, FINDINGS, synthesize_cohort

__all__ = ["ALL_FINDINGS", "CT_FINDINGS", "EYE_FINDINGS", "FINDINGS", "synthesize_cohort"]
