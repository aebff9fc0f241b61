"""Chest CT phantom in Hounsfield units and the one-file-per-slice DICOM series writer.

Patient coordinates are DICOM's LPS in mm: ``x`` to the patient's left, ``y``
posterior, ``z`` superior, origin at the centre of the scanned range. Slice
files are written in a shuffled order under names unrelated to slice order,
so a reader has to sort by ImagePositionPatient.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid
from scipy.ndimage import gaussian_filter

from medfm.atomic import write_bytes_atomic
from medfm.cohort.synth.devices import NamedDevice
from medfm.cohort.synth.dicom_header import StudyHeader, base_dataset

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RESCALE_INTERCEPT = -1024.0
HU_AIR, HU_LUNG, HU_FAT, HU_SOFT, HU_BONE = -1000.0, -850.0, -100.0, 40.0, 700.0


@dataclass(frozen=True)
class CtDevice(NamedDevice):
    """One CT scanner protocol: in-plane grid, slices, noise and kernel sharpness."""

    name: str
    size: int
    spacing_mm: float
    n_slices: int
    slice_mm: float
    noise_hu: float
    blur_px: float
    kernel: str

    def slice_z(self) -> np.ndarray:
        """z of each slice centre, superior first (mm)."""
        half = (self.n_slices - 1) / 2 * self.slice_mm
        return np.linspace(half, -half, self.n_slices)


CT_DEVICES: dict[str, CtDevice] = {
    d.name: d
    for d in (
        CtDevice("Axion CT-64", 128, 2.8, 40, 5.0, 12.0, 0.4, "LUNG"),
        CtDevice("Brevis CT-16", 112, 3.2, 32, 6.25, 25.0, 0.8, "STANDARD"),
    )
}


@dataclass(frozen=True)
class ChestCtAnatomy:
    """Per-patient chest shape and, whether present or not, where a nodule would grow."""

    body_a: float  # lateral semi-axis (mm)
    body_b: float  # antero-posterior semi-axis
    lung_scale: float
    nodule_centre: tuple[float, float, float]  # x, y, z (mm)
    nodule_mm: float  # diameter when present
    texture_seed: int


_LUNG_X, _LUNG_Y, _LUNG_Z = 72.0, 8.0, -20.0  # lung ellipsoid centres (x = +/- _LUNG_X)
_LUNG_AXES = (46.0, 68.0, 125.0)


def sample_ct_anatomy(rng: np.random.Generator) -> ChestCtAnatomy:
    """Draws a chest; the nodule site lies well inside one lung, clear of the heart."""
    scale = float(rng.uniform(0.92, 1.05))
    side = (-1.0, 1.0)[int(rng.integers(2))]
    ax, ay, az = (scale * a for a in _LUNG_AXES)
    while True:  # redraw sites next to the heart, where a nodule would not sit in aerated lung
        u = rng.uniform(-1, 1, 3)
        u *= 0.55 / max(1.0, float(np.linalg.norm(u)))
        centre = (side * (_LUNG_X * scale + 0.3 * abs(u[0]) * ax), _LUNG_Y + u[1] * ay,
                  float(np.clip(_LUNG_Z + u[2] * az, -80.0, 80.0)))
        if _heart_distance(np.array(centre[0]), np.array(centre[1]), np.array(centre[2]), scale) > 1.35:
            break
    return ChestCtAnatomy(float(rng.uniform(150, 172)) * scale, float(rng.uniform(100, 120)) * scale, scale,
                          centre, float(rng.uniform(5.0, 15.0)), int(rng.integers(2**31)))


def nodule_location(anatomy: ChestCtAnatomy) -> str:
    """Lobe of the nodule site, for the report."""
    x, y, z = anatomy.nodule_centre
    side = "left" if x > 0 else "right"  # LPS: +x is the patient's left
    if z > 10.0:
        return f"{side} upper lobe"
    if side == "right" and z > -35.0 and y < _LUNG_Y:
        return "right middle lobe"
    if side == "left" and z > -35.0 and y < _LUNG_Y:
        return "lingula"
    return f"{side} lower lobe"


def _heart_distance(x: np.ndarray, y: np.ndarray, z: np.ndarray, scale: float) -> np.ndarray:
    """Normalised ellipsoid radius of the heart (1 on its surface)."""
    return np.sqrt(((x - 18.0 * scale) / (58.0 * scale)) ** 2 + ((y + 25.0 * scale) / (48.0 * scale)) ** 2
                   + ((z + 70.0) / 55.0) ** 2)


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    return np.clip(0.5 + d / width, 0.0, 1.0)


def render_hu(anatomy: ChestCtAnatomy, device: CtDevice, nodule_mm: float, table_mm: float,
              rng: np.random.Generator) -> np.ndarray:
    """Draws the HU volume (slices superior first, rows posterior-ward, columns to patient's left).

    Args:
        anatomy: the patient's chest.
        device: grid and slices.
        nodule_mm: nodule diameter, 0 for none.
        table_mm: shift of the scanned range along z (differs between visits).
        rng: per-visit generator (noise).

    Returns:
        float32 (slices, rows, columns) in HU.
    """
    n, sp = device.size, device.spacing_mm
    axis = ((np.arange(n) - (n - 1) / 2) * sp).astype(np.float32)
    # Shapes are separable into an in-plane part and a per-slice part wherever possible:
    # 3-D arithmetic on every voxel is what makes a phantom slow.
    zs = (device.slice_z() + table_mm).astype(np.float32)
    y, x = axis[:, None], axis[None, :]
    s = anatomy.lung_scale
    px = sp / 2
    body_r = np.sqrt((x / anatomy.body_a) ** 2 + (y / anatomy.body_b) ** 2)
    base = np.where(body_r < 0.9, np.float32(HU_SOFT), np.where(body_r < 1.0, np.float32(HU_FAT), np.float32(HU_AIR)))
    hu = np.repeat(base[None], len(zs), axis=0)
    ring = np.nonzero((body_r > 0.8) & (body_r < 0.87))
    theta = np.arctan2(y, x)[ring]
    ribs = np.cos(zs[:, None] * np.float32(2 * np.pi / 28.0) + 2.0 * theta[None, :]) > 0.55
    hu[:, ring[0], ring[1]] = np.where(ribs, np.float32(HU_BONE), hu[:, ring[0], ring[1]])

    # Lungs: two ellipsoids; at height z each is an ellipse of relative radius r(z).
    ax, ay, az = (s * a for a in _LUNG_AXES)
    q = np.minimum(*(np.sqrt(((x - side * _LUNG_X * s) / ax) ** 2 + ((y - _LUNG_Y) / ay) ** 2) for side in (-1, 1)))
    r_lung = np.sqrt(np.clip(1.0 - ((zs - _LUNG_Z) / az) ** 2, 0.0, None))[:, None, None]
    lung = _soft((r_lung - q[None]) * ax, px)
    heart_q = _heart_distance(x, y, np.float32(-70.0), s)  # in-plane part (at the heart's centre height)
    r_heart = np.sqrt(np.clip(1.0 - ((zs + 70.0) / 55.0) ** 2, 0.0, None))[:, None, None]
    lung *= 1.0 - _soft((r_heart - heart_q[None]) * 50.0, px)
    # Parenchymal texture: one smooth 2-D field that a slice sees through a window sliding
    # one row per slice (a full 3-D field costs more than the rest of the phantom).
    field = np.random.default_rng(anatomy.texture_seed).standard_normal((n + len(zs), n), np.float32)
    field = gaussian_filter(field, 1.2)
    field *= np.float32(20.0) / field.std()
    texture = np.lib.stride_tricks.sliding_window_view(field, (n, n))[:len(zs), 0]
    hu += lung * (np.float32(HU_LUNG) + texture - hu)

    spine = np.sqrt(x**2 + (y - 0.72 * anatomy.body_b) ** 2) < 17.0
    aorta = (np.sqrt((x - 20.0) ** 2 + (y - 0.45 * anatomy.body_b) ** 2) < 13.0) & (body_r < 0.8)
    sternum = (x / 14.0) ** 2 + ((y + 0.9 * anatomy.body_b) / 6.0) ** 2 < 1.0
    hu[:, spine | sternum] = HU_BONE
    hu[:, aorta] = HU_SOFT

    if nodule_mm > 0:  # drawn in its bounding box only
        cx, cy, cz = anatomy.nodule_centre
        width = max(sp, device.slice_mm) / 2
        reach = nodule_mm / 2 + width
        ks = np.nonzero(np.abs(zs - cz) < reach)[0]
        rows = np.nonzero(np.abs(axis - cy) < reach)[0]
        cols = np.nonzero(np.abs(axis - cx) < reach)[0]
        if len(ks) and len(rows) and len(cols):
            box = np.ix_(ks, rows, cols)
            dist = np.sqrt((axis[cols][None, None, :] - cx) ** 2 + (axis[rows][None, :, None] - cy) ** 2
                           + (zs[ks][:, None, None] - cz) ** 2)
            w = _soft(nodule_mm / 2 - dist, width)
            hu[box] = hu[box] * (1.0 - w) + np.float32(HU_SOFT) * w
    if device.blur_px > 0:
        hu = gaussian_filter(hu, (0, device.blur_px, device.blur_px), truncate=2.5)
    shifts = [int(rng.integers(n)) for n in hu.shape]
    hu += np.roll(_noise_bank(device), shifts, axis=(0, 1, 2))
    return hu


@functools.cache
def _noise_bank(device: CtDevice) -> np.ndarray:
    """The scanner's noise field in HU, drawn once from its name; each visit sees it rolled."""
    rng = np.random.default_rng(list(device.name.encode()))
    noise = np.float32(device.noise_hu) * rng.standard_normal((device.n_slices, device.size, device.size), np.float32)
    noise.flags.writeable = False
    return noise


def to_stored(hu: np.ndarray) -> np.ndarray:
    """Stored values with RescaleSlope 1 and RescaleIntercept -1024 (12 bits, unsigned)."""
    return np.clip(np.rint(hu - RESCALE_INTERCEPT), 0, 4095).astype(np.uint16)


def _short_element(group: int, elem: int, vr: bytes, value: str) -> bytes:
    """One explicit-VR little-endian element with a 2-byte length (UI padded with NUL, others with space)."""
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr == b"UI" else b" "
    return struct.pack("<HH2sH", group, elem, vr, len(raw)) + raw


def _instance_uid(entropy: tuple[str, ...], k: int) -> str:
    """``2.25.<128-bit hash>.<k + 101>``: deterministic, and the same length for every slice of a series."""
    digest = hashlib.sha256("|".join(entropy).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}.{k + 101}"


def write_ct_series(folder: Path, stored: np.ndarray, device: CtDevice, header: StudyHeader,
                    table_mm: float, rng: np.random.Generator) -> list[Path]:
    """Writes one file per slice in a shuffled order, named ``CT<nnn>.dcm`` unrelated to slice order.

    pydicom encodes the first slice; the others are that file with the values that
    change from slice to slice (instance UID, instance number, position, pixels)
    patched in place. Every changing value has the same length on every slice, so
    no offset moves; this is about 30 times faster than encoding each slice.

    Returns:
        The file paths, in slice order (superior first).
    """
    folder.mkdir(parents=True, exist_ok=True)
    n_slices = stored.shape[0]
    names = rng.permutation(n_slices) + 1
    ds = base_dataset(header, CT_IMAGE_STORAGE, "CT", device.manufacturer, device.model, series_key="ct-series")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDescription = "CHEST W/O CONTRAST"
    ds.StudyDescription = "CT CHEST"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "FFS"
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[*header.uid_entropy, "ct-frame"])
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [f"{device.spacing_mm:g}"] * 2
    ds.SliceThickness = f"{device.slice_mm:g}"
    ds.SpacingBetweenSlices = f"{device.slice_mm:g}"
    ds.KVP = "120"
    ds.ConvolutionKernel = device.kernel
    ds.Rows = ds.Columns = device.size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = ["-600", "40"], ["1500", "400"]
    x0 = f"{-(device.size - 1) / 2 * device.spacing_mm:g}"
    zs = device.slice_z() + table_mm
    entropy = (*header.uid_entropy, "ct-sop")

    def changing(k: int) -> list[tuple[int, int, bytes, str]]:
        z = f"{zs[k]:07.2f}"  # fixed width: the patched files keep their layout
        return [(0x0002, 0x0003, b"UI", _instance_uid(entropy, k)), (0x0008, 0x0018, b"UI", _instance_uid(entropy, k)),
                (0x0020, 0x0013, b"IS", f"{k + 1:04d}"), (0x0020, 0x0032, b"DS", f"{x0}\\{x0}\\{z}"),
                (0x0020, 0x1041, b"DS", z)]

    first = changing(0)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = first[0][3]
    ds.InstanceNumber, ds.ImagePositionPatient, ds.SliceLocation = first[2][3], first[3][3].split("\\"), first[4][3]
    pixels = [np.ascontiguousarray(stored[k], dtype="<u2").tobytes() for k in range(n_slices)]
    ds.PixelData = pixels[0]
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    template = buf.getvalue()
    offsets = []
    for element in first:
        encoded = _short_element(*element)
        at = template.find(encoded)
        if at < 0 or template.find(encoded, at + 1) >= 0:
            raise RuntimeError(f"cannot locate {element[:2]} in the encoded CT slice")
        offsets.append(at)
    pixel_at = len(template) - len(pixels[0])
    if template[pixel_at:] != pixels[0]:
        raise RuntimeError("pixel data is not the last element of the encoded CT slice")

    paths = [folder / f"CT{names[k]:03d}.dcm" for k in range(n_slices)]
    for k in rng.permutation(n_slices):
        data = bytearray(template)
        for at, element in zip(offsets, changing(int(k)), strict=True):
            encoded = _short_element(*element)
            data[at:at + len(encoded)] = encoded
        data[pixel_at:] = pixels[k]
        write_bytes_atomic(paths[k], bytes(data), durable=False)
    return paths
