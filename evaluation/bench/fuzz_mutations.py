"""Mutations of the reader fuzz harness: each named strategy takes ``(rng, format, the input's copy of a
seed)``, damages it in place and returns a description of what it did; ``make_input`` draws one input."""

from __future__ import annotations

import contextlib
import gzip
import io
import shutil
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fuzz_seeds import Seed


def _files_of(fmt: str, path: Path) -> list[Path]:
    """The files an input consists of, which byte-level mutations may pick from."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    if fmt == "wfdb":
        return sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name + "."))
    return [path]


def _pick_file(rng, fmt: str, path: Path) -> Path:
    files = _files_of(fmt, path)
    if fmt == "wfdb" and rng.random() < 0.5:  # the header half of the time: it is where the sizes are
        return path.with_name(path.name + ".hea")
    return files[int(rng.integers(len(files)))]


def _offset(rng, size: int) -> int:
    """A byte offset, in the first 2 KiB (headers) half of the time."""
    return int(rng.integers(min(size, 2048) if rng.random() < 0.5 else size)) if size else 0


def mutate_truncate(rng, fmt: str, path: Path) -> dict:
    target = _pick_file(rng, fmt, path)
    data = target.read_bytes()
    cut = _offset(rng, len(data))
    target.write_bytes(data[:cut])
    return {"file": target.name, "size": len(data), "cut_at": cut}


def mutate_flip_bytes(rng, fmt: str, path: Path) -> dict:
    target = _pick_file(rng, fmt, path)
    data = bytearray(target.read_bytes())
    if not data:
        return {"file": target.name, "flipped": []}
    offsets = sorted({_offset(rng, len(data)) for _ in range(int(rng.integers(1, 17)))})
    for offset in offsets:
        data[offset] ^= int(rng.integers(1, 256))
    target.write_bytes(bytes(data))
    return {"file": target.name, "flipped": offsets}


def mutate_none(rng, fmt: str, path: Path) -> dict:
    return {}


# DICOM: absurd values through pydicom's writer (validation off). A value of _DELETE removes the element.
_DELETE = object()
_DICOM_VALUES: dict[str, dict[str, Any]] = {
    "rows_65535": {"Rows": 65535},
    "columns_65535": {"Columns": 65535},
    "rows_columns_65535_frames_10000": {"Rows": 65535, "Columns": 65535, "NumberOfFrames": 10000},
    "frames_10000": {"NumberOfFrames": 10000},
    "frames_0": {"NumberOfFrames": 0},
    "frames_negative": {"NumberOfFrames": -3},
    "rows_0": {"Rows": 0},
    "bits_allocated_64": {"BitsAllocated": 64},
    "bits_allocated_7": {"BitsAllocated": 7},
    "bits_allocated_0": {"BitsAllocated": 0},
    "bits_stored_40": {"BitsStored": 40, "HighBit": 39},
    "samples_3_monochrome2": {"SamplesPerPixel": 3},
    "samples_0": {"SamplesPerPixel": 0},
    "samples_4_rgb": {"SamplesPerPixel": 4, "PhotometricInterpretation": "RGB"},
    "palette_without_lut": {"PhotometricInterpretation": "PALETTE COLOR"},
    "ybr_422_on_grey": {"PhotometricInterpretation": "YBR_FULL_422"},
    "photometric_unknown": {"PhotometricInterpretation": "HSV"},
    "pixel_representation_5": {"PixelRepresentation": 5},
    "planar_configuration_3": {"PlanarConfiguration": 3},
    "rescale_slope_nan": {"RescaleSlope": "nan"},
    "rescale_slope_inf": {"RescaleSlope": "1e400", "RescaleIntercept": "-inf"},
    "rescale_slope_huge": {"RescaleSlope": "1e38"},
    "pixel_spacing_zero": {"PixelSpacing": [0, 0]},
    "pixel_spacing_nan": {"PixelSpacing": ["nan", "1"]},
    "pixel_spacing_one_value": {"PixelSpacing": [0.5]},
    "pixel_spacing_negative": {"PixelSpacing": [-1, 0.5]},
    "imager_spacing_inf": {"PixelSpacing": _DELETE, "ImagerPixelSpacing": ["inf", "inf"]},
    "orientation_degenerate": {"ImageOrientationPatient": [0, 0, 0, 0, 0, 0]},
    "orientation_nan": {"ImageOrientationPatient": ["nan", 0, 0, 0, 1, 0]},
    "orientation_five_values": {"ImageOrientationPatient": [1, 0, 0, 0, 1]},
    "position_nan": {"ImagePositionPatient": ["nan", 0, 0]},
    "position_two_values": {"ImagePositionPatient": [0, 0]},
    "slice_thickness_nan": {"SliceThickness": "nan", "SpacingBetweenSlices": "-inf"},
    "grid_offsets_nan": {"GridFrameOffsetVector": ["nan", "1"]},
    "dose_scaling_nan": {"DoseGridScaling": "nan"},
    "no_pixel_data": {"PixelData": _DELETE},
    "empty_pixel_data": {"PixelData": b""},
    "odd_pixel_data": {"PixelData": b"\x01\x02\x03"},
    "sop_tomography": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.5.4"},
    "series_uid_changed": {"SeriesInstanceUID": "1.2.3.4.5.6.7.8.9"},
    "window_garbage": {"WindowCenter": "1e999", "WindowWidth": "-0"},
    "modality_lut_empty": {"ModalityLUTSequence": []},
}
# DICOM: (keyword, VR written, value) — an element whose VR does not match the dictionary's.
_DICOM_WRONG_VR: dict[str, tuple[str, str, Any]] = {
    "rows_as_string": ("Rows", "LO", "abc"),
    "columns_as_string": ("Columns", "SH", "1e9"),
    "rows_as_float": ("Rows", "FL", 1e30),
    "frames_as_string": ("NumberOfFrames", "LO", "abc"),
    "frames_as_us": ("NumberOfFrames", "US", 65535),
    "bits_allocated_as_string": ("BitsAllocated", "CS", "SIXTEEN"),
    "samples_as_string": ("SamplesPerPixel", "LO", "x"),
    "pixel_representation_as_double": ("PixelRepresentation", "FD", 1.5),
    "photometric_as_us": ("PhotometricInterpretation", "US", 3),
    "pixel_spacing_as_string": ("PixelSpacing", "LO", "abc\\def"),
    "imager_spacing_as_string": ("ImagerPixelSpacing", "LO", "a\\b"),
    "rescale_slope_as_string": ("RescaleSlope", "LO", "slope"),
    "position_as_string": ("ImagePositionPatient", "LO", "a\\b\\c"),
    "orientation_as_bytes": ("ImageOrientationPatient", "UN", b"\x01\x02\x03\x04"),
    "pixel_data_as_string": ("PixelData", "LO", "not pixels"),
    "spacing_between_slices_as_string": ("SpacingBetweenSlices", "LO", "wide"),
    "per_frame_groups_as_string": ("PerFrameFunctionalGroupsSequence", "LO", "groups"),
}


@contextlib.contextmanager
def _pydicom_writes_anything() -> Iterator[None]:
    import pydicom.config

    settings = pydicom.config.settings
    saved = settings.writing_validation_mode, settings.reading_validation_mode
    settings.writing_validation_mode = settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.writing_validation_mode, settings.reading_validation_mode = saved


def _rewrite_dicom(target: Path, change: Callable) -> None:
    import pydicom

    with _pydicom_writes_anything():
        ds = pydicom.dcmread(target, force=True)
        change(ds)
        ds.save_as(target, enforce_file_format=False)


def _set_dicom_fields(ds, values: dict[str, Any]) -> None:
    for keyword, value in values.items():
        if value is _DELETE:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)


def _per_frame_groups_short(ds) -> None:
    """An enhanced multi-frame header whose per-frame groups are fewer than its frames."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item, transform = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = 2.0, 1.0
    item.PixelValueTransformationSequence = Sequence([transform])
    ds.PerFrameFunctionalGroupsSequence = Sequence([item])
    ds.NumberOfFrames = max(2, int(ds.get("NumberOfFrames", 1) or 1))
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)


