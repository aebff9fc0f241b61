"""The one place where modality keys and standard sample fields are spelt.

Everything else imports these names; no string literal for a modality appears
anywhere else in medfm.
"""

from enum import StrEnum


class Modality(StrEnum):
    """Keys of the modalities a sample may carry."""

    OCT = "oct"
    CT = "ct"
    CXR = "cxr"
    FUNDUS = "fundus"
    ECG = "ecg"
    REPORT = "report"


class Field(StrEnum):
    """Standard non-modality fields of a sample or batch."""

    META = "meta"
    LABEL = "label"
    MASK = "mask"


# Leads of the standard 12-lead ECG, in the order every medfm ECG array uses.
STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
