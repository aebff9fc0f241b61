"""Fuzz medfm's readers with hostile files: every outcome must be an array or a MedfmReadError.

Seeds are the DICOM, WFDB, NIfTI, PNG and Heidelberg ``.vol`` files of ``../shared/realdata``
(copied, never touched) and small files written here by each format's own writer. An input
is a seed after one named mutation: truncation, flipped bytes, absurd header values written
through the format's writer, DICOM elements with a wrong VR, WFDB headers whose lead count
disagrees with the data or whose ``.dat`` is gone, and zips of any of these. Each input goes
to every reader that applies and to ``medfm inspect`` (``inspect_path`` and both renderings),
one call at a time in a spawned worker process, under a wall-clock bound and an address-space
cap (``RLIMIT_AS`` = the worker's footprint after its imports + ``memory_cap``).

Outcomes: ``decoded`` (an array of the documented dtype and rank, finite, with positive
spacing; or inspect's description) and ``read_error`` (a ``MedfmReadError``) are fine. The
bugs: ``exception`` (any other exception), ``timeout``, ``memory`` (a ``MemoryError``, even one
a reader caught and re-raised as a ``MedfmReadError``: the allocation was attempted), ``crash``
(the worker died) and ``bad_array`` (an array no reader should return). Failing inputs are
copied to ``--failures`` with a ``case.json`` that says how to reproduce them.

Randomness is a numpy ``default_rng([seed, index])`` per input rather than hypothesis: every
input is then reproducible alone (``--only INDEX``) with no example database or shrinking.

    python evaluation/bench/fuzz_readers.py --inputs 3000 --seed 0 --json fuzz.json
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib
import io
import json
import logging
import multiprocessing
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_CAP = 2 * 1024**3
BUG_OUTCOMES = ("exception", "timeout", "memory", "crash", "bad_array")
_STARTUP_TIMEOUT_S = 180.0  # a worker imports pydicom, nibabel, wfdb, PIL: slow on a busy machine
_THIS = Path(__file__).stem  # workers import readers defined here under this name
_INSPECT = f"{_THIS}:inspect_like_cli"

# Readers each format's inputs go to ("module:function"); every format also goes to inspect.
READERS: dict[str, tuple[str, ...]] = {
    "dicom": ("medfm.io.dicom:read_dicom_image", "medfm.io.dicom:read_radiograph", _INSPECT),
    "dicom_series": ("medfm.io.dicom_series:read_dicom_series", _INSPECT),
    "nifti": ("medfm.io.nifti:read_nifti", _INSPECT),
    "png": ("medfm.io.images:read_photo", _INSPECT),
    "wfdb": ("medfm.io.wfdb:read_ecg", _INSPECT),
    "heidelberg_vol": ("medfm.io.oct_vendor:read_heidelberg_vol", "medfm.io.oct_vendor:read_heidelberg_vol_slo",
                       _INSPECT),
    "zip": (f"{_THIS}:read_zipped_study",),
}
FORMATS = tuple(READERS)
# NIfTI float images may hold NaN on purpose (masked statistical maps); every other reader promises finite values.
_NAN_ALLOWED = ("medfm.io.nifti:read_nifti",)
# What the worker imports before it caps its address space, so imports are not charged to a reader.
_PRELOAD = ("medfm.io.dicom", "medfm.io.dicom_series", "medfm.io.nifti", "medfm.io.images", "medfm.io.wfdb",
            "medfm.io.oct_vendor", "medfm.io.inspect", "medfm.io.archive", "pydicom.pixels", "PIL.PngImagePlugin")


# ---------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seed:
    """A starting file, in a folder of its own: ``path`` is a file, a series folder or a WFDB record."""

    fmt: str
    name: str
    path: Path
    real: bool


def make_seeds(folder: Path, realdata: Path | None = REALDATA, max_seed_bytes: int | None = None) -> list[Seed]:
    """Write the generated seeds into ``folder`` and copy the real ones there (originals stay as they are).

    ``max_seed_bytes`` leaves out real seeds larger than that (all of a series' or record's files together).
    """
    seeds = _generated_seeds(folder)
    if realdata is not None and realdata.is_dir():
        for fmt, name, files, reader_path in _real_seed_files(realdata):
            if max_seed_bytes is not None and sum(f.stat().st_size for f in files) > max_seed_bytes:
                continue
            home = folder / "real" / name
            home.mkdir(parents=True)
            for file in files:
                shutil.copyfile(file, home / file.name)
            seeds.append(Seed(fmt, name, home / reader_path, real=True))
    return seeds


def _real_seed_files(realdata: Path) -> Iterator[tuple[str, str, list[Path], str]]:
    """(format, seed name, files, path the readers get relative to the seed's folder)."""
    for path in sorted(realdata.rglob("*")):
        if not path.is_file() or path.stat().st_size == 0:
            continue
        rel = path.relative_to(realdata)
        with path.open("rb") as handle:
            head = handle.read(352)
        name = "_".join(rel.parts)
        if rel.parts[0] == "dicom_ct_series":
            files = sorted(p for p in path.parent.iterdir() if p.is_file())
            if path == files[0]:  # the series once, by its folder, and its first slice alone
                yield "dicom_series", "_".join(rel.parts[:2]), files, ""
                yield "dicom", name, [path], path.name
        elif head[128:132] == b"DICM" or path.suffix == ".dcm":
            yield "dicom", name, [path], path.name
        elif path.suffix == ".hea":
            files = [path, *_wfdb_signal_files(path)]
            yield "wfdb", name, [f for f in files if f.is_file()], path.stem
        elif path.name.endswith((".nii", ".nii.gz")):
            yield "nifti", name, [path], path.name
        elif head.startswith(b"\x89PNG"):
            yield "png", name, [path], path.name
        elif head.startswith(b"HSF-OCT-"):
            yield "heidelberg_vol", name, [path], path.name


def _wfdb_signal_files(header: Path) -> list[Path]:
    names = []
    lines = [line for line in header.read_text(errors="replace").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("#")]
    for line in lines[1:]:
        token = line.split()[0]
        if token not in names and "/" not in token and token != "~":
            names.append(token)
    return [header.parent / name for name in names]


def _generated_seeds(folder: Path) -> list[Seed]:
    import nibabel as nib
    import pydicom
    import wfdb
    from PIL import Image as PILImage
    from pydicom.uid import RLELossless

    rng = np.random.default_rng(0)
    seeds = []

    def home(name: str) -> Path:
        path = folder / "generated" / name
        path.mkdir(parents=True)
        return path

    cr = _dicom_dataset("CR", rng.integers(0, 4096, (48, 40)).astype(np.uint16), PixelSpacing=[0.2, 0.2])
    dx = _dicom_dataset("DX", rng.integers(0, 4096, (40, 48)).astype(np.uint16), photometric="MONOCHROME1",
                        ImagerPixelSpacing=[0.15, 0.15], RescaleSlope=2.0, RescaleIntercept=-100.0)
    frames = _dicom_dataset("OPT", rng.integers(0, 255, (4, 24, 20)).astype(np.uint8),
                            sop_class="1.2.840.10008.5.1.4.1.1.77.1.5.4", SliceThickness=0.05,
                            PixelSpacing=[0.01, 0.02])
    rgb = _dicom_dataset("OP", rng.integers(0, 255, (20, 24, 3)).astype(np.uint8), photometric="RGB",
                         sop_class="1.2.840.10008.5.1.4.1.1.77.1.5.1")
    rle = _dicom_dataset("CR", rng.integers(0, 4096, (32, 32)).astype(np.uint16), PixelSpacing=[0.3, 0.3])
    rle.compress(RLELossless, encoding_plugin="pydicom")
    for name, ds in (("cr_mono2.dcm", cr), ("dx_mono1.dcm", dx), ("multiframe.dcm", frames), ("rgb.dcm", rgb),
                     ("cr_rle.dcm", rle)):
        path = home(name) / name
        ds.save_as(path, enforce_file_format=True)
        seeds.append(Seed("dicom", f"gen_{name}", path, real=False))

    series = home("ct_series") / "ct_series"
    series.mkdir()
    series_uid = pydicom.uid.generate_uid()
    for k in range(3):
        pixels = rng.integers(0, 2000, (16, 16)).astype(np.int16)
        ds = _dicom_dataset("CT", pixels, sop_class="1.2.840.10008.5.1.4.1.1.2", PixelSpacing=[0.7, 0.7],
                            ImageOrientationPatient=[1, 0, 0, 0, 1, 0], ImagePositionPatient=[0.0, 0.0, 2.5 * k],
                            SliceThickness=2.5, RescaleSlope=1.0, RescaleIntercept=-1024.0,
                            SeriesInstanceUID=series_uid, InstanceNumber=3 - k)
        ds.save_as(series / f"slice{k}.dcm", enforce_file_format=True)
    seeds.append(Seed("dicom_series", "gen_ct_series", series, real=False))

    from medfm.keys import STANDARD_LEADS

    t = np.arange(1000) / 500.0
    signal = np.stack([np.sin(2 * np.pi * (k + 1) * t) for k in range(12)], axis=1)
    for name, fmt in (("ecg12_fmt16", "16"), ("ecg12_fmt212", "212")):
        record_home = home(name)
        wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=signal, fmt=[fmt] * 12,
                    adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(record_home))
        seeds.append(Seed("wfdb", f"gen_{name}", record_home / name, real=False))

    volume = rng.integers(-1000, 1000, (10, 9, 8)).astype(np.int16)
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    for name, image in (("volume.nii", nib.Nifti1Image(volume, affine)),
                        ("volume.nii.gz", nib.Nifti1Image(volume, affine)),
                        ("volume_nifti2.nii", nib.Nifti2Image(volume.astype(np.float32), affine))):
        path = home(name) / name
        nib.save(image, path)
        seeds.append(Seed("nifti", f"gen_{name}", path, real=False))

    for name, pil in (
        ("gray.png", PILImage.fromarray(rng.integers(0, 255, (30, 40)).astype(np.uint8), "L")),
        ("rgb.png", PILImage.fromarray(rng.integers(0, 255, (30, 40, 3)).astype(np.uint8), "RGB")),
        ("gray16.png", PILImage.fromarray(rng.integers(0, 65535, (30, 40)).astype(np.uint16))),
        ("palette.png", PILImage.fromarray(rng.integers(0, 255, (30, 40, 3)).astype(np.uint8), "RGB").quantize(16)),
    ):
        path = home(name) / name
        pil.save(path)
        seeds.append(Seed("png", f"gen_{name}", path, real=False))

    path = home("oct.vol") / "oct.vol"
    path.write_bytes(_vol_bytes(rng.random((3, 16, 12)).astype(np.float32), rng.integers(0, 255, (8, 8))))
    seeds.append(Seed("heidelberg_vol", "gen_oct.vol", path, real=False))
    return seeds


