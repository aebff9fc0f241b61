"""Retina phantom, macular OCT volumes and the DICOM Ophthalmic Tomography writer.

The eye is described in millimetres on the en-face plane (``x`` to image right,
``y`` downwards, fovea at the origin), so the OCT and the fundus photograph of a
visit show the same drusen at the same places. An OCT volume is a stack of
horizontal B-scans, superior to inferior; rows run in depth (anterior first),
columns along ``x``.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from scipy.ndimage import gaussian_filter

from medfm.atomic import write_bytes_atomic
from medfm.cohort.synth.devices import NamedDevice
from medfm.cohort.synth.dicom_header import StudyHeader, base_dataset, set_instance_uid

OPHTHALMIC_TOMOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
SCAN_WIDTH_MM = 6.0  # macular cube: 6 x 6 mm centred on the fovea


@dataclass(frozen=True)
class OctDevice(NamedDevice):
    """One OCT device: sampling of the cube, speckle and intensity response."""

    name: str
    n_bscans: int
    n_ascans: int
    depth_px: int
    axial_um: float  # depth per row
    speckle_blur_px: float  # larger: coarser speckle grain
    compression: float  # log-response strength
    offset: float  # stored value of an empty A-scan
    gain: float  # stored value range of the brightest band
    noise: float  # noise floor, in reflectivity units

    @property
    def lateral_mm(self) -> float:
        return SCAN_WIDTH_MM / self.n_ascans

    @property
    def bscan_spacing_mm(self) -> float:
        return SCAN_WIDTH_MM / (self.n_bscans - 1)


OCT_DEVICES: dict[str, OctDevice] = {
    d.name: d
    for d in (
        OctDevice("Heliox Spectral-25", 25, 128, 128, 9.0, 0.6, 20.0, 8.0, 235.0, 0.015),
        OctDevice("Quanta SS-49", 49, 96, 128, 7.0, 1.2, 6.0, 22.0, 200.0, 0.02),
    )
}


@dataclass(frozen=True)
class EyeAnatomy:
    """Per-patient eye: which eye is imaged and where its drusen would sit."""

    laterality: str  # "R" or "L"
    drusen: np.ndarray  # (n, 4): x_mm, y_mm, radius_mm, relative height
    retina_thickness_mm: float
    vessel_seed: int


def sample_eye(rng: np.random.Generator) -> EyeAnatomy:
    """Draws a patient's study eye; drusen positions are fixed, whether present or not."""
    n = int(rng.integers(5, 12))
    ang, rad = rng.uniform(0, 2 * np.pi, n), 1.6 * np.sqrt(rng.uniform(0.02, 1.0, n))
    drusen = np.stack([rad * np.cos(ang), rad * np.sin(ang),
                       rng.uniform(0.18, 0.35, n), rng.uniform(0.6, 1.0, n)], axis=1)
    return EyeAnatomy(("R", "L")[int(rng.integers(2))], drusen.astype(np.float32),
                      float(rng.uniform(0.25, 0.3)), int(rng.integers(2**31)))


def drusen_heights_mm(eye: EyeAnatomy, load: float) -> np.ndarray:
    """Heights of the patient's drusen for a visit's drusen load (0 when absent)."""
    return eye.drusen[:, 3] * np.float32(load)


