"""DICOM objects: any single image (2D, multi-frame, colour, OCT, fundus) and radiographs.

Series of single-slice files are assembled into volumes in :mod:`medfm.io.dicom_series`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut

from medfm.errors import MedfmReadError
from medfm.io.errors import CorruptFileError, EmptyFileError, UnsupportedFormatError
from medfm.io.images import Image, affine_2d, plane_affine

# Header fields that identify a patient: their *names* may be reported, never their values.
PATIENT_IDENTIFIER_FIELDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
    "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator", "IssuerOfPatientID",
    "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "AccessionNumber",
)

OPHTHALMIC_PHOTOGRAPHY_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.77.1.5.1", "1.2.840.10008.5.1.4.1.1.77.1.5.2")
OPHTHALMIC_TOMOGRAPHY_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"

_IDENTITY_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

# First bytes of formats people rename to .dcm by mistake.
_FOREIGN_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG image", b"\xff\xd8\xff": "JPEG image", b"GIF8": "GIF image",
    b"II*\x00": "TIFF image", b"MM\x00*": "TIFF image", b"\x1f\x8b": "gzip file", b"PK\x03\x04": "zip archive",
}


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


def load_dataset(path: str | Path, stop_before_pixels: bool = False) -> Dataset:
    """Parse a DICOM file's header (and pixel data unless ``stop_before_pixels``).

    Files without the 128-byte preamble + ``DICM`` are accepted only when they start
    with a group 0002 or 0008 element, as old ACR-NEMA style files do.

    Raises:
        MedfmReadError: the file does not exist.
        CorruptFileError: a DICOM header that cannot be parsed.
        EmptyFileError: zero-byte file.
        UnsupportedFormatError: the content is another format (PNG, JPEG, ...) or not DICOM.
    """
    path = Path(path)
    if not path.is_file():
        raise MedfmReadError(path, "file not found")
    with path.open("rb") as handle:
        head = handle.read(132)
    if not head:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    has_marker = head[128:132] == b"DICM"
    if not has_marker:
        for signature, name in _FOREIGN_SIGNATURES.items():
            if head.startswith(signature):
                raise UnsupportedFormatError(path, f"not a readable DICOM file: content is a {name}")
        if head[:2] not in (b"\x02\x00", b"\x08\x00"):
            raise UnsupportedFormatError(path, "not a readable DICOM file: no 'DICM' marker at byte 128")
    try:
        ds = pydicom.dcmread(path, force=not has_marker, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptFileError(path, f"not a readable DICOM file: header is corrupt or truncated ({err})") from None
    if not has_marker and len(ds) == 0:
        raise UnsupportedFormatError(path, "not a readable DICOM file: no DICOM elements found")
    return ds


def decode_pixels(ds: Dataset, path: str | Path) -> np.ndarray:
    """Decoded pixels, modality LUT applied: ``(F, C, H, W)`` float32, colour as RGB.

    Applies RescaleSlope/Intercept (per frame for enhanced multi-frame objects), a Modality
    LUT Sequence, RTDOSE DoseGridScaling; converts YBR and palette colour to RGB and
    inverts MONOCHROME1 so that high values are always bright.

    Raises:
        CorruptFileError: no pixel data, or a payload that does not decode to the
            size the header announces (truncated, empty, bad fragments).
        UnsupportedFormatError: a transfer syntax no installed decoder handles.
    """
    path = Path(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise CorruptFileError(path, "DICOM file has no pixel data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on harmless header quirks; failures raise
            stored = ds.pixel_array
    except NotImplementedError as err:
        raise UnsupportedFormatError(path, f"no decoder for transfer syntax {_transfer_syntax(ds)} ({err})") from None
    except RuntimeError as err:
        if "missing" in str(err) or "no pixel data decoders" in str(err).lower():
            syntax = _transfer_syntax(ds)
            raise UnsupportedFormatError(path, f"no decoder for transfer syntax {syntax} ({err})") from None
        raise CorruptFileError(path, f"pixel data could not be decoded ({err})") from None
    except Exception as err:  # pydicom raises ValueError/TypeError/... for broken payloads
        raise CorruptFileError(path, f"pixel data could not be decoded ({type(err).__name__}: {err})") from None

    n_frames = _n_frames(ds, path)
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        stored, samples = apply_color_lut(stored, ds), 3
    frames = stored.reshape((n_frames, *stored.shape[-3 if samples > 1 else -2 :]))
    if samples > 1:  # (F, H, W, C) -> (F, C, H, W); pydicom already converted YBR to RGB
        return np.moveaxis(frames, -1, 1).astype(np.float32)

    values = np.empty((n_frames, 1, *frames.shape[1:]), dtype=np.float32)
    per_frame = _per_frame_rescale(ds)
    for index in range(n_frames):
        if per_frame is not None:
            slope, intercept = per_frame[index]
            values[index, 0] = frames[index].astype(np.float64) * slope + intercept
        else:
            values[index, 0] = apply_modality_lut(frames[index], ds)
    if "DoseGridScaling" in ds:
        values *= np.float32(float(ds.DoseGridScaling))
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows high values dark; flip so attenuation is always bright.
        values = values.max() + values.min() - values
    return values


def read_dicom_image(path: str | Path) -> Image:
    """Read one DICOM object (any modality with pixel data) into an :class:`Image`.

    Single-frame objects give ``(C, H, W)``; multi-frame objects (Ophthalmic Tomography,
    enhanced CT/MR, cine, RTDOSE) give ``(C, F, H, W)``, with ``meta["frames_are"]``
    ``"slices"`` when the header gives the frames' spatial positions or spacing and
    ``"frames"`` otherwise (cine, whole-slide tiles: the third affine axis is then 1 mm
    along the plane normal and means nothing). Ophthalmic Photography is a 2D image.

    Raises:
        EmptyFileError, UnsupportedFormatError, CorruptFileError: see :func:`load_dataset`
            and :func:`decode_pixels`.
    """
    path = Path(path)
    return image_from_dataset(load_dataset(path), path)


def image_from_dataset(ds: Dataset, path: str | Path) -> Image:
    """:func:`read_dicom_image` on an already parsed dataset (``path`` names it in errors)."""
    frames = decode_pixels(ds, Path(path))
    meta = dicom_meta(ds)
    row_spacing, col_spacing, spacing_known = _pixel_spacing(ds)
    orientation, origin = _plane(ds)
    meta["spacing_known"] = spacing_known
    if frames.shape[0] == 1 and int(ds.get("NumberOfFrames", 1) or 1) == 1:
        affine = affine_2d(row_spacing, col_spacing, orientation, origin)
        return Image(frames[0], affine, (row_spacing, col_spacing), meta)

    slice_vector, frames_are = _frame_geometry(ds, orientation, frames.shape[0])
    meta["frames_are"] = frames_are
    affine = plane_affine(row_spacing, col_spacing, orientation or _IDENTITY_ORIENTATION, origin or (0.0, 0.0, 0.0),
                          slice_vector)
    step = float(np.linalg.norm(slice_vector))
    return Image(np.moveaxis(frames, 0, 1), affine, (step, row_spacing, col_spacing), meta)


def dicom_meta(ds: Dataset) -> dict:
    """Non-identifying description of a dataset (no patient, study or instance values)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    kind = "image"
    if sop_class in OPHTHALMIC_PHOTOGRAPHY_SOP_CLASSES:
        kind = "ophthalmic_photography"
    elif sop_class == OPHTHALMIC_TOMOGRAPHY_SOP_CLASS:
        kind = "ophthalmic_tomography"
    bits = int(ds.get("BitsAllocated", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return {
        "modality": str(ds.get("Modality", "")),
        "manufacturer": str(ds.get("Manufacturer", "")),
        "model": str(ds.get("ManufacturerModelName", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "sop_class_uid": sop_class,
        "transfer_syntax_uid": _transfer_syntax(ds),
        "stored_dtype": f"{'int' if signed else 'uint'}{bits}" if bits else "",
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "object_kind": kind,
    }


def read_radiograph(path: str | Path) -> RadiographImage:
    """Read a single-frame grayscale DICOM radiograph.

    Raises:
        MedfmReadError: (as one of the :mod:`medfm.io.errors` subclasses) the file is
            missing, not DICOM, has no decodable pixel data, is not single-frame
            grayscale, or lacks a pixel spacing.
    """
    path = Path(path)
    ds = load_dataset(path)
    if int(ds.get("SamplesPerPixel", 1)) != 1 or _n_frames(ds, path) != 1:
        raise UnsupportedFormatError(path, "expected a single-frame grayscale radiograph")
    values = decode_pixels(ds, path)[0]
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if not spacing or len(spacing) != 2:
        raise CorruptFileError(path, "no PixelSpacing or ImagerPixelSpacing")
    meta = {key: value for key, value in dicom_meta(ds).items() if key in ("modality", "manufacturer", "model")}
    meta["photometric"] = str(ds.get("PhotometricInterpretation", ""))
    meta["sop_class_uid"] = str(ds.get("SOPClassUID", ""))
    return RadiographImage(values, (float(spacing[0]), float(spacing[1])), meta)


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _n_frames(ds: Dataset, path: Path) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        raise CorruptFileError(path, f"invalid NumberOfFrames {ds.get('NumberOfFrames')!r}") from None


def _functional_item(ds: Dataset, sequence: str, index: int | None = None):
    """First item of ``sequence`` in a frame's (or the shared) functional group, or None."""
    groups = ds.get("PerFrameFunctionalGroupsSequence") if index is not None else ds.get(
        "SharedFunctionalGroupsSequence"
    )
    if not groups:
        return None
    group = groups[index if index is not None else 0]
    items = group.get(sequence)
    return items[0] if items else None


def _per_frame_rescale(ds: Dataset) -> list[tuple[float, float]] | None:
    """Slope/intercept per frame for enhanced multi-frame objects, None for classic ones."""
    if "RescaleSlope" in ds or "PerFrameFunctionalGroupsSequence" not in ds:
        return None
    shared = _functional_item(ds, "PixelValueTransformationSequence")
    result = []
    for index in range(len(ds.PerFrameFunctionalGroupsSequence)):
        item = _functional_item(ds, "PixelValueTransformationSequence", index) or shared
        if item is None:
            return None
        result.append((float(item.get("RescaleSlope", 1.0)), float(item.get("RescaleIntercept", 0.0))))
    return result


def _pixel_spacing(ds: Dataset) -> tuple[float, float, bool]:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if not spacing:
        measures = _functional_item(ds, "PixelMeasuresSequence")
        spacing = measures.get("PixelSpacing") if measures is not None else None
    if spacing and len(spacing) == 2:
        return float(spacing[0]), float(spacing[1]), True
    return 1.0, 1.0, False


def _plane(ds: Dataset) -> tuple[tuple[float, ...] | None, tuple[float, float, float] | None]:
    orientation = ds.get("ImageOrientationPatient")
    if orientation is None:
        item = _functional_item(ds, "PlaneOrientationSequence")
        orientation = item.get("ImageOrientationPatient") if item is not None else None
    position = ds.get("ImagePositionPatient")
    if position is None and "PerFrameFunctionalGroupsSequence" in ds:
        item = _functional_item(ds, "PlanePositionSequence", 0)
        position = item.get("ImagePositionPatient") if item is not None else None
    orientation = tuple(float(v) for v in orientation) if orientation and len(orientation) == 6 else None
    origin = tuple(float(v) for v in position) if position and len(position) == 3 else None
    return orientation, origin


def _frame_geometry(ds: Dataset, orientation, n_frames: int) -> tuple[np.ndarray, str]:
    """Vector between consecutive frames (mm, LPS) and whether frames are spatial slices."""
    row_dir, col_dir = (np.array(orientation[:3]), np.array(orientation[3:])) if orientation else (
        np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    normal = np.cross(row_dir, col_dir)
    positions = []
    for index in range(n_frames if "PerFrameFunctionalGroupsSequence" in ds else 0):
        item = _functional_item(ds, "PlanePositionSequence", index)
        if item is None or "ImagePositionPatient" not in item:
            break
        positions.append([float(v) for v in item.ImagePositionPatient])
    if len(positions) == n_frames and n_frames > 1:
        return (np.asarray(positions[-1]) - np.asarray(positions[0])) / (n_frames - 1), "slices"
    offsets = ds.get("GridFrameOffsetVector")  # RTDOSE: offsets along the normal
    if offsets is not None and len(offsets) == n_frames and n_frames > 1:
        return normal * (float(offsets[-1]) - float(offsets[0])) / (n_frames - 1), "slices"
    measures = _functional_item(ds, "PixelMeasuresSequence")
    for source in (ds, measures):
        if source is None:
            continue
        step = source.get("SpacingBetweenSlices") or source.get("SliceThickness")
        if step:
            return normal * float(step), "slices"
    return normal, "frames"
