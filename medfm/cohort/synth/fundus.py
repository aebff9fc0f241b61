"""Colour fundus photograph phantom (macula-centred) and its PNG / DICOM writers.

Drawn in millimetres on the en-face plane shared with oct.py (fovea at the
origin, ``x`` to image right, ``y`` downwards), so drusen sit where the OCT of
the same visit shows them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from medfm.atomic import write_atomic, write_bytes_atomic
from medfm.cohort.synth.devices import NamedDevice
from medfm.cohort.synth.dicom_header import StudyHeader, base_dataset, set_instance_uid
from medfm.cohort.synth.oct import EyeAnatomy, drusen_heights_mm

OPHTHALMIC_PHOTOGRAPHY_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
DISC_OFFSET_MM = 4.2  # fovea to optic disc centre, nasal
DISC_RADIUS_MM = 0.9


@dataclass(frozen=True)
class FundusCamera(NamedDevice):
    """One fundus camera: field, grid, colour balance, tone curve and file format."""

    name: str
    file_format: str  # "png" or "dicom"
    size: int
    field_mm: float  # width of the square grid on the retina
    white_balance: tuple[float, float, float]
    gamma: float
    blur_px: float
    noise: float

    @property
    def spacing_mm(self) -> float:
        return self.field_mm / self.size


FUNDUS_CAMERAS: dict[str, FundusCamera] = {
    c.name: c
    for c in (
        FundusCamera("Iris FC-50", "png", 256, 13.0, (1.0, 0.95, 0.9), 1 / 2.2, 0.0, 0.012),
        FundusCamera("Oculus OP-2", "dicom", 240, 14.0, (0.92, 1.0, 1.08), 0.6, 0.8, 0.02),
    )
}


def _vessel_paths(eye: EyeAnatomy) -> list[tuple[np.ndarray, float]]:
    """Centre lines (n, 2) in mm and widths of the patient's retinal vessels."""
    rng = np.random.default_rng(eye.vessel_seed)
    side = 1.0 if eye.laterality == "R" else -1.0  # disc on the image right for a right eye
    xd = side * DISC_OFFSET_MM
    t = np.linspace(0.0, 1.0, 60)[:, None]
    paths = []
    for sign in (-1.0, 1.0):  # superior and inferior arcades arch around the macula
        for width, reach in ((0.14, 1.0), (0.1, 0.8)):
            spread = rng.uniform(2.0, 2.8) * reach
            u = -side * 10.0 * reach * t
            v = sign * spread * np.sin(np.minimum(1.7 * t, 1.0) * np.pi / 2) + 0.15 * sign
            paths.append((np.hstack([xd + u, v]), width))
        paths.append((np.hstack([xd + side * 4.0 * t, sign * (0.3 + rng.uniform(1.0, 3.0) * t)]), 0.08))
    for _ in range(6):  # small branches off the arcades
        base, _w = paths[int(rng.integers(4))]
        p0 = base[int(rng.integers(15, 50))]
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(1.0, 2.5)
        paths.append((p0 + length * t * np.array([np.cos(ang), np.sin(ang)]), 0.05))
    return paths


