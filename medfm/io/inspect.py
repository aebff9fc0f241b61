"""Describe a data file (or a DICOM series folder) without exposing patient identifiers."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medfm.io.dicom import PATIENT_IDENTIFIER_FIELDS, dicom_meta, image_from_dataset, load_dataset
from medfm.io.dicom_series import read_dicom_series
from medfm.io.errors import CorruptFileError, EmptyFileError, UnsupportedFormatError
from medfm.io.images import Image, read_photo
from medfm.io.nifti import read_nifti
from medfm.io.oct_vendor import read_heidelberg_vol, read_oct_vendor, read_zeiss_img
from medfm.io.wfdb import read_wfdb_record
from medfm.keys import STANDARD_LEADS

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"HSF-OCT-", "heidelberg_vol"),
)
_EXTENSIONS = {
    ".dcm": "dicom", ".dicom": "dicom", ".nii": "nifti", ".nii.gz": "nifti", ".png": "png", ".jpg": "jpeg",
    ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".gif": "gif", ".hea": "wfdb",
    # OCT vendor files: .vol also has a magic (above); a .vol without it reaches the reader, which says why.
    ".vol": "heidelberg_vol", ".img": "zeiss_img", ".e2e": "heidelberg_e2e", ".fds": "topcon_fds",
    ".fda": "topcon_fda",
}
# Formats read by medfm.io.oct_vendor, and the OCT-specific meta keys inspect_path reports for them.
_OCT_VENDOR_FORMATS = ("heidelberg_vol", "zeiss_img", "heidelberg_e2e", "topcon_fds", "topcon_fda")
_OCT_KEYS = ("format_version", "protocol", "scan_pattern", "laterality", "n_bscans", "slo_shape", "intensity",
             "invalid_voxels", "slice_spacing_nominal", "slice_spacing_note", "spacing_nominal",
             "spacing_nominal_axes", "bscans_flipped", "bscan_order", "geometry", "trailing_bytes",
             "patient_identifier_fields")
_LEADS_BY_LOWER = {lead.lower(): lead for lead in STANDARD_LEADS}


def detect_format(path: str | Path) -> str:
    """Format of a file by its content; the extension decides only when content is silent.

    Returns one of ``dicom``, ``dicom_series`` (a folder), ``nifti``, ``png``, ``jpeg``,
    ``tiff``, ``gif``, ``wfdb`` (a ``.hea`` header, or a record path next to one),
    ``heidelberg_vol`` (``HSF-OCT`` magic, or ``.vol``), and by extension only ``zeiss_img``
    (``.img``), ``heidelberg_e2e`` (``.e2e``), ``topcon_fds`` / ``topcon_fda``.

    Raises:
        EmptyFileError: zero-byte file or a folder with no DICOM file.
        UnsupportedFormatError: none of the above.
    """
    path = Path(path)
    if path.is_dir():
        return "dicom_series"
    if not path.is_file():
        if path.with_name(path.name + ".hea").is_file():
            return "wfdb"
        raise UnsupportedFormatError(path, "no such file, and no WFDB header next to it")
    with path.open("rb") as handle:
        head = handle.read(352)
    if not head:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    if head[128:132] == b"DICM":
        return "dicom"
    if _is_nifti_header(head):
        return "nifti"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as handle:
                if _is_nifti_header(handle.read(352)):
                    return "nifti"
        except (OSError, EOFError, zlib.error):
            raise CorruptFileError(path, "gzip stream is corrupt") from None
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    if _is_wfdb_header(head):
        return "wfdb"
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    raise UnsupportedFormatError(path, "unknown format: no DICOM, NIfTI, PNG, JPEG, TIFF, GIF, WFDB or OCT vendor "
                                       "signature or extension")


def inspect_path(path: str | Path) -> dict[str, Any]:
    """JSON-serialisable description of a file or a DICOM series folder.

    Keys (when they apply): ``path``, ``format``, ``modality``, ``manufacturer``,
    ``model``, ``shape`` (the reader's channel-first array), ``spacing`` (mm, array order),
    ``stored_dtype``, ``value_range`` (after rescale), ``transfer_syntax_uid``,
    ``photometric``, ``slice_warnings``; for ECG ``sampling_rate_hz``, ``duration_s``,
    ``lead_names``, ``standard_leads_present``; for DICOM ``patient_identifier_fields``:
    the NAMES of identifying header fields that hold a value (never the values); for OCT
    vendor files ``scan_pattern``/``protocol``, ``laterality``, ``n_bscans`` and the other
    keys in ``_OCT_KEYS`` (``patient_identifier_fields`` for ``.vol``: header field names).

    Raises:
        EmptyFileError, UnsupportedFormatError, CorruptFileError: as the readers do.
    """
    path = Path(path)
    fmt = detect_format(path)
    info: dict[str, Any] = {"path": str(path), "format": fmt}
    if fmt == "dicom":
        info.update(_inspect_dicom(path))
    elif fmt == "dicom_series":
        image = read_dicom_series(path)
        info.update(_image_summary(image))
        info["slice_warnings"] = image.meta["slice_warnings"]
        first = next(p for p in sorted(path.iterdir()) if p.is_file() and _has_dicm(p))
        info["patient_identifier_fields"] = _identifier_fields(load_dataset(first, stop_before_pixels=True))
    elif fmt == "nifti":
        info.update(_image_summary(read_nifti(path)))
    elif fmt == "wfdb":
        info.update(_inspect_wfdb(path))
    elif fmt in _OCT_VENDOR_FORMATS:
        info.update(_inspect_oct_vendor(path, fmt))
    else:
        info.update(_image_summary(read_photo(path)))
    return info


def format_inspection(info: dict[str, Any]) -> str:
    """Short human-readable, multi-line summary of :func:`inspect_path`'s result."""
    labels = (
        ("format", "format"), ("modality", "modality"), ("manufacturer", "manufacturer"), ("model", "model"),
        ("shape", "shape"), ("spacing", "spacing (mm)"), ("stored_dtype", "stored dtype"),
        ("value_range", "value range"), ("photometric", "photometric"), ("grey_as_rgb", "grey stored as RGB"),
        ("transfer_syntax_uid", "transfer syntax"),
        ("sampling_rate_hz", "sampling rate (Hz)"), ("duration_s", "duration (s)"), ("lead_names", "leads"),
        ("standard_leads_present", "standard leads"), ("slice_warnings", "slice warnings"),
        ("format_version", "format version"), ("protocol", "protocol"), ("scan_pattern", "scan pattern"),
        ("laterality", "laterality"), ("n_bscans", "B-scans"), ("slo_shape", "SLO image"),
        ("intensity", "intensity"), ("invalid_voxels", "invalid voxels (set to 0)"),
        ("slice_spacing_note", "note"),
        ("patient_identifier_fields", "patient identifier fields present"),
    )
    lines = [info.get("path", "")]
    for key, label in labels:
        value = info.get(key)
        if value is None or value is False or value == "" or value == []:
            continue
        if isinstance(value, list | tuple):
            joiner = " x " if key in ("shape", "spacing", "slo_shape") else ", "
            value = joiner.join(str(v) for v in value)
        lines.append(f"  {label}: {value}")
    if not info.get("spacing_known", True):
        lines.append("  note: pixel size not stored in the file (spacing 1.0 is a placeholder)")
    if info.get("spacing_nominal"):
        lines.append("  note: spacing is the scan protocol's nominal field size over the sample counts")
    return "\n".join(lines)


def _inspect_dicom(path: Path) -> dict[str, Any]:
    ds = load_dataset(path)
    meta = dicom_meta(ds)
    info: dict[str, Any] = {key: meta[key] for key in (
        "modality", "manufacturer", "model", "photometric", "sop_class_uid", "transfer_syntax_uid", "stored_dtype",
        "object_kind")}
    info["patient_identifier_fields"] = _identifier_fields(ds)
    if "PixelData" not in ds:
        info["pixel_data"] = False
        if "WaveformSequence" in ds:
            info["waveform_groups"] = len(ds.WaveformSequence)
        return info
    summary = _image_summary(image_from_dataset(ds, path))
    summary["stored_dtype"] = meta["stored_dtype"]
    info.update(summary)
    return info


def _inspect_oct_vendor(path: Path, fmt: str) -> dict[str, Any]:
    readers = {"heidelberg_vol": read_heidelberg_vol, "zeiss_img": read_zeiss_img}
    image = readers.get(fmt, read_oct_vendor)(path)
    info = _image_summary(image)
    info.update({key: image.meta[key] for key in _OCT_KEYS if key in image.meta})
    return info


def _image_summary(image: Image) -> dict[str, Any]:
    keep = ("modality", "manufacturer", "model", "photometric", "transfer_syntax_uid", "stored_dtype",
            "spacing_known", "grey_as_rgb", "frames_are", "sop_class_uid", "object_kind")
    info = {key: image.meta[key] for key in keep if key in image.meta}
    info["shape"] = [int(s) for s in image.array.shape]
    info["spacing"] = [round(float(s), 6) for s in image.spacing]
    info["value_range"] = [float(np.min(image.array)), float(np.max(image.array))]
    return info


def _inspect_wfdb(path: Path) -> dict[str, Any]:
    record_path = path.with_suffix("") if path.suffix == ".hea" else path
    record = read_wfdb_record(record_path)
    names = [str(name or "") for name in record.sig_name or []]
    present = {_LEADS_BY_LOWER[name.strip().lower()] for name in names if name.strip().lower() in _LEADS_BY_LOWER}
    signal = record.p_signal
    finite = signal[np.isfinite(signal)] if signal is not None else np.array([])
    return {
        "modality": "ecg",
        "sampling_rate_hz": float(record.fs),
        "n_samples": int(record.sig_len),
        "duration_s": round(record.sig_len / float(record.fs), 3),
        "lead_names": names,
        "units": [str(unit) for unit in record.units or []],
        "standard_leads_present": [lead for lead in STANDARD_LEADS if lead in present],
        "stored_dtype": ",".join(f"wfdb fmt {fmt}" for fmt in dict.fromkeys(record.fmt or [])),
        "shape": [len(names), int(record.sig_len)],
        "value_range": [float(finite.min()), float(finite.max())] if finite.size else None,
    }


def _identifier_fields(ds) -> list[str]:
    return [name for name in PATIENT_IDENTIFIER_FIELDS if name in ds and str(ds.get(name, "") or "").strip()]


def _has_dicm(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _is_nifti_header(head: bytes) -> bool:
    return head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00")


def _is_wfdb_header(head: bytes) -> bool:
    """First non-comment line is ``name[/segments] n_signals [fs ...]``."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return False
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split()
            return len(fields) >= 2 and fields[1].isdigit()
    return False
