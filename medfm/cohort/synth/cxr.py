"""Chest X-ray phantom (PA view) and the DICOM writer for the synthetic cohort.

The phantom is drawn in millimetres on each device's own pixel grid, so the
anatomy (and the cardiothoracic ratio) is the same whichever device images it;
only resolution, intensity response, blur, noise and bit depth differ.
Coordinates: x to image right (= patient's left), y downwards, origin at the
image centre.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from medfm.atomic import write_atomic
from medfm.cohort.synth.devices import NamedDevice
from medfm.cohort.synth.dicom_header import StudyHeader, base_dataset, set_instance_uid


def _linear(a: np.ndarray) -> np.ndarray:
    return a


def _log_like(a: np.ndarray) -> np.ndarray:
    # Storage-phosphor readers compress exposure logarithmically.
    return np.log1p(np.float32(6.0) * a) * np.float32(1.0 / np.log1p(6.0))


def _gamma_08(a: np.ndarray) -> np.ndarray:
    return a ** np.float32(0.8)


@dataclass(frozen=True)
class CxrDevice(NamedDevice):
    """One radiography device: geometry, response curve, noise and DICOM encoding."""

    name: str
    modality: str
    sop_class_uid: str
    photometric: str
    size: int
    spacing_mm: float
    bits_stored: int
    rescale_slope: float
    rescale_intercept: float
    response: Callable[[np.ndarray], np.ndarray]
    noise: float  # std of additive noise on the [0, 1] response scale
    blur_px: float
    # ``AP supine``: a portable unit's bedside film. The heart, far from the detector, is magnified by the
    # divergent beam, and free fluid layers along the posterior chest wall as a veil over the hemithorax
    # instead of forming a meniscus at the costophrenic angle.
    projection: str = "PA"

    @property
    def stored_range(self) -> tuple[int, int]:
        """Stored values used for the darkest and brightest response (a margin each side)."""
        top = 2**self.bits_stored - 1
        return round(0.03 * top), round(0.97 * top)


_DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
_CR = "1.2.840.10008.5.1.4.1.1.1"

AP_HEART_MAGNIFICATION = 1.15  # heart width on a bedside AP film against a PA film (about 15%)

CXR_DEVICES: dict[str, CxrDevice] = {
    d.name: d
    for d in (
        CxrDevice("ACME DX-500", "DX", _DX_PRESENTATION, "MONOCHROME2", 320, 1.10, 12, 1.0, 0.0,
                  _linear, noise=0.008, blur_px=0.0),
        CxrDevice("Borealis CR-200", "CR", _CR, "MONOCHROME1", 256, 1.40, 10, 2.0, -1024.0,
                  _log_like, noise=0.03, blur_px=0.6),
        CxrDevice("Corvid DX-9", "DX", _DX_PRESENTATION, "MONOCHROME2", 288, 1.25, 14, 0.5, 100.0,
                  _gamma_08, noise=0.018, blur_px=1.1, projection="AP supine"),
    )
}


@dataclass(frozen=True)
class ChestAnatomy:
    """Per-patient body habitus; fixed across the patient's visits."""

    scale: float  # overall size
    lung_height: float  # relative to the canonical 225 mm apex-to-costophrenic height
    lung_width: float
    density: float  # soft-tissue attenuation multiplier
    dome_drop_left: float  # mm the left hemidiaphragm sits below the right
    texture_seed: int


def sample_anatomy(rng: np.random.Generator) -> ChestAnatomy:
    """Draws a patient's chest habitus."""
    return ChestAnatomy(
        scale=float(rng.uniform(0.92, 1.05)),
        lung_height=float(rng.uniform(0.9, 1.08)),
        lung_width=float(rng.uniform(0.94, 1.04)),
        density=float(rng.uniform(0.9, 1.1)),
        dome_drop_left=float(rng.uniform(5.0, 22.0)),
        texture_seed=int(rng.integers(2**31)),
    )