def _bumps(x: np.ndarray, y: np.ndarray, spots: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Sum of dome-shaped elevations (mm) at the given en-face spots."""
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    for (cx, cy, r, _), h in zip(spots, heights, strict=True):
        if h > 0:
            out += h * np.sqrt(np.clip(1.0 - ((x - cx) ** 2 + (y - cy) ** 2) / r**2, 0.0, None))
    return out


def render_reflectivity(eye: EyeAnatomy, device: OctDevice, drusen_load: float,
                        cysts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise-free backscatter of the macular cube on the device's grid.

    Args:
        eye: the patient's eye (drusen spots, thickness).
        device: sampling of the cube.
        drusen_load: drusen height scale in mm (0 for none).
        cysts: (n, 5) intraretinal cysts: x_mm, y_mm, lateral radius, vertical radius, axial half-height (mm).
        rng: per-visit generator (fixation offset).

    Returns:
        float32 array (B-scans, depth, A-scans) in about [0, 1].
    """
    fx, fy = rng.uniform(-0.15, 0.15, 2)  # fixation: fovea slightly off the scan centre
    xs = (np.arange(device.n_ascans) + 0.5) * device.lateral_mm - SCAN_WIDTH_MM / 2 - fx
    ys = np.arange(device.n_bscans) * device.bscan_spacing_mm - SCAN_WIDTH_MM / 2 - fy
    x = xs.astype(np.float32)[None, None, :]
    y = ys.astype(np.float32)[:, None, None]
    d = ((np.arange(device.depth_px) + 0.5) * device.axial_um * 1e-3).astype(np.float32)[None, :, None]
    window = device.depth_px * device.axial_um * 1e-3
    r2 = x**2 + y**2
    nasal = x if eye.laterality == "R" else -x  # the disc lies nasal, image right for a right eye

    bruch = np.float32(0.58 * window) + np.float32(0.006) * r2 + np.float32(0.01) * y  # eye curvature, tilt
    rpe = bruch - _bumps(x, y, eye.drusen, drusen_heights_mm(eye, drusen_load))
    pit = 1.0 - 0.85 * np.exp(-r2 / (2 * 0.4**2))  # inner layers thin out towards the foveola
    scale = eye.retina_thickness_mm / 0.27
    swell = np.zeros_like(r2)
    for cx, cy, rx, ry, hz in cysts:
        swell += 2 * hz * np.sqrt(np.clip(1.0 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2, 0.0, None))
    # Boundaries from the RPE upwards (mm of depth).
    ez_top = rpe - 0.05
    onl_top = ez_top - scale * (0.075 + 0.025 * (1 - pit)) - swell
    opl_top = onl_top - scale * 0.025 * pit
    inl_top = opl_top - scale * 0.035 * pit
    ipl_top = inl_top - scale * 0.07 * pit
    ilm = ipl_top - scale * (0.02 + 0.035 / (1 + np.exp(-(nasal - 1.5) / 0.6))) * pit

    img = np.select(
        [d < ilm, d < ipl_top, d < inl_top, d < opl_top, d < onl_top, d < ez_top - 0.012, d < rpe - 0.03,
         d < rpe, d < bruch, d < bruch + 0.22],
        [np.float32(0.02), np.float32(0.55), np.float32(0.32), np.float32(0.12), np.float32(0.32), np.float32(0.1),
         np.float32(0.55), np.float32(1.0), np.float32(0.4), np.float32(0.3) * np.exp((bruch - d) / 0.12)],
        np.float32(0.05),
    ).astype(np.float32)
    for cx, cy, rx, ry, hz in cysts:
        centre = (onl_top + ez_top) / 2 - 0.01
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((d - centre) / hz) ** 2 < 1.0
        img[inside] = 0.03
    return img


@functools.cache
def _speckle_bank(device: OctDevice) -> np.ndarray:
    """The device's speckle field (mean 1), drawn once from its name; visits see it rolled."""
    rng = np.random.default_rng(list(device.name.encode()))
    shape = (device.n_bscans, device.depth_px, device.n_ascans)
    # Fully developed speckle: exponential intensity, its grain set by the device's optics.
    speckle = rng.standard_exponential(shape, dtype=np.float32)
    speckle = gaussian_filter(speckle, (0, device.speckle_blur_px, device.speckle_blur_px), truncate=2.0)
    speckle /= speckle.mean()
    speckle.flags.writeable = False
    return speckle


def to_stored_volume(refl: np.ndarray, device: OctDevice, rng: np.random.Generator) -> np.ndarray:
    """Adds the noise floor and speckle, applies the device's log response and quantises to uint8.

    Each visit sees the device's speckle field rolled by a random offset along every
    axis (and mirrored at random): as random as a fresh draw to any model, at a
    fraction of the cost.
    """
    shifts = [int(rng.integers(n)) for n in refl.shape]
    speckle = np.roll(_speckle_bank(device), shifts, axis=(0, 1, 2))
    if rng.random() < 0.5:
        speckle = speckle[:, :, ::-1]
    signal = (refl + np.float32(device.noise)) * speckle
    k = np.float32(device.compression)
    y = np.log1p(k * signal) * np.float32(device.gain / np.log1p(k))
    y += np.float32(device.offset + 0.5)
    return np.clip(y, 0, 255).astype(np.uint8)  # + 0.5 then truncation: rounds to nearest


def write_oct_dicom(path: Path, volume: np.ndarray, device: OctDevice, header: StudyHeader, laterality: str) -> None:
    """Writes one multi-frame Ophthalmic Tomography file (one frame per B-scan, superior first).

    PixelSpacing (axial, lateral) and the B-scan spacing (SliceThickness,
    SpacingBetweenSlices) are in the shared functional groups; each frame
    carries its stack position and an ImagePositionPatient in a retina-centred
    frame (x lateral, y superior-to-inferior, z depth; mm).
    """
    ds = base_dataset(header, OPHTHALMIC_TOMOGRAPHY, "OPT", device.manufacturer, device.model,
                      series_key="oct-series")  # its own series: CXR and OCT of a visit share the study
    set_instance_uid(ds, header, "oct-sop")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.SeriesDescription = "Macular Cube 6x6"
    ds.ImageLaterality = laterality
    ds.Laterality = laterality
    ds.AcquisitionDateTime = ds.StudyDate + ds.StudyTime
    ds.NumberOfFrames = volume.shape[0]
    ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.DimensionOrganizationType = "3D"

    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    pixels = np.ascontiguousarray(volume, dtype=np.uint8).tobytes()
    pixels += b"\0" * (len(pixels) % 2)
    # The functional groups (5200,xxxx) are the last elements before the pixel data and depend
    # only on the device, so they are encoded once per device and appended as bytes.
    data = buf.getvalue() + _functional_groups(device) + struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OB", len(pixels))
    write_bytes_atomic(path, data + pixels, durable=False)


@functools.cache
def _functional_groups(device: OctDevice) -> bytes:
    """Shared and per-frame functional groups, explicit VR little endian."""
    measures = Dataset()
    measures.PixelSpacing = [f"{device.axial_um * 1e-3:.4f}", f"{device.lateral_mm:.5f}"]
    measures.SliceThickness = f"{device.bscan_spacing_mm:.5f}"
    measures.SpacingBetweenSlices = f"{device.bscan_spacing_mm:.5f}"
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 0, 1]  # rows along x, columns down in depth
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in range(device.n_bscans):
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        position = Dataset()
        y_mm = -SCAN_WIDTH_MM / 2 + k * device.bscan_spacing_mm
        position.ImagePositionPatient = [f"{-SCAN_WIDTH_MM / 2:g}", f"{y_mm:.5f}", "0"]
        frame = Dataset()
        frame.FrameContentSequence = Sequence([content])
        frame.PlanePositionSequence = Sequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()