def mutate_dicom_header(rng, fmt: str, path: Path) -> dict:
    target = _pick_file(rng, fmt, path)
    names = [*_DICOM_VALUES, "per_frame_groups_short"]
    name = names[int(rng.integers(len(names)))]
    change = _per_frame_groups_short if name == "per_frame_groups_short" else (
        lambda ds: _set_dicom_fields(ds, _DICOM_VALUES[name]))
    _rewrite_dicom(target, change)
    return {"file": target.name, "variant": name}


def mutate_dicom_wrong_vr(rng, fmt: str, path: Path) -> dict:
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    target = _pick_file(rng, fmt, path)
    name = list(_DICOM_WRONG_VR)[int(rng.integers(len(_DICOM_WRONG_VR)))]
    keyword, vr, value = _DICOM_WRONG_VR[name]
    tag = tag_for_keyword(keyword)

    def change(ds):
        ds[tag] = DataElement(tag, vr, value)

    _rewrite_dicom(target, change)
    return {"file": target.name, "variant": name}


# NIfTI: absurd header fields through nibabel's header (its structured array, so nothing is validated).
_NIFTI_VALUES: dict[str, dict[str, Any]] = {
    "dim_32767_32767_10000": {"dim": [3, 32767, 32767, 10000, 1, 1, 1, 1]},
    "dim_4d_huge": {"dim": [4, 512, 512, 512, 32767, 1, 1, 1]},
    "dim_negative": {"dim": [3, -5, 10, 10, 1, 1, 1, 1]},
    "dim_65535_as_int16": {"dim": [3, -1, -1, 4, 1, 1, 1, 1]},
    "dim_zero": {"dim": [3, 0, 10, 10, 1, 1, 1, 1]},
    "ndim_0": {"dim": [0, 10, 10, 10, 1, 1, 1, 1]},
    "ndim_8": {"dim": [8, 2, 2, 2, 2, 2, 2, 2]},
    "ndim_negative": {"dim": [-1, 2, 2, 2, 1, 1, 1, 1]},
    "ndim_7_large": {"dim": [7, 100, 100, 100, 100, 100, 100, 100]},
    "datatype_unknown": {"datatype": 255, "bitpix": 8},
    "datatype_zero": {"datatype": 0},
    "datatype_rgb24": {"datatype": 128, "bitpix": 24},
    "datatype_rgba32": {"datatype": 2304, "bitpix": 32},
    "datatype_complex64": {"datatype": 32, "bitpix": 64},
    "datatype_binary": {"datatype": 1, "bitpix": 1},
    "datatype_float128": {"datatype": 1536, "bitpix": 128},
    "bitpix_mismatch": {"bitpix": 3},
    "vox_offset_huge": {"vox_offset": 1e12},
    "vox_offset_negative": {"vox_offset": -1000.0},
    "vox_offset_nan": {"vox_offset": float("nan")},
    "scl_slope_inf": {"scl_slope": float("inf")},
    "scl_inter_nan": {"scl_slope": 1.0, "scl_inter": float("nan")},
    "scl_slope_huge": {"scl_slope": 3e38},
    "pixdim_nan": {"pixdim": [1.0, float("nan")] * 4, "qform_code": 0, "sform_code": 0},
    "pixdim_zero": {"pixdim": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], "qform_code": 0, "sform_code": 0},
    "sform_nan": {"srow_x": [float("nan"), 0.0, 0.0, 0.0], "sform_code": 1},
    "sform_singular": {"srow_x": [0.0] * 4, "srow_y": [0.0] * 4, "srow_z": [0.0] * 4, "sform_code": 1},
    "qform_nan": {"quatern_b": float("nan"), "qform_code": 1, "sform_code": 0},
    "qform_code_999": {"qform_code": 999, "sform_code": -7},
    "sizeof_hdr_wrong": {"sizeof_hdr": 1000},
    "junk_codes": {"intent_code": 9999, "xyzt_units": 255, "slice_code": 99, "dim_info": 255},
}


