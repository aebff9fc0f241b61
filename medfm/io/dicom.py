"""DICOM objects: any single image (2D, multi-frame, colour, OCT, fundus) and radiographs.

Series of single-slice files are assembled into volumes in :mod:`medfm.io.dicom_series`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.pixels import apply_color_lut, apply_modality_lut

from medfm.errors import MedfmReadError
from medfm.io.errors import CorruptFileError, EmptyFileError, UnsupportedFormatError
from medfm.io.images import MAX_ARRAY_BYTES, ClippedReader, Image, affine_2d, plane_affine

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
    with a group 0002 or 0008 element, as old ACR-NEMA style files do. Every element is
    converted here, so that a value pydicom cannot convert fails now, typed, and not at
    its first use; a length field pointing past the end of the file never makes pydicom
    allocate that length (:class:`~medfm.io.images.ClippedReader`).

    Raises:
        MedfmReadError: the file does not exist.
        CorruptFileError: a DICOM header that cannot be parsed, or a sequence element
            written with another VR.
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
        with warnings.catch_warnings(), ClippedReader(path) as handle:
            warnings.simplefilter("ignore")  # pydicom warns on harmless header quirks; failures raise
            ds = pydicom.dcmread(handle, force=not has_marker, stop_before_pixels=stop_before_pixels)
            elements = list(ds.iterall())
    except Exception as err:  # pydicom raises InvalidDicomError, ValueError, NotImplementedError, zlib.error, ...
        raise CorruptFileError(path, f"not a readable DICOM file: header is corrupt or truncated "
                                     f"({type(err).__name__}: {err})") from None
    if not has_marker and len(ds) == 0:
        raise UnsupportedFormatError(path, "not a readable DICOM file: no DICOM elements found")
    for elem in elements:
        if elem.VR != "SQ" and dictionary_has_tag(elem.tag) and dictionary_VR(elem.tag) == "SQ":
            raise CorruptFileError(path, f"{elem.keyword or elem.tag} is a sequence but is stored with VR {elem.VR}")
    return ds


def header_int(source: Dataset, name: str, default: int, path: str | Path) -> int:
    """The integer header field ``name``, ``default`` when absent or empty.

    Raises:
        CorruptFileError: the value is not one integer (text, several values, a wrong VR).
    """
    value = source.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer():
        raise CorruptFileError(path, f"{name} is not an integer: {_shown(value)}")
    return int(number)


def header_numbers(source: Dataset | None, name: str, path: str | Path) -> list[float] | None:
    """The values of header field ``name`` as finite floats; None when absent or empty.

    Raises:
        CorruptFileError: a value that is not a finite number (text, NaN, bytes of a wrong VR).
    """
    value = source.get(name) if source is not None else None
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise CorruptFileError(path, f"{name} is not numeric: {_shown(value)}") from None
    if not all(math.isfinite(v) for v in numbers):
        raise CorruptFileError(path, f"{name} is not finite: {numbers}")
    return numbers


def _shown(value: Any) -> str:
    """A header value for an error message, cut short (a wrong VR can make it long)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def decode_pixels(ds: Dataset, path: str | Path) -> np.ndarray:
    """Decoded pixels, modality LUT applied: ``(F, C, H, W)`` float32, colour as RGB.

    Applies RescaleSlope/Intercept (per frame for enhanced multi-frame objects), a Modality
    LUT Sequence, RTDOSE DoseGridScaling; converts YBR and palette colour to RGB and
    inverts MONOCHROME1 so that high values are always bright.

    The sizes the header declares are checked before anything is decoded: an uncompressed
    payload must hold them, a compressed one must have a fragment per frame, and the
    float32 result must fit :data:`~medfm.io.images.MAX_ARRAY_BYTES`.

    Raises:
        CorruptFileError: no pixel data, a payload that does not decode to the
            size the header announces (truncated, empty, bad fragments), header sizes the
            payload cannot hold, or values that are not finite after rescaling.
        UnsupportedFormatError: a transfer syntax no installed decoder handles.
    """
    path = Path(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise CorruptFileError(path, "DICOM file has no pixel data")
    n_frames = _n_frames(ds, path)
    samples = header_int(ds, "SamplesPerPixel", 1, path)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    rows, cols = _check_declared_size(ds, path, n_frames, samples, photometric)
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
    except BaseException as err:
        # A decoder plugin written in Rust (pylibjpeg-rle) panics on some corrupt frames, and pyo3
        # raises its PanicException as a BaseException; anything else (KeyboardInterrupt) goes on.
        if type(err).__name__ != "PanicException":
            raise
        raise CorruptFileError(path, f"pixel data could not be decoded (decoder panicked: {err})") from None

    if photometric == "PALETTE COLOR":
        try:
            stored, samples = apply_color_lut(stored, ds), 3
        except Exception as err:  # a missing or malformed palette raises ValueError/KeyError/IndexError
            raise CorruptFileError(path, f"PALETTE COLOR without a usable palette ({type(err).__name__}: {err})"
                                   ) from None
    if stored.size != n_frames * rows * cols * samples:
        raise CorruptFileError(path, f"decoded pixels have shape {stored.shape}; the header declares {n_frames} "
                                     f"frame(s) of {rows}x{cols} with {samples} sample(s) per pixel")
    frames = stored.reshape((n_frames, rows, cols, samples) if samples > 1 else (n_frames, rows, cols))
    if samples > 1:  # (F, H, W, C) -> (F, C, H, W); pydicom already converted YBR to RGB
        return np.moveaxis(frames, -1, 1).astype(np.float32)

    values = np.empty((n_frames, 1, *frames.shape[1:]), dtype=np.float32)
    per_frame = _per_frame_rescale(ds, path, n_frames)
    if per_frame is None:
        for name in ("RescaleSlope", "RescaleIntercept"):
            header_numbers(ds, name, path)  # apply_modality_lut below trusts them
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught by the finite check below
        for index in range(n_frames):
            if per_frame is not None:
                slope, intercept = per_frame[index]
                values[index, 0] = frames[index].astype(np.float64) * slope + intercept
            else:
                try:
                    values[index, 0] = apply_modality_lut(frames[index], ds)
                except (TypeError, ValueError, IndexError, KeyError) as err:  # a malformed Modality LUT
                    raise CorruptFileError(path, f"modality LUT could not be applied ({err})") from None
        scaling = header_numbers(ds, "DoseGridScaling", path)
        if scaling is not None:
            values *= np.float32(scaling[0])
    if not np.isfinite(values).all():
        raise CorruptFileError(path, "pixel values are not finite after RescaleSlope/Intercept, Modality LUT or "
                                     "DoseGridScaling")
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows high values dark; flip so attenuation is always bright.
        values = values.max() + values.min() - values
    return values


def _check_declared_size(ds: Dataset, path: Path, n_frames: int, samples: int, photometric: str) -> tuple[int, int]:
    """(Rows, Columns), once the sizes the header declares are known to fit the payload and the cap."""
    rows, cols = header_int(ds, "Rows", 0, path), header_int(ds, "Columns", 0, path)
    bits = header_int(ds, "BitsAllocated", 0, path)
    for name, value in (("Rows", rows), ("Columns", cols), ("SamplesPerPixel", samples), ("BitsAllocated", bits)):
        if value <= 0:
            raise CorruptFileError(path, f"{name} is {value}: must be positive")
    if "PerFrameFunctionalGroupsSequence" in ds and len(ds.PerFrameFunctionalGroupsSequence) != n_frames:
        raise CorruptFileError(path, f"PerFrameFunctionalGroupsSequence has {len(ds.PerFrameFunctionalGroupsSequence)} "
                                     f"items for {n_frames} frames")
    channels = 3 if photometric == "PALETTE COLOR" else samples
    result_bytes = n_frames * rows * cols * channels * 4
    if result_bytes > MAX_ARRAY_BYTES:
        raise CorruptFileError(path, f"header declares {n_frames} frame(s) of {rows}x{cols}x{channels}: "
                                     f"{result_bytes} bytes as float32, over the {MAX_ARRAY_BYTES}-byte cap")
    if "PixelData" not in ds:
        return rows, cols
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    pixel_data = ds.PixelData or b""
    if syntax is not None and syntax.is_transfer_syntax and syntax.is_encapsulated:
        try:
            n_fragments = parse_fragments(pixel_data)[0]  # the Basic Offset Table counts as one
        except Exception as err:  # a broken item structure raises ValueError/struct.error/...
            raise CorruptFileError(path, f"encapsulated PixelData is malformed ({type(err).__name__}: {err})"
                                   ) from None
        if n_frames > n_fragments:
            raise CorruptFileError(path, f"header declares {n_frames} frames but the encapsulated PixelData "
                                         f"holds {n_fragments} items")
        return rows, cols
    stored_bytes = n_frames * rows * cols * samples * bits // 8
    if photometric == "YBR_FULL_422":  # two chroma samples shared by each pair of pixels
        stored_bytes = stored_bytes * 2 // 3
    if len(pixel_data) < stored_bytes:
        raise CorruptFileError(path, f"pixel data could not be decoded: PixelData holds {len(pixel_data)} bytes, "
                                     f"the header declares {n_frames} frame(s) of {rows}x{cols}x{samples} at {bits} "
                                     f"bits ({stored_bytes} bytes)")
    return rows, cols


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
    path = Path(path)
    frames = decode_pixels(ds, path)
    meta = dicom_meta(ds)
    row_spacing, col_spacing, spacing_known = _pixel_spacing(ds, path)
    orientation, origin = _plane(ds, path)
    meta["spacing_known"] = spacing_known
    if frames.shape[0] == 1 and _n_frames(ds, path) == 1:
        affine = affine_2d(row_spacing, col_spacing, orientation, origin)
        return Image(frames[0], affine, (row_spacing, col_spacing), meta)

    slice_vector, frames_are = _frame_geometry(ds, orientation, frames.shape[0], path)
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
    bits = _int_or_zero(ds.get("BitsAllocated"))
    signed = _int_or_zero(ds.get("PixelRepresentation")) == 1
    return {
        "modality": str(ds.get("Modality", "")),
        "manufacturer": str(ds.get("Manufacturer", "")),
        "model": str(ds.get("ManufacturerModelName", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "sop_class_uid": sop_class,
        "transfer_syntax_uid": _transfer_syntax(ds),
        "stored_dtype": f"{'int' if signed else 'uint'}{bits}" if bits else "",
        "bits_stored": _int_or_zero(ds.get("BitsStored")),
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
    if header_int(ds, "SamplesPerPixel", 1, path) != 1 or _n_frames(ds, path) != 1:
        raise UnsupportedFormatError(path, "expected a single-frame grayscale radiograph")
    values = decode_pixels(ds, path)[0]
    row_spacing, col_spacing, spacing_known = _pixel_spacing(ds, path)
    if not spacing_known:
        raise CorruptFileError(path, "no PixelSpacing or ImagerPixelSpacing")
    meta = {key: value for key, value in dicom_meta(ds).items() if key in ("modality", "manufacturer", "model")}
    meta["photometric"] = str(ds.get("PhotometricInterpretation", ""))
    meta["sop_class_uid"] = str(ds.get("SOPClassUID", ""))
    return RadiographImage(values, (row_spacing, col_spacing), meta)


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _int_or_zero(value: Any) -> int:
    """An integer field for a description (``dicom_meta``): 0 when absent or not an integer."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _n_frames(ds: Dataset, path: Path) -> int:
    return max(1, header_int(ds, "NumberOfFrames", 1, path))


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


def _per_frame_rescale(ds: Dataset, path: Path, n_frames: int) -> list[tuple[float, float]] | None:
    """Slope/intercept per frame for enhanced multi-frame objects, None for classic ones.

    Raises:
        CorruptFileError: a slope or intercept that is not a finite number.
    """
    if "RescaleSlope" in ds or "PerFrameFunctionalGroupsSequence" not in ds:
        return None
    shared = _functional_item(ds, "PixelValueTransformationSequence")
    result = []
    for index in range(n_frames):  # one group per frame, checked by _check_declared_size
        item = _functional_item(ds, "PixelValueTransformationSequence", index) or shared
        if item is None:
            return None
        slope = header_numbers(item, "RescaleSlope", path) or [1.0]
        intercept = header_numbers(item, "RescaleIntercept", path) or [0.0]
        result.append((slope[0], intercept[0]))
    return result


def _pixel_spacing(ds: Dataset, path: Path) -> tuple[float, float, bool]:
    """(row, col) spacing in mm and whether the file gives it; 1.0 and False when it does not.

    Raises:
        CorruptFileError: a spacing given as two values that are not positive finite numbers.
    """
    name = next((n for n in ("PixelSpacing", "ImagerPixelSpacing") if ds.get(n)), None)
    source = ds
    if name is None:
        source, name = _functional_item(ds, "PixelMeasuresSequence"), "PixelSpacing"
    spacing = header_numbers(source, name, path)
    if spacing is None or len(spacing) != 2:
        return 1.0, 1.0, False
    if min(spacing) <= 0:
        raise CorruptFileError(path, f"{name} {spacing}: must be positive")
    return spacing[0], spacing[1], True


def _plane(ds: Dataset, path: Path) -> tuple[tuple[float, ...] | None, tuple[float, float, float] | None]:
    """(ImageOrientationPatient, ImagePositionPatient), each None when absent or of the wrong length.

    Raises:
        CorruptFileError: values that are not finite numbers, or row and column directions
            that are zero or parallel (they would give the image no plane).
    """
    source = ds
    if "ImageOrientationPatient" not in ds:
        source = _functional_item(ds, "PlaneOrientationSequence")
    orientation = header_numbers(source, "ImageOrientationPatient", path)
    source = ds
    if "ImagePositionPatient" not in ds and "PerFrameFunctionalGroupsSequence" in ds:
        source = _functional_item(ds, "PlanePositionSequence", 0)
    position = header_numbers(source, "ImagePositionPatient", path)
    orientation = tuple(orientation) if orientation and len(orientation) == 6 else None
    if orientation is not None and np.linalg.norm(np.cross(orientation[:3], orientation[3:])) < 1e-6:
        raise CorruptFileError(path, f"ImageOrientationPatient {list(orientation)}: row and column directions are "
                                     "zero or parallel")
    origin = tuple(position) if position and len(position) == 3 else None
    return orientation, origin


def _frame_geometry(ds: Dataset, orientation, n_frames: int, path: Path) -> tuple[np.ndarray, str]:
    """Vector between consecutive frames (mm, LPS) and whether frames are spatial slices."""
    row_dir, col_dir = (np.array(orientation[:3]), np.array(orientation[3:])) if orientation else (
        np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    normal = np.cross(row_dir, col_dir)
    positions = []
    for index in range(n_frames if "PerFrameFunctionalGroupsSequence" in ds else 0):
        item = _functional_item(ds, "PlanePositionSequence", index)
        position = header_numbers(item, "ImagePositionPatient", path)
        if position is None or len(position) != 3:
            break
        positions.append(position)
    if len(positions) == n_frames and n_frames > 1:
        return (np.asarray(positions[-1]) - np.asarray(positions[0])) / (n_frames - 1), "slices"
    offsets = header_numbers(ds, "GridFrameOffsetVector", path)  # RTDOSE: offsets along the normal
    if offsets is not None and len(offsets) == n_frames and n_frames > 1:
        return normal * (offsets[-1] - offsets[0]) / (n_frames - 1), "slices"
    measures = _functional_item(ds, "PixelMeasuresSequence")
    for source in (ds, measures):
        if source is None:
            continue
        step = header_numbers(source, "SpacingBetweenSlices", path) or header_numbers(source, "SliceThickness", path)
        if step and step[0]:
            return normal * step[0], "slices"
    return normal, "frames"