def render_fundus(eye: EyeAnatomy, camera: FundusCamera, drusen_load: float, haemorrhages: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Draws the linear RGB reflectance of one photograph.

    Args:
        eye: the patient's eye (drusen spots, vessels).
        camera: grid and field.
        drusen_load: drusen height scale in mm, as in the OCT (0 for none).
        haemorrhages: (n, 5): x_mm, y_mm, long radius, short radius, angle (rad).
        rng: per-visit generator (framing).

    Returns:
        float32 (H, W, 3) in [0, 1].
    """
    n, sp = camera.size, camera.spacing_mm
    dx, dy = rng.uniform(-0.3, 0.3, 2)
    axis = ((np.arange(n) - (n - 1) / 2) * sp).astype(np.float32)
    y, x = axis[:, None] + np.float32(dy), axis[None, :] + np.float32(dx)
    side = 1.0 if eye.laterality == "R" else -1.0
    r2 = x**2 + y**2
    rgb = np.empty((n, n, 3), np.float32)
    texture = gaussian_filter(np.random.default_rng(eye.vessel_seed + 1).standard_normal((n, n)).astype(np.float32),
                              0.25 / sp)
    texture /= texture.std()
    for c, level in enumerate((0.82, 0.36, 0.16)):
        rgb[..., c] = level * (1.0 + 0.05 * texture)
    macula = np.exp(-r2 / (2 * 0.9**2))
    rgb *= (1.0 - 0.35 * macula)[..., None]
    disc_d = np.sqrt((x - side * DISC_OFFSET_MM) ** 2 + (y + 0.2) ** 2)
    disc = np.clip((DISC_RADIUS_MM - disc_d) / 0.08 + 0.5, 0.0, 1.0)
    cup = np.clip((0.4 * DISC_RADIUS_MM - disc_d) / 0.1 + 0.5, 0.0, 1.0)
    for c, (rim, pale) in enumerate(((1.0, 1.0), (0.72, 0.9), (0.42, 0.72))):
        rgb[..., c] = rgb[..., c] * (1 - disc) + disc * (rim * (1 - cup) + pale * cup)

    strokes = np.zeros((n, n), np.float32)
    for path, width in _vessel_paths(eye):
        k = np.arange(len(path))
        s = np.linspace(0, len(path) - 1, 8 * len(path))  # about a third of a pixel apart
        dense = np.stack([np.interp(s, k, path[:, 0]), np.interp(s, k, path[:, 1])], axis=1)
        cols = np.rint((dense[:, 0] - dx) / sp + (n - 1) / 2).astype(int)
        rows = np.rint((dense[:, 1] - dy) / sp + (n - 1) / 2).astype(int)
        ok = (cols >= 0) & (cols < n) & (rows >= 0) & (rows < n)
        np.maximum.at(strokes, (rows[ok], cols[ok]), width / 0.14)
    vessels = np.clip(gaussian_filter(strokes, max(0.6, 0.07 / sp)) * 2.5, 0.0, 1.0)
    rgb *= (1.0 - vessels[..., None] * np.array([0.3, 0.55, 0.45], np.float32))

    heights = drusen_heights_mm(eye, drusen_load)
    if drusen_load > 0:
        yellow = np.zeros((n, n), np.float32)
        for (cx, cy, rad, _), h in zip(eye.drusen, heights, strict=True):
            rows = slice(*np.searchsorted(y[:, 0], [cy - 1.1 * rad, cy + 1.1 * rad]))  # the spot's box only
            cols = slice(*np.searchsorted(x[0], [cx - 1.1 * rad, cx + 1.1 * rad]))
            spot = np.clip(1.0 - ((x[:, cols] - cx) ** 2 + (y[rows] - cy) ** 2) / (1.1 * rad) ** 2, 0.0, None)
            yellow[rows, cols] = np.maximum(yellow[rows, cols], np.sqrt(spot) * min(1.0, 0.6 + 8.0 * float(h)))
        rgb = rgb * (1 - yellow[..., None]) + yellow[..., None] * np.array([0.95, 0.85, 0.42], np.float32)
    for hx, hy, ra, rb, ang in haemorrhages:
        c, s = np.cos(ang), np.sin(ang)
        u, v = (x - hx) * c + (y - hy) * s, (y - hy) * c - (x - hx) * s
        blot = np.clip((1.0 - (u / ra) ** 2 - (v / rb) ** 2) * 3.0, 0.0, 1.0)
        rgb *= (1.0 - blot[..., None] * np.array([0.6, 0.8, 0.7], np.float32))
    # Illumination falls off towards the edge of the circular field stop.
    field = np.clip((0.48 * n * sp - np.sqrt(r2)) / 0.15, 0.0, 1.0)
    rgb *= (field * (1.0 - 0.25 * r2 / (0.5 * n * sp) ** 2))[..., None]
    return rgb


def to_stored_rgb(rgb: np.ndarray, camera: FundusCamera, rng: np.random.Generator) -> np.ndarray:
    """Applies white balance, blur, noise and the tone curve; returns uint8 (H, W, 3)."""
    out = rgb * np.array(camera.white_balance, np.float32)
    if camera.blur_px > 0:
        out = gaussian_filter(out, (camera.blur_px, camera.blur_px, 0))
    out += np.float32(camera.noise) * rng.standard_normal(out.shape, dtype=np.float32)
    out = np.clip(out, 0.0, 1.0) ** np.float32(camera.gamma)
    return np.rint(255 * out).astype(np.uint8)


def write_fundus_png(path: Path, pixels: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", compress_level=1)
    write_bytes_atomic(path, buf.getvalue(), durable=False)


def write_fundus_dicom(path: Path, pixels: np.ndarray, camera: FundusCamera, header: StudyHeader,
                       laterality: str) -> None:
    """Writes one Ophthalmic Photography 8 Bit Image (RGB, interleaved)."""
    ds = base_dataset(header, OPHTHALMIC_PHOTOGRAPHY_8BIT, "OP", camera.manufacturer, camera.model,
                      series_key="fundus-series")
    set_instance_uid(ds, header, "fundus-sop")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.SeriesDescription = "Colour fundus, macula-centred"
    ds.ImageLaterality = laterality
    ds.AcquisitionDateTime = ds.StudyDate + ds.StudyTime
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{camera.spacing_mm:.5f}"] * 2
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    write_atomic(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True), durable=False)
