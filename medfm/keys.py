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


IMAGE_MODALITIES: tuple[Modality, ...] = tuple(m for m in Modality if m != Modality.REPORT)


def report_of(image: Modality) -> str:
    """Sample key of the report written for one image study, e.g. ``"report.oct"``.

    A cohort that maps ``report`` to one column per image modality gives each sample one
    such key per report (see :mod:`medfm.cohort.manifest`); each is embedded by the
    report encoder and aligned with its own image only.
    """
    return f"{Modality.REPORT}.{image}"


# Every key a sample may carry an input under, in the order batches and losses list them.
INPUT_KEYS: tuple[str, ...] = (*Modality, *(report_of(m) for m in IMAGE_MODALITIES))
_REPORT_KEYS = {report_of(m): m for m in IMAGE_MODALITIES}


def image_of_report(key: str) -> Modality | None:
    """The image modality whose own report ``key`` is (``"report.oct"`` → oct), else None."""
    return _REPORT_KEYS.get(key)


def encoder_of(key: str) -> Modality:
    """The modality whose encoder embeds inputs under ``key`` (every report key → report)."""
    return Modality.REPORT if key in _REPORT_KEYS else Modality(key)


def is_text(key: str) -> bool:
    return encoder_of(key) == Modality.REPORT


def input_keys(samples) -> list[str]:
    """The input keys present in any of ``samples``, in :data:`INPUT_KEYS` order."""
    return [k for k in INPUT_KEYS if any(k in s for s in samples)]