def _dicom_dataset(modality: str, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                   sop_class: str = "1.2.840.10008.5.1.4.1.1.1", **fields: Any):
    """A minimal uncompressed DICOM dataset: (H, W), (F, H, W) grey or (H, W, 3) RGB pixels."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, modality
    colour = photometric == "RGB"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    if pixels.ndim == 3 and not colour:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3 if colour else 1), photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    for name, value in fields.items():
        setattr(ds, name, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def _vol_bytes(bscans: np.ndarray, slo: np.ndarray, bscan_header_size: int = 256) -> bytes:
    """A Heidelberg .vol raw export: 2048-byte header, SLO bytes, then per B-scan its header and float32 data."""
    n, size_z, size_x = bscans.shape
    header = bytearray(2048)
    struct.pack_into("<12siii3dii2did4sQii", header, 0, b"HSF-OCT-103", size_x, n, size_z, 0.0115, 0.12, 0.0039,
                     slo.shape[1], slo.shape[0], 0.0114, 0.0114, 30, 0.0, b"OD", 0, 3, bscan_header_size)
    parts = [bytes(header), slo.astype(np.uint8).tobytes()]
    for bscan in bscans:
        parts += [b"HSF-BS-103".ljust(bscan_header_size, b"\0"), bscan.astype("<f4").tobytes()]
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# Mutations: each takes (rng, the input's copy of the seed) and returns a description of what it did
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Readers the harness itself provides (run in the worker)
# ---------------------------------------------------------------------------------------------
def inspect_like_cli(path: str | Path) -> dict:
    """What ``medfm inspect PATH`` and ``medfm inspect --json PATH`` compute, without printing it."""
    from medfm.io.inspect import format_inspection, inspect_path

    info = inspect_path(path)
    json.dumps(info, indent=2, default=str)
    format_inspection(info)
    return info


def read_zipped_study(path: str | Path) -> dict:
    """A zip as an upload is handled: unpacked by ``medfm.io.archive``, then its one study inspected."""
    from medfm.io.archive import extract_zip

    with tempfile.TemporaryDirectory(prefix="medfm-fuzz-zip-") as tmp:
        root = extract_zip(path, tmp)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        headers = [p for p in files if p.suffix == ".hea"]
        if len(headers) == 1:
            study = headers[0]
        elif len(files) == 1 or len({p.parent for p in files}) != 1:
            study = files[0] if files else root
        else:
            study = files[0].parent
        return inspect_like_cli(study)


# ---------------------------------------------------------------------------------------------
# Workers: a spawned process per job, its address space capped, one reader call at a time
# ---------------------------------------------------------------------------------------------
def _worker_main(conn, memory_cap: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # nibabel and wfdb log about the broken files they are given
    for module in _PRELOAD:
        importlib.import_module(module)
    for spec in {s for specs in READERS.values() for s in specs}:
        _resolve(spec)
    baseline = _address_space_bytes()
    limit = baseline + memory_cap
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    conn.send({"baseline_bytes": baseline, "limit_bytes": limit})
    while (task := conn.recv()) is not None:
        result = _call_reader(*task)
        conn.send(result)
        if result["outcome"] == "memory":
            return  # the heap may be fragmented or half-full: the next call gets a fresh worker


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _resolve(spec: str) -> Callable:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _call_reader(spec: str, path: str) -> dict:
    from medfm.errors import MedfmReadError

    start = time.perf_counter()
    try:
        value = _resolve(spec)(path)
    except MemoryError as err:
        result = {"outcome": "memory", "error_type": "MemoryError", "message": str(err)[:300],
                  "traceback": traceback.format_exc()[-3000:]}
    except MedfmReadError as err:
        result = {"outcome": "read_error", "error_type": type(err).__name__, "message": str(err)[:300]}
        if _caused_by_memory_error(err):
            result.update(outcome="memory", traceback=traceback.format_exc()[-3000:],
                          message=f"MemoryError inside the reader, re-raised as {type(err).__name__}: {err}"[:300])
    except (Exception, SystemExit) as err:
        result = {"outcome": "exception", "error_type": f"{type(err).__module__}.{type(err).__qualname__}",
                  "message": str(err)[:300], "traceback": traceback.format_exc()[-3000:]}
    except BaseException as err:  # a Rust extension's panic (pyo3's PanicException) is a BaseException
        if isinstance(err, KeyboardInterrupt):
            raise
        result = {"outcome": "exception", "error_type": f"{type(err).__module__}.{type(err).__qualname__}",
                  "message": str(err)[:300], "traceback": traceback.format_exc()[-3000:]}
    else:
        problem = check_result(value, allow_nan=spec in _NAN_ALLOWED)
        result = {"outcome": "bad_array", "message": problem} if problem else {"outcome": "decoded"}
    result["seconds"] = round(time.perf_counter() - start, 4)
    return result


def _caused_by_memory_error(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MemoryError):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def check_result(value: Any, allow_nan: bool = False) -> str | None:
    """Why a reader's return value cannot be trusted, or None when it can.

    An image must be float32 of rank 3 or 4 with no empty axis, finite (NaN allowed only for
    NIfTI), with finite spacing, positive along every axis longer than one voxel, and a finite
    affine; an ECG ``(12, T)`` float32,
    finite, at a finite positive sampling rate. inspect's dict is checked by the call itself.
    """
    if isinstance(value, dict):
        return None
    array = getattr(value, "array", getattr(value, "signal", None))
    if not isinstance(array, np.ndarray):
        return f"returned {type(value).__name__} without an array"
    if array.dtype != np.float32:
        return f"dtype {array.dtype}, expected float32"
    if array.size == 0:
        return f"empty array {array.shape}"
    finite = np.isfinite(array) | (np.isnan(array) if allow_nan else False)
    if not finite.all():
        return f"{int((~finite).sum())} non-finite values"
    if hasattr(value, "signal"):
        if array.ndim != 2 or array.shape[0] != 12:
            return f"ECG shape {array.shape}, expected (12, T)"
        return None if np.isfinite(value.fs) and value.fs > 0 else f"sampling rate {value.fs}"
    if array.ndim not in (3, 4):
        return f"image rank {array.ndim}, expected (C, H, W) or (C, D, H, W)"
    spacing = np.asarray(value.spacing, dtype=np.float64)
    extent = np.asarray(array.shape[1:])  # a single-voxel axis may have no thickness (a 2D NIfTI)
    if not (np.isfinite(spacing).all() and ((spacing > 0) | (extent == 1)).all()):
        return f"spacing {tuple(value.spacing)}"
    affine = getattr(value, "affine", None)
    if affine is not None and not np.isfinite(affine).all():
        return "affine has non-finite values"
    return None


class _Worker:
    def __init__(self, ctx, memory_cap: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, memory_cap), daemon=True)
        with _single_threaded_children():
            self.process.start()
        child.close()
        if not self.conn.poll(_STARTUP_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"fuzz worker did not start in {_STARTUP_TIMEOUT_S:.0f} s")
        self.limits = self.conn.recv()
        self.task: tuple | None = None
        self.deadline = 0.0

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Spawned workers inherit the environment: one BLAS/OpenMP thread each (the CI machine has 2 cores)."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class ReaderPool:
    """``jobs`` spawned workers; ``run(calls)`` yields each call with its outcome as it finishes.

    A call that overruns ``timeout_s`` has its worker killed (outcome ``timeout``); a worker
    that dies is a ``crash`` (``memory`` when killed by SIGKILL, the kernel's OOM answer). Each
    is replaced by a fresh worker.
    """

    def __init__(self, jobs: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S, memory_cap: int = DEFAULT_MEMORY_CAP):
        self.ctx = multiprocessing.get_context("spawn")
        self.timeout_s, self.memory_cap = timeout_s, memory_cap
        self.workers = [_Worker(self.ctx, memory_cap) for _ in range(max(1, jobs))]
        self.limits = self.workers[0].limits

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
            worker.stop()

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, calls: Iterator[tuple[Any, str, str]]) -> Iterator[tuple[Any, dict]]:
        """``calls``: (tag, reader spec, path); pulled lazily, as workers become free."""
        calls = iter(calls)
        exhausted = False
        while True:
            for slot, worker in enumerate(self.workers):
                if worker.task is None and not exhausted:
                    task = next(calls, None)
                    if task is None:
                        exhausted = True
                        break
                    self._send(slot, task)
            busy = [w for w in self.workers if w.task is not None]
            if not busy:
                return
            now = time.monotonic()
            ready = wait([w.conn for w in busy], timeout=max(0.0, min(w.deadline for w in busy) - now))
            for slot, worker in enumerate(self.workers):
                if worker.task is None:
                    continue
                if worker.conn in ready:
                    yield worker.task[0], self._receive(slot)
                elif time.monotonic() >= worker.deadline:
                    task = worker.task
                    self._replace(slot)
                    yield task[0], {"outcome": "timeout", "message": f"no answer in {self.timeout_s} s",
                                    "seconds": self.timeout_s}

    def _send(self, slot: int, task: tuple) -> _Worker:
        worker = self.workers[slot]
        try:
            worker.conn.send(task[1:])
        except (OSError, ValueError):  # the worker left after a MemoryError: start another and resend
            worker = self._replace(slot)
            worker.conn.send(task[1:])
        worker.task, worker.deadline = task, time.monotonic() + self.timeout_s
        return worker

    def _receive(self, slot: int) -> dict:
        worker = self.workers[slot]
        try:
            result = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(5)
            code = worker.process.exitcode
            outcome = "memory" if code == -9 else "crash"
            result = {"outcome": outcome, "message": f"worker died, exit code {code}", "seconds": None}
            self._replace(slot)
            return result
        worker.task = None
        if result["outcome"] == "memory":
            self._replace(slot)
        return result

    def _replace(self, slot: int) -> _Worker:
        self.workers[slot].stop()
        self.workers[slot] = _Worker(self.ctx, self.memory_cap)
        return self.workers[slot]


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
@dataclass
class _Tally:
    inputs: int = 0
    calls: int = 0
    outcomes: Counter = field(default_factory=Counter)
    read_errors: Counter = field(default_factory=Counter)
    variants: Counter = field(default_factory=Counter)


def run(
    n_inputs: int = 150,
    seed: int = 0,
    *,
    formats: tuple[str, ...] | None = None,
    readers: dict[str, tuple[str, ...]] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_cap: int = DEFAULT_MEMORY_CAP,
    jobs: int = 1,
    realdata: Path | None = REALDATA,
    max_seed_bytes: int | None = None,
    failures_dir: Path | None = None,
    only: list[int] | None = None,
    progress: bool = False,
) -> dict:
    """Fuzz ``n_inputs`` inputs (or just the indices in ``only``); returns the JSON-able summary.

    Args:
        formats: formats to draw inputs from (default all of :data:`FORMATS`).
        readers: per format, the "module:function" readers to call (default :data:`READERS`);
            tests inject fake readers here.
        timeout_s: wall-clock bound per reader call.
        memory_cap: address space a reader call may use above the worker's footprint after imports.
        max_seed_bytes: leave out real seeds larger than this (all their files together).
        failures_dir: where each input with a bug is copied, with ``case.json``.
    """
    formats = tuple(formats or FORMATS)
    readers = {**READERS, **(readers or {})}
    start = time.perf_counter()
    tallies: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    bugs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="medfm-fuzz-") as tmp:
        work = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seeds = make_seeds(work / "seeds", realdata, max_seed_bytes)
        indices = list(only) if only is not None else list(range(n_inputs))
        pending: dict[int, tuple[FuzzInput, list[dict]]] = {}

        def calls() -> Iterator[tuple[Any, str, str]]:
            for index in indices:
                item = make_input(index, seed, seeds, formats, work / "inputs")
                specs = readers[item.fmt]
                pending[index] = (item, [])
                tallies[item.fmt, item.strategy].inputs += 1
                variant = item.params.get("variant") or item.params.get("inner_strategy")
                if variant:
                    tallies[item.fmt, item.strategy].variants[variant] += 1
                for spec in specs:
                    target = item.path.with_name(item.path.name + ".hea") if (
                        item.fmt == "wfdb" and spec == _INSPECT) else item.path
                    yield (index, spec), spec, str(target)

        with ReaderPool(jobs, timeout_s, memory_cap) as pool:
            limits = pool.limits
            done = 0
            for (index, spec), result in pool.run(calls()):
                item, results = pending[index]
                results.append({"reader": spec, **result})
                tally = tallies[item.fmt, item.strategy]
                tally.calls += 1
                tally.outcomes[result["outcome"]] += 1
                if result["outcome"] == "read_error":
                    tally.read_errors[result["error_type"]] += 1
                if len(results) == len(readers[item.fmt]):
                    bugs += _finish_input(item, results, seed, failures_dir)
                    del pending[index]
                    done += 1
                    if progress and done % 100 == 0:
                        print(f"  {done}/{len(indices)} inputs, {len(bugs)} bug(s), "
                              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return _summary(tallies, bugs, seeds, seed, len(indices), time.perf_counter() - start, timeout_s, memory_cap,
                    jobs, limits)


def _finish_input(item: FuzzInput, results: list[dict], seed: int, failures_dir: Path | None) -> list[dict]:
    found = []
    for result in results:
        if result["outcome"] not in BUG_OUTCOMES:
            continue
        found.append({"input": item.index, "format": item.fmt, "seed_file": item.seed, "strategy": item.strategy,
                      "params": item.params, **result})
    if found and failures_dir is not None:
        case = failures_dir / f"{item.index:06d}-{item.fmt}-{item.strategy}"
        if case.exists():
            shutil.rmtree(case)
        shutil.copytree(item.folder, case / "input")
        reader_path = case / "input" / item.path.relative_to(item.folder)
        for bug in found:
            bug["saved_input"] = str(reader_path)
        reproduce = f"python evaluation/bench/fuzz_readers.py --seed {seed} --only {item.index}"
        (case / "case.json").write_text(json.dumps({"reproduce": reproduce, "bugs": found}, indent=2, default=str))
    shutil.rmtree(item.folder, ignore_errors=True)
    return found


def _summary(tallies, bugs, seeds, seed, n_inputs, seconds, timeout_s, memory_cap, jobs, limits) -> dict:
    rows = []
    for (fmt, strategy), tally in sorted(tallies.items()):
        rows.append({
            "format": fmt, "strategy": strategy, "inputs": tally.inputs, "calls": tally.calls,
            "decoded": tally.outcomes["decoded"], "read_error": tally.outcomes["read_error"],
            "bugs": sum(tally.outcomes[o] for o in BUG_OUTCOMES),
            "outcomes": dict(tally.outcomes), "read_error_types": dict(tally.read_errors),
            "variants": dict(sorted(tally.variants.items())),
        })
    totals = Counter()
    for row in rows:
        totals.update(row["outcomes"])
    return {
        "seed": seed, "inputs": n_inputs, "calls": sum(r["calls"] for r in rows), "seconds": round(seconds, 1),
        "timeout_s": timeout_s, "memory_cap_bytes": memory_cap, "jobs": jobs,
        "worker_baseline_bytes": limits["baseline_bytes"], "worker_limit_bytes": limits["limit_bytes"],
        "seeds": {"generated": sum(not s.real for s in seeds), "real": sum(s.real for s in seeds),
                  "by_format": dict(Counter(s.fmt for s in seeds))},
        "outcomes": dict(totals), "bugs_found": len(bugs), "table": rows, "bugs": bugs,
    }


def format_table(summary: dict) -> str:
    """The summary as a plain-text table: format x mutation, inputs, calls and outcomes."""
    header = f"{'format':<15}{'mutation':<14}{'inputs':>7}{'calls':>7}{'decoded':>9}{'MedfmReadError':>16}{'bugs':>6}"
    lines = [header, "-" * len(header)]
    for row in summary["table"]:
        lines.append(f"{row['format']:<15}{row['strategy']:<14}{row['inputs']:>7}{row['calls']:>7}"
                     f"{row['decoded']:>9}{row['read_error']:>16}{row['bugs']:>6}")
    totals = summary["outcomes"]
    lines.append("-" * len(header))
    lines.append(f"{'total':<29}{summary['inputs']:>7}{summary['calls']:>7}{totals.get('decoded', 0):>9}"
                 f"{totals.get('read_error', 0):>16}{summary['bugs_found']:>6}")
    lines.append(f"{summary['seconds']} s, {summary['jobs']} worker(s), {summary['timeout_s']} s per call, "
                 f"address space capped at {summary['worker_limit_bytes'] / 2**30:.2f} GiB "
                 f"({summary['memory_cap_bytes'] / 2**30:.2f} GiB above the worker's "
                 f"{summary['worker_baseline_bytes'] / 2**30:.2f} GiB)")
    for bug in summary["bugs"]:
        lines.append(f"BUG input {bug['input']} {bug['format']}/{bug['strategy']} {bug['params']} -> {bug['reader']}: "
                     f"{bug['outcome']} {bug.get('error_type', '')} {bug.get('message', '')}"[:400])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=150, help="number of mutated inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, nargs="+", help="run just these input indices (to reproduce a failure)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per reader call")
    parser.add_argument("--memory-cap", type=float, default=DEFAULT_MEMORY_CAP / 2**30,
                        help="GiB of address space a reader call may add to the worker's")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--max-seed-bytes", type=int, help="leave out real seeds larger than this")
    parser.add_argument("--failures", type=Path, default=Path("fuzz-failures"), help="folder for failing inputs")
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args(argv)
    summary = run(args.inputs, args.seed, formats=tuple(args.formats) if args.formats else None,
                  timeout_s=args.timeout, memory_cap=int(args.memory_cap * 2**30), jobs=args.jobs,
                  max_seed_bytes=args.max_seed_bytes, failures_dir=args.failures, only=args.only, progress=True)
    print(format_table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    if summary["bugs_found"]:
        print(f"{summary['bugs_found']} bug(s); failing inputs under {args.failures}/", file=sys.stderr)
    return 1 if summary["bugs_found"] else 0


if __name__ == "__main__":
    sys.exit(main())
