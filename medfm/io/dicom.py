"""Single-frame projection radiographs (DX, CR) from DICOM."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medfm.errors import MedfmReadError

# Header fields that identify a patient: their *names* may be reported, never their values.
PATIENT_IDENTIFIER_FIELDS = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs",
    "OtherPatientNames", "PatientAddress", "InstitutionName", "ReferringPhysicianName",
    "AccessionNumber",
)


@dataclass(frozen=True)
class RadiographImage:
    """A radiograph as ``(1, H, W)`` float32, higher value = more attenuation.

    Attributes:
        array: pixel values after RescaleSlope/Intercept, MONOCHROME1 inverted.
        spacing: (row, column) pixel spacing in mm.
        meta: non-identifying acquisition fields (modality, manufacturer, model, ...).
    """

    array: np.ndarray
    spacing: tuple[float, float]
    meta: dict[str, str] = field(default_factory=dict)


def read_radiograph(path: str | Path) -> RadiographImage:
    """Read a single-frame grayscale DICOM radiograph.

    Raises:
        MedfmReadError: the file is missing, not DICOM, has no decodable pixel data,
            is not single-frame grayscale, or lacks a pixel spacing.
    """
    path = Path(path)
    if not path.is_file():
        raise MedfmReadError(path, "file not found")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError) as err:
        raise MedfmReadError(path, f"not a readable DICOM file ({err})") from None
    if "PixelData" not in ds:
        raise MedfmReadError(path, "DICOM file has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1)) != 1:
        raise MedfmReadError(path, "expected a single-frame grayscale radiograph")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a truncated payload must fail, not be padded
            stored = ds.pixel_array
    except Exception as err:  # pydicom raises many types for undecodable payloads
        raise MedfmReadError(path, f"pixel data could not be decoded ({err})") from None

    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    values = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        # MONOCHROME1 shows high values dark; flip so attenuation is always bright.
        values = values.max() + values.min() - values

    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if not spacing or len(spacing) != 2:
        raise MedfmReadError(path, "no PixelSpacing or ImagerPixelSpacing")
    meta = {
        "modality": str(ds.get("Modality", "")),
        "manufacturer": str(ds.get("Manufacturer", "")),
        "model": str(ds.get("ManufacturerModelName", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
    }
    return RadiographImage(values[None], (float(spacing[0]), float(spacing[1])), meta)