def _step(d: np.ndarray, width_mm: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance (positive inside), in mm.

    A linear ramp rather than a sigmoid: same look, a fraction of the cost.
    """
    return np.clip(0.5 + d * (0.5 / width_mm), 0.0, 1.0)


def render_attenuation(
    anatomy: ChestAnatomy,
    device: CxrDevice,
    ctr: float,
    effusion_height: float,
    effusion_side: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draws the attenuation map of one PA chest film on the device's grid.

    Args:
        anatomy: the patient's habitus.
        device: gives the grid (size and pixel spacing).
        ctr: cardiothoracic ratio; the heart's width is ``ctr`` times the thoracic width.
        effusion_height: fluid height as a fraction of lung height (0 for none).
        effusion_side: ``left``, ``right`` or ``bilateral`` (patient's side).
        rng: per-visit generator for positioning and texture.

    Returns:
        float32 array in about [0, 1]; higher is more attenuating.
    """
    n, sp = device.size, device.spacing_mm
    axis = ((np.arange(n) - (n - 1) / 2) * sp).astype(np.float32)
    yg, xg = np.meshgrid(axis, axis, indexing="ij")
    # Positioning differs at every visit: small shift and rotation.
    dx, dy = rng.uniform(-8, 8), rng.uniform(-10, 6)
    th = np.deg2rad(rng.uniform(-3, 3))
    c, s = np.float32(np.cos(th) / anatomy.scale), np.float32(np.sin(th) / anatomy.scale)
    xs, ys = xg - np.float32(dx), yg - np.float32(dy)
    x, y = c * xs + s * ys, c * ys - s * xs
    q = np.abs(x)
    left = x > 0  # image right is the patient's left

    lat = 131.0 * anatomy.lung_width  # midline to lateral rib margin
    y_cp = np.where(left, np.float32(85.0 + anatomy.dome_drop_left), np.float32(85.0))
    lung_h = 225.0 * anatomy.lung_height
    y_top = y_cp - lung_h
    q_apex, dome_depth = 0.5 * lat, 38.0
    y_dome = y_cp - dome_depth + dome_depth * ((q - q_apex) / (lat - q_apex)) ** 2
    med = 20.0 + 6.0 * np.clip((y - y_top) / lung_h, 0, 1)  # mediastinal edge
    # Lateral wall: a quarter ellipse from the apex down to the costophrenic angle.
    frac = np.clip((y_cp - y) / lung_h, 0.0, 1.0)
    q_lat = lat * np.sqrt(1.0 - frac**2)
    hemithorax = (_step(q_lat - q, 1.5) * _step(q - med, 2.0)
                  * _step(y_dome - y, 1.5) * _step(y - y_top, 3.0))

    hw = ctr * lat * (AP_HEART_MAGNIFICATION if device.projection == "AP supine" else 1.0)
    hh = 0.72 * hw + 10.0
    hx = hw / 3.0  # a third of the heart lies right of the midline, two thirds left
    hy = 85.0 - dome_depth + 0.5 * anatomy.dome_drop_left + 15.0 - hh  # rests on the domes
    heart = _step(1.0 - np.sqrt(((x - hx) / hw) ** 2 + ((y - hy) / hh) ** 2), 0.02)
    lung = hemithorax * (1.0 - heart)

    fluid = np.zeros_like(x)
    if effusion_height > 0 and device.projection == "AP supine":
        # Layered fluid: a veil denser towards the base, as thick as the effusion is large, no meniscus.
        side = {"left": left, "right": ~left, "bilateral": np.ones_like(left)}[effusion_side]
        depth = np.clip((y - y_top) / lung_h, 0.0, 1.0)
        fluid = side * hemithorax * np.float32(min(1.0, 1.6 * effusion_height)) * (0.35 + 0.65 * depth)
    elif effusion_height > 0:
        h_mm = effusion_height * lung_h
        qn = np.clip((q - med) / (lat - med), 0.0, 1.0)
        # Meniscus: fluid climbs the lateral chest wall, hiding the costophrenic angle.
        y_fluid = y_cp - h_mm - (0.5 * h_mm + 10.0) * qn**2
        side = {"left": left, "right": ~left, "bilateral": np.ones_like(left)}[effusion_side]
        fluid = side * _step(y - y_fluid, 4.0) * _step(q_lat + 2.0 - q, 1.5) * _step(q - med, 2.0)

    body_r2 = (x / 165.0) ** 2 + ((y - 20.0) / 235.0) ** 2
    # Path length through the trunk: rises steeply at the skin, then flattens (ribs, muscle).
    inside = np.clip(1.0 - body_r2, 0.0, 1.0)
    body = np.sqrt(np.minimum(8.0 * inside, 1.0)) * (0.85 + 0.15 * np.sqrt(inside))
    att = 0.02 + 0.58 * anatomy.density * body
    att += 0.12 * _step(17.0 - q, 3.0)  # mediastinum and spine
    att += 0.04 * _step(12.0 - q, 1.0) * (0.5 + 0.5 * np.cos(y * np.float32(2 * np.pi / 28.0)))
    att += 0.07 * heart
    att += 0.05 * _step(y - y_dome, 3.0) * _step(lat + 10.0 - q, 3.0)  # liver and spleen
    clavicle = y - (-175.0 + 0.12 * q + 0.0009 * q**2)
    att += 0.06 * _step(5.0 - np.abs(clavicle), 2.0) * _step(150.0 - q, 5.0) * _step(q - 15.0, 3.0)
    # Posterior ribs: a periodic band pattern bent down laterally, inside the rib cage only.
    phase = (y - y_top - 0.004 * q**2 + 0.25 * q) * np.float32(2 * np.pi / (22.0 * anatomy.lung_height))
    ribs = np.clip(np.cos(phase) - 0.3, 0.0, None)
    att += 0.06 * ribs * _step(lat + 6.0 - q, 3.0) * _step(q - 14.0, 3.0) * _step(y_cp + 10 - y, 5.0)

    # Lung markings: the patient's own smooth texture, the same at every visit.
    noise = np.random.default_rng(anatomy.texture_seed).standard_normal(x.shape, dtype=np.float32)
    texture = gaussian_filter(noise, 3.0 / sp)
    texture *= 0.5 / texture.std()
    air = 0.36 * lung * (1.0 - 0.92 * fluid) * (1.0 - 0.06 * texture)
    # Hila: denser vessels near the mediastinum.
    air *= 1.0 - 0.25 * np.exp(-((q - 45.0) / 22.0) ** 2 - ((y + 5.0) / 40.0) ** 2)
    att -= air
    att += 0.03 * fluid
    return att


def to_stored_pixels(att: np.ndarray, device: CxrDevice, rng: np.random.Generator) -> np.ndarray:
    """Applies the device's response, blur and noise, and quantises to its bit depth.

    Stored values are those whose rescaled value (slope * stored + intercept)
    is the device output; MONOCHROME1 devices store low attenuation as high values.
    """
    y = device.response(np.clip(att, 0.0, 1.0))
    if device.blur_px > 0:
        y = gaussian_filter(y, device.blur_px)
    noise = rng.standard_normal(y.shape, dtype=np.float32)
    y = np.clip(y + np.float32(device.noise) * noise, 0.0, 1.0)
    if device.photometric == "MONOCHROME1":
        y = 1.0 - y
    lo, hi = device.stored_range
    return np.rint(lo + (hi - lo) * y).astype(np.uint16)


def write_cxr_dicom(path: Path, pixels: np.ndarray, device: CxrDevice, header: StudyHeader) -> None:
    """Writes one DICOM file atomically (temp name in the same folder, then rename)."""
    ds = base_dataset(header, device.sop_class_uid, device.modality, device.manufacturer, device.model)
    set_instance_uid(ds, header, "sop")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.StudyDescription = "CHEST PA"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]  # PA: columns run to patient's left, rows to feet
    if device.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PresentationLUTShape = "IDENTITY"
    spacing = [f"{device.spacing_mm:.2f}"] * 2
    ds.PixelSpacing = spacing
    ds.ImagerPixelSpacing = spacing
    ds.Rows = ds.Columns = device.size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = device.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = device.bits_stored
    ds.HighBit = device.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{device.rescale_slope:g}"
    ds.RescaleIntercept = f"{device.rescale_intercept:g}"
    ds.RescaleType = "US"
    lo, hi = device.stored_range
    ds.WindowCenter = f"{device.rescale_slope * (lo + hi) / 2 + device.rescale_intercept:g}"
    ds.WindowWidth = f"{device.rescale_slope * (hi - lo):g}"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()

    write_atomic(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True), durable=False)
