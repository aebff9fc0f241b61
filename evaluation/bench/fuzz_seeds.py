"""Seeds of the reader fuzz harness: the real files of ``../shared/realdata`` (copied, never touched) and
small files written here by each format's own writer (pydicom, wfdb, nibabel, Pillow, a ``.vol`` packer)."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata"


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