def mutate_nifti_header(rng, fmt: str, path: Path) -> dict:
    import nibabel as nib

    zipped = path.read_bytes()[:2] == b"\x1f\x8b"
    raw = gzip.decompress(path.read_bytes()) if zipped else path.read_bytes()
    klass = nib.Nifti1Header if raw[344:347] in (b"n+1", b"ni1") else nib.Nifti2Header
    header = klass.from_fileobj(io.BytesIO(raw), check=False)
    names = [*_NIFTI_VALUES, "extension_size_huge"]
    name = names[int(rng.integers(len(names)))]
    if name == "extension_size_huge":  # the extension flag set, followed by an extension claiming 2 GiB
        block = bytearray(raw)
        block[348:360] = struct.pack(f"{header.endianness}4Bii", 1, 0, 0, 0, 2**31 - 16, 6)
        raw = bytes(block)
    else:
        for key, value in _NIFTI_VALUES[name].items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header[key] = value
        block = header.binaryblock
        raw = block + raw[len(block):]
    path.write_bytes(gzip.compress(raw, mtime=0) if zipped else raw)
    return {"variant": name}


# PNG: the IHDR rewritten with its CRC fixed, so that only the values are absurd.
_PNG_IHDR: dict[str, dict[str, int]] = {
    "size_65535x65535": {"width": 65535, "height": 65535},
    "width_0": {"width": 0},
    "height_2_31": {"height": 2**31 - 1},
    "width_2_32": {"width": 2**32 - 1},
    "bit_depth_3": {"bit_depth": 3},
    "bit_depth_16_on_8": {"bit_depth": 16},
    "colour_type_7": {"colour_type": 7},
    "palette_without_plte": {"colour_type": 3, "bit_depth": 8},
    "rgb_on_grey": {"colour_type": 2},
    "interlace_1": {"interlace": 1},
    "interlace_9": {"interlace": 9},
    "compression_1": {"compression": 1},
    "filter_1": {"filter": 1},
}
_IHDR_FIELDS = ("width", "height", "bit_depth", "colour_type", "compression", "filter", "interlace")


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, offset = [], 8
    while offset + 8 <= len(data):
        (length,), kind = struct.unpack(">I", data[offset:offset + 4]), data[offset + 4:offset + 8]
        chunks.append((kind, data[offset + 8:offset + 8 + length]))
        offset += 12 + length
    return chunks


def _png_chunk(kind: bytes, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return struct.pack(">I", size) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def mutate_png_header(rng, fmt: str, path: Path) -> dict:
    chunks = _png_chunks(path.read_bytes())
    names = [*_PNG_IHDR, "idat_length_huge", "no_iend", "no_ihdr", "plte_oversized", "bad_crc"]
    name = names[int(rng.integers(len(names)))]
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, body in chunks:
        if kind == b"IHDR" and name in _PNG_IHDR:
            values = dict(zip(_IHDR_FIELDS, struct.unpack(">IIBBBBB", body), strict=True))
            values.update(_PNG_IHDR[name])
            body = struct.pack(">IIBBBBB", *(values[key] for key in _IHDR_FIELDS))
        if (name, kind) in (("no_iend", b"IEND"), ("no_ihdr", b"IHDR")):
            continue
        if name == "idat_length_huge" and kind == b"IDAT":
            out.append(_png_chunk(kind, body, length=2**31 - 16))
            continue
        if name == "bad_crc" and kind == b"IHDR":
            out.append(_png_chunk(kind, body)[:-4] + b"\0\0\0\0")
            continue
        out.append(_png_chunk(kind, body))
        if name == "plte_oversized" and kind == b"IHDR":
            out.append(_png_chunk(b"PLTE", bytes(3 * 4096)))
    path.write_bytes(b"".join(out))
    return {"variant": name}


# WFDB: the header is text, so its fields are edited as text (wfdb's own writer refuses these values).
def _wfdb_header_lines(header: Path) -> tuple[list[str], int]:
    """The header's lines and the index of the record line (the first that is not a comment)."""
    lines = header.read_text(encoding="latin-1").splitlines()
    record = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")), 0)
    return lines, record


def _edit_record_line(lines: list[str], record: int, position: int, value: str) -> None:
    fields = lines[record].split()
    while len(fields) <= position:
        fields.append("0")
    fields[position] = value
    lines[record] = " ".join(fields)


def _edit_signal_lines(lines: list[str], record: int, position: int, edit: Callable[[str], str]) -> None:
    for index in range(record + 1, len(lines)):
        fields = lines[index].split()
        if not fields or lines[index].startswith("#"):
            continue
        while len(fields) <= position:
            fields.append("200/mV" if position == 2 else "0")
        fields[position] = edit(fields[position])
        lines[index] = " ".join(fields)


_WFDB_RECORD_FIELDS: dict[str, tuple[int, str]] = {
    "fs_0": (2, "0"), "fs_negative": (2, "-360"), "fs_nan": (2, "nan"), "fs_huge": (2, "1e300"),
    "fs_text": (2, "abc"), "sig_len_absurd": (3, "1000000000000"), "sig_len_0": (3, "0"),
    "sig_len_negative": (3, "-5"), "n_sig_huge": (1, "100000000"), "n_sig_0": (1, "0"),
}
_WFDB_SIGNAL_FIELDS: dict[str, tuple[int, Callable[[str], str]]] = {
    "fmt_999": (1, lambda _: "999"),
    "fmt_0": (1, lambda _: "0"),
    "samples_per_frame_absurd": (1, lambda spec: spec.split("x")[0].split(":")[0].split("+")[0] + "x100000"),
    "byte_offset_absurd": (1, lambda spec: spec.split("+")[0] + "+99999999999"),
    "skew_absurd": (1, lambda spec: spec.split(":")[0].split("+")[0] + ":99999999"),
    "gain_0": (2, lambda _: "0/mV"),
    "gain_nan": (2, lambda _: "nan/mV"),
    "gain_negative": (2, lambda _: "-200(0)/mV"),
    "baseline_absurd": (2, lambda _: "200(99999999999999999999)/mV"),
    "units_not_voltage": (2, lambda spec: spec.split("/")[0] + "/degC"),
    "adc_resolution_absurd": (3, lambda _: "999"),
    "signal_file_missing": (0, lambda _: "nonexistent.dat"),
    "signal_file_outside": (0, lambda _: "../../../../../etc/hostname"),
}


def mutate_wfdb_header(rng, fmt: str, path: Path) -> dict:
    header = path.with_name(path.name + ".hea")
    lines, record = _wfdb_header_lines(header)
    names = [*_WFDB_RECORD_FIELDS, *_WFDB_SIGNAL_FIELDS]
    name = names[int(rng.integers(len(names)))]
    if name in _WFDB_RECORD_FIELDS:
        _edit_record_line(lines, record, *_WFDB_RECORD_FIELDS[name])
    else:
        _edit_signal_lines(lines, record, *_WFDB_SIGNAL_FIELDS[name])
    header.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return {"variant": name}


def mutate_wfdb_lead_count(rng, fmt: str, path: Path) -> dict:
    """A header whose number of signals disagrees with its signal lines or with the data's size."""
    header = path.with_name(path.name + ".hea")
    lines, record = _wfdb_header_lines(header)
    signals = [i for i in range(record + 1, len(lines)) if lines[i].strip() and not lines[i].startswith("#")]
    n_sig = len(signals)
    variant = ("more_signal_lines", "fewer_signal_lines", "n_sig_above_lines", "n_sig_below_lines")[
        int(rng.integers(4))]
    if variant == "more_signal_lines":  # every signal listed twice: the data holds half the leads declared
        lines = lines[:signals[-1] + 1] + [lines[i] for i in signals] + lines[signals[-1] + 1:]
        _edit_record_line(lines, record, 1, str(2 * n_sig))
    elif variant == "fewer_signal_lines" and n_sig > 1:  # the data holds more leads than declared
        keep = max(1, n_sig // 2)
        lines = [line for i, line in enumerate(lines) if i not in signals[keep:]]
        _edit_record_line(lines, record, 1, str(keep))
    elif variant == "n_sig_above_lines":
        _edit_record_line(lines, record, 1, str(n_sig + 5))
    else:
        _edit_record_line(lines, record, 1, str(max(0, n_sig - 1)))
    header.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return {"variant": variant, "n_sig": n_sig}


def mutate_wfdb_missing_dat(rng, fmt: str, path: Path) -> dict:
    signal_files = [p for p in _files_of(fmt, path) if p.suffix != ".hea"]
    if not signal_files:
        return {"removed": []}
    drop = signal_files if rng.random() < 0.5 else [signal_files[int(rng.integers(len(signal_files)))]]
    for file in drop:
        file.unlink()
    return {"removed": [p.name for p in drop]}


# Heidelberg .vol: header fields packed at their offsets.
_VOL_VALUES: dict[str, tuple[int, str, Any]] = {
    "size_x_2_31": (12, "<i", 2**31 - 1), "n_bscans_10000": (16, "<i", 10000), "size_z_negative": (20, "<i", -1),
    "size_x_0": (12, "<i", 0), "scale_x_nan": (24, "<d", float("nan")), "distance_negative": (32, "<d", -1.0),
    "scale_z_0": (40, "<d", 0.0), "slo_65535": (48, "<ii", (65535, 65535)), "bscan_header_0": (100, "<i", 0),
    "bscan_header_huge": (100, "<i", 2**31 - 1), "version_999": (0, "<12s", b"HSF-OCT-999"),
    "slo_scale_nan": (56, "<dd", (float("nan"), float("inf"))),
}


def mutate_vol_header(rng, fmt: str, path: Path) -> dict:
    data = bytearray(path.read_bytes())
    name = list(_VOL_VALUES)[int(rng.integers(len(_VOL_VALUES)))]
    offset, layout, value = _VOL_VALUES[name]
    if len(data) >= 2048:
        struct.pack_into(layout, data, offset, *(value if isinstance(value, tuple) else (value,)))
    path.write_bytes(bytes(data))
    return {"variant": name}


# Zip: an archive of another format's (mutated) input, or a damaged archive of a seed.
def _zip_study(study: Path, fmt: str, out: Path, names: Callable[[str], str] = str) -> None:
    files = _files_of(fmt, study)
    base = study if study.is_dir() else study.parent
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            info = zipfile.ZipInfo(names(file.relative_to(base.parent).as_posix()), date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, file.read_bytes())


_ZIP_HEADER_VARIANTS = ("declared_size_4gib", "member_climbs_out", "member_absolute", "symlink_member")


def mutate_zip_header(rng, fmt: str, path: Path) -> dict:
    variant = _ZIP_HEADER_VARIANTS[int(rng.integers(len(_ZIP_HEADER_VARIANTS)))]
    data = bytearray(path.read_bytes())
    if variant == "declared_size_4gib":  # central directory: uncompressed size field of every member
        start = 0
        while (start := data.find(b"PK\x01\x02", start)) >= 0:
            struct.pack_into("<I", data, start + 24, 0xFFFFFFF0)
            start += 4
        path.write_bytes(bytes(data))
        return {"variant": variant}
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, payload in members:
            name = {"member_climbs_out": "../../" + info.filename, "member_absolute": "/tmp/" + info.filename}.get(
                variant, info.filename)
            new = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            if variant == "symlink_member":
                new.external_attr = 0o120777 << 16
            archive.writestr(new, payload)
    return {"variant": variant}


_GENERIC = {"none": mutate_none, "truncate": mutate_truncate, "flip_bytes": mutate_flip_bytes}
MUTATIONS: dict[str, dict[str, Callable]] = {
    "dicom": {**_GENERIC, "header_value": mutate_dicom_header, "wrong_vr": mutate_dicom_wrong_vr},
    "dicom_series": {**_GENERIC, "header_value": mutate_dicom_header, "wrong_vr": mutate_dicom_wrong_vr},
    "nifti": {**_GENERIC, "header_value": mutate_nifti_header},
    "png": {**_GENERIC, "header_value": mutate_png_header},
    "wfdb": {**_GENERIC, "header_value": mutate_wfdb_header, "lead_count": mutate_wfdb_lead_count,
             "missing_dat": mutate_wfdb_missing_dat},
    "heidelberg_vol": {**_GENERIC, "header_value": mutate_vol_header},
    "zip": {"zipped_input": None, "truncate": mutate_truncate, "flip_bytes": mutate_flip_bytes,
            "header_value": mutate_zip_header},
}
# "none" is drawn less often: an unchanged seed tells something only once.
_NONE_WEIGHT = 0.25


@dataclass
class FuzzInput:
    """One mutated input, in ``folder``; ``path`` is what the readers get."""

    index: int
    fmt: str
    seed: str
    strategy: str
    params: dict
    folder: Path
    path: Path


def make_input(index: int, seed: int, seeds: list[Seed], formats: tuple[str, ...], work: Path) -> FuzzInput:
    """Input ``index`` of run ``seed``: the same arguments always give the same bytes."""
    rng = np.random.default_rng([seed, index])
    fmt = formats[index % len(formats)]
    folder = work / f"{index:06d}"
    if fmt != "zip":
        chosen, strategy, params, path = _mutated_copy(rng, fmt, seeds, folder)
        return FuzzInput(index, fmt, chosen.name, strategy, params, folder, path)
    strategy = _draw_strategy(rng, "zip")
    inner_formats = [f for f in formats if f != "zip"] or [s.fmt for s in seeds]
    inner_fmt = inner_formats[int(rng.integers(len(inner_formats)))]
    chosen, inner_strategy, inner_params, study = _mutated_copy(
        rng, inner_fmt, seeds, folder / "study", strategy=None if strategy == "zipped_input" else "none")
    archive = folder / "upload.zip"
    _zip_study(study, inner_fmt, archive)
    shutil.rmtree(folder / "study")
    params = {"inner_format": inner_fmt, "inner_strategy": inner_strategy, "inner": inner_params}
    if strategy != "zipped_input":
        params.update(MUTATIONS["zip"][strategy](rng, "zip", archive))
    return FuzzInput(index, fmt, chosen.name, strategy, params, folder, archive)


def _draw_strategy(rng, fmt: str) -> str:
    names = list(MUTATIONS[fmt])
    weights = np.array([_NONE_WEIGHT if name == "none" else 1.0 for name in names])
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _mutated_copy(rng, fmt: str, seeds: list[Seed], folder: Path, strategy: str | None = None):
    candidates = [s for s in seeds if s.fmt == fmt]
    if not candidates:
        raise ValueError(f"no seed of format {fmt}")
    chosen = candidates[int(rng.integers(len(candidates)))]
    strategy = strategy or _draw_strategy(rng, fmt)
    seed_home = chosen.path if chosen.path.is_dir() else chosen.path.parent
    shutil.copytree(seed_home, folder / seed_home.name)
    path = folder / seed_home.name if chosen.path.is_dir() else folder / seed_home.name / chosen.path.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            params = MUTATIONS[fmt][strategy](rng, fmt, path)
        except Exception as err:  # a writer that refuses a value: the input stays as far as it got
            params = {"writer_refused": f"{type(err).__name__}: {err}"[:200]}
    return chosen, strategy, params, path
