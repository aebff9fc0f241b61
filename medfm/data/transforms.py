"""Per-modality preprocessing: array functions, each wrapped once for dict samples.

As in MONAI, the logic lives in a plain function on arrays; :class:`Mapd`
applies it to the listed keys of a sample dict so a transform chain can skip
modalities a sample does not have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.signal import resample_poly

from medfm.errors import MedfmReadError
from medfm.io.dicom import RadiographImage
from medfm.io.errors import CorruptFileError
from medfm.io.images import Image
from medfm.io.wfdb import ECGRecord

# Bump when the code of a transform changes its output: cached tensors of the old
# version are then never served (they are part of every cache key).
RADIOGRAPH_TRANSFORM_VERSION = 1
ECG_TRANSFORM_VERSION = 1
VOLUME_TRANSFORM_VERSION = 1
FUNDUS_TRANSFORM_VERSION = 1

# Per-channel RGB mean/std of ImageNet: the convention of every ImageNet-initialised 2D
# encoder, so such weights can be plugged in; cohort-specific constants would make the
# checkpoint depend on which cohort computed them.
FUNDUS_MEAN = (0.485, 0.456, 0.406)
FUNDUS_STD = (0.229, 0.224, 0.225)
# A pixel belongs to the circular field of view when its brightness exceeds this
# fraction of the image's 99th brightness percentile: the mask border is near-black
# (< 3 % on 8-bit cameras) while the darkest retina (macula, vessels) stays above ~15 %.
FUNDUS_FOV_THRESHOLD = 0.08

# Anatomical direction letters of the LPS patient axes (x to the Left, y Posterior, z
# Superior) and their opposites; an orientation code gives, per array axis, the
# direction towards which the index increases (ITK / DICOM convention).
_AXIS_LETTERS = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def radiograph_to_input(image: RadiographImage, size: int, field_of_view_mm: float) -> torch.Tensor:
    """Resample a radiograph to a fixed physical grid and scale its intensities.

    The image is resampled so one output pixel spans ``field_of_view_mm / size``
    millimetres (devices differ in pixel spacing, anatomy must not), centre-cropped
    or zero-padded to ``size × size``, then mapped to [0, 1] by its 0.5th and 99.5th
    percentiles (robust to the device's rescale range and a few hot pixels).

    Returns:
        ``(1, size, size)`` float32 tensor.
    """
    target_spacing = field_of_view_mm / size
    x = torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32))[None]
    height = max(1, round(x.shape[-2] * image.spacing[0] / target_spacing))
    width = max(1, round(x.shape[-1] * image.spacing[1] / target_spacing))
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
    low, high = torch.quantile(x.flatten(), torch.tensor([0.005, 0.995]))
    x = ((x - low) / (high - low).clamp_min(1e-6)).clamp(0.0, 1.0)
    return center_crop_or_pad(x, (size, size))


def center_crop_or_pad(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Crop or zero-pad the last two dims of ``x`` symmetrically to ``shape``."""
    out = x.new_zeros((*x.shape[:-2], *shape))
    src, dst = [], []
    for have, want in zip(x.shape[-2:], shape, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[(..., *dst)] = x[(..., *src)]
    return out


def ecg_to_input(record: ECGRecord, sample_rate: int, duration_s: float) -> torch.Tensor:
    """Resample an ECG to the model's rate and length, with each lead's median removed.

    Resampling is polyphase with an anti-aliasing filter (any rational ratio, so a
    500 Hz and a 250 Hz device land on the same grid). Records are cropped from the
    start or zero-padded to ``duration_s``. Amplitudes stay in mV: voltage is a
    finding (LVH), so no per-record amplitude normalisation.

    Returns:
        ``(12, sample_rate * duration_s)`` float32 tensor.
    """
    ratio = Fraction(sample_rate) / Fraction(record.fs).limit_denominator(1000)
    signal = record.signal.astype(np.float64)
    if ratio != 1:
        signal = resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1)
    signal = signal - np.median(signal, axis=-1, keepdims=True)
    signal[~record.lead_mask] = 0.0
    length = round(sample_rate * duration_s)
    out = np.zeros((signal.shape[0], length), dtype=np.float32)
    keep = min(length, signal.shape[-1])
    out[:, :keep] = signal[:, :keep]
    return torch.from_numpy(out)


def orientation_code(affine: np.ndarray) -> str:
    """The direction letter (L/R, P/A, S/I) each spatial index axis of ``affine`` points to most."""
    code = []
    for axis in range(3):
        column = affine[:3, axis]
        world = int(np.argmax(np.abs(column)))
        code.append("LPS"[world] if column[world] >= 0 else "RAI"[world])
    return "".join(code)


def reorient(array: np.ndarray, affine: np.ndarray, spacing: tuple[float, ...], code: str,
             ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Permute and flip the spatial axes of a ``(C, D, H, W)`` array so they follow ``code``.

    ``code`` has three letters, one per output array axis ``(d, h, w)``, e.g. ``"SPL"``:
    the index of axis ``d`` increases towards Superior, ``h`` towards Posterior, ``w``
    towards Left. Each input axis is matched to the output axis whose world direction
    it is closest to; an oblique acquisition is thus snapped to its nearest axis-aligned
    orientation without interpolation (rotating would blur every voxel for a few degrees).

    Returns:
        The reoriented array and its spacing in mm in the new axis order.
    """
    have = orientation_code(affine)
    if len({_AXIS_LETTERS[c][0] for c in have}) != 3:
        raise ValueError(f"affine axes {have} do not span three distinct patient axes")
    order, flips = [], []
    for letter in code:
        world, sign = _AXIS_LETTERS[letter]
        source = next(i for i, c in enumerate(have) if _AXIS_LETTERS[c][0] == world)
        order.append(source)
        flips.append(_AXIS_LETTERS[have[source]][1] != sign)
    out = np.transpose(array, (0, *(1 + i for i in order)))
    flip_axes = tuple(1 + i for i, flip in enumerate(flips) if flip)
    if flip_axes:
        out = np.flip(out, axis=flip_axes)
    step = np.linalg.norm(affine[:3, :3], axis=0)
    return np.ascontiguousarray(out), tuple(float(step[i]) for i in order)


def volume_to_input(image: Image, shape: Sequence[int], spacing_mm: Sequence[float],
                    window: Sequence[float] | None = None, normalise: str = "zscore",
                    orientation: str = "SPL") -> torch.Tensor:
    """Reorient, resample to a fixed voxel size, normalise and centre-crop/pad a volume.

    Steps, in this order, each for a reason:

    1. Reorient (:func:`reorient`) so the axes follow ``orientation`` whatever the
       scanner's slice order or row direction; the default ``"SPL"`` is a native axial
       DICOM series (slices inferior → superior, rows anterior → posterior, columns
       right → left), so CT is usually only permuted, never interpolated, here.
    2. Resample to ``spacing_mm`` with trilinear interpolation; the output size is the
       physical extent divided by the target spacing, so a 10 mm structure spans
       ``10 / spacing`` voxels on every device. Axes that shrink are first smoothed by a
       Gaussian (sigma = (factor - 1) / 2 voxels), as trilinear interpolation has no
       anti-aliasing: OCT speckle would otherwise alias into the downsampled grid.
    3. Normalise: ``window`` clips to ``(lo, hi)`` and maps it to [0, 1] (CT: Hounsfield
       units are physical, so a fixed window keeps them comparable across scanners);
       ``zscore`` subtracts the volume's mean and divides by its std, ``minmax`` maps the
       volume's 0.5th..99.5th percentiles to [0, 1] (OCT: stored intensities have no
       physical unit and each device's log response differs, so only per-volume
       statistics make devices comparable).
    4. Centre-crop or zero-pad to ``shape``; padding after normalisation makes the
       padded value 0 = the window's low end (air) or the volume's mean, never 0 HU.

    Args:
        image: a volume :class:`Image` (``(C, D, H, W)``; channels are averaged).
        shape: output ``(D, H, W)``.
        spacing_mm: output voxel size per output axis, in mm.
        window: ``(lo, hi)`` in stored units; required by ``normalise="window"``.
        normalise: ``"window"``, ``"zscore"`` or ``"minmax"``.
        orientation: three direction letters, one per output axis.

    Returns:
        ``(1, D, H, W)`` float32 tensor.

    Raises:
        MedfmReadError: the image is not a volume, or its affine is degenerate.
        ValueError: an unknown ``normalise``, or ``window`` missing for ``"window"``.
    """
    source = image.meta.get("source", "<input volume>")
    if not image.is_volume:
        raise MedfmReadError(source, f"expected a (C, D, H, W) volume, got an array of shape {image.array.shape}")
    if normalise not in ("window", "zscore", "minmax"):
        raise ValueError(f"normalise must be window, zscore or minmax, got {normalise!r}")
    if normalise == "window" and window is None:
        raise ValueError("normalise='window' needs window=(lo, hi)")
    try:
        array, spacing = reorient(image.array, image.affine, image.spacing, orientation)
    except ValueError as err:
        raise MedfmReadError(source, f"cannot reorient the volume: {err}") from None
    array = array.mean(axis=0, dtype=np.float32)
    factors = [want / have for want, have in zip(spacing_mm, spacing, strict=True)]
    sigma = [max(0.0, (f - 1.0) / 2.0) for f in factors]
    if any(sigma):
        array = gaussian_filter(array, sigma=sigma, mode="nearest").astype(np.float32)
    size = [max(1, round(n / f)) for n, f in zip(array.shape, factors, strict=True)]
    x = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    if list(x.shape[2:]) != size:
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    x = x[0]
    if normalise == "window":
        low, high = float(window[0]), float(window[1])
        x = ((x - low) / (high - low)).clamp(0.0, 1.0)
    elif normalise == "zscore":
        x = (x - x.mean()) / x.std().clamp_min(1e-6)
    else:
        low, high = torch.quantile(_subsample(x.flatten()), torch.tensor([0.005, 0.995]))
        x = ((x - low) / (high - low).clamp_min(1e-6)).clamp(0.0, 1.0)
    return center_crop_or_pad_nd(x, tuple(shape)).contiguous()


def _subsample(values: torch.Tensor, limit: int = 1 << 22) -> torch.Tensor:
    """Every k-th value so ``torch.quantile`` (limited to 16M elements) accepts any volume."""
    step = max(1, -(-values.numel() // limit))
    return values[::step]


def center_crop_or_pad_nd(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Crop or zero-pad the last ``len(shape)`` dims of ``x`` symmetrically to ``shape``."""
    out = x.new_zeros((*x.shape[: x.ndim - len(shape)], *shape))
    src, dst = [], []
    for have, want in zip(x.shape[x.ndim - len(shape):], shape, strict=True):
        start = abs(have - want) // 2
        keep = min(have, want)
        src.append(slice(start, start + keep) if have >= want else slice(0, keep))
        dst.append(slice(0, keep) if have >= want else slice(start, start + keep))
    out[(..., *dst)] = x[(..., *src)]
    return out


def fundus_field_of_view(rgb: np.ndarray, threshold: float = FUNDUS_FOV_THRESHOLD) -> tuple[int, int, int, int]:
    """Bounding box ``(top, bottom, left, right)`` (end-exclusive) of a photo's bright field of view.

    A row or column counts when at least 1 % of its pixels pass the threshold, so
    isolated noise or a burnt-in label in the dark border does not stretch the box.
    An image with no dark border (already cropped) gives the whole image.
    """
    brightness = rgb.mean(axis=0)
    reference = float(np.percentile(brightness, 99))
    if reference <= 0:
        return 0, brightness.shape[0], 0, brightness.shape[1]
    inside = brightness > threshold * reference
    rows = np.flatnonzero(inside.sum(axis=1) >= max(1, 0.01 * inside.shape[1]))
    cols = np.flatnonzero(inside.sum(axis=0) >= max(1, 0.01 * inside.shape[0]))
    if rows.size == 0 or cols.size == 0:
        return 0, brightness.shape[0], 0, brightness.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def fundus_to_input(image: Image, size: int) -> torch.Tensor:
    """Crop a fundus photograph to its field of view, resize, and normalise per channel.

    The crop is the square around the bounding box of the circular field of view
    (:func:`fundus_field_of_view`), so the retina fills the input whatever the camera's
    sensor size or black margin: a fundus camera's field is a fixed angle (e.g. 45°),
    which is the physical normaliser here, as PNG/JPEG carry no pixel size. The square
    keeps the disc round (zero-padded where it leaves the image). Grey (infrared, FAF,
    red-free) is replicated to three channels. Values are scaled to [0, 1] by the stored
    bit depth (8- or 16-bit), then normalised with :data:`FUNDUS_MEAN` / :data:`FUNDUS_STD`.

    Returns:
        ``(3, size, size)`` float32 tensor.
    """
    array = np.asarray(image.array, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        source = image.meta.get("source", "<input photograph>")
        raise MedfmReadError(source, f"expected a (1 or 3, H, W) photograph, got an array of shape {array.shape}")
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    full_scale = 65535.0 if "16" in str(image.meta.get("stored_dtype", "")) or array.max() > 255 else 255.0
    top, bottom, left, right = fundus_field_of_view(array)
    side = max(bottom - top, right - left)
    x = torch.from_numpy(np.ascontiguousarray(array[:, top:bottom, left:right])) / full_scale
    x = center_crop_or_pad(x, (side, side))
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    mean = torch.tensor(FUNDUS_MEAN).view(3, 1, 1)
    std = torch.tensor(FUNDUS_STD).view(3, 1, 1)
    return ((x.clamp(0.0, 1.0) - mean) / std).contiguous()


class Mapd:
    """Apply an array function to each listed key of a sample dict (MONAI-style ``...d``).

    Args:
        keys: sample keys to transform.
        fn: the array-level function.
        allow_missing_keys: skip keys absent from a sample instead of raising KeyError.
    """

    def __init__(self, keys: Sequence[str], fn: Callable[[Any], Any], allow_missing_keys: bool = True):
        self.keys = tuple(keys)
        self.fn = fn
        self.allow_missing_keys = allow_missing_keys

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        for key in self.keys:
            if key not in out:
                if self.allow_missing_keys:
                    continue
                raise KeyError(key)
            out[key] = self.fn(out[key])
        return out


# The most one study's preprocessing may allocate. A real study needs far less (a base-config CT of
# 512 x 512 x 300 resampled to 2 x 1.6 x 1.6 mm is about 25 MB): the cap is there for headers that
# claim absurd geometry, so one hostile file is refused instead of exhausting the machine's memory.
MAX_WORKING_BYTES = 512 * 2**20


def working_bytes(spec: dict | None, value: Any) -> int:
    """The largest array the input transform of ``spec`` makes from a read study ``value``.

    The transforms resample to a fixed physical grid, so their working size follows the
    header (pixel spacing, sampling rate, aspect ratio), not the file's size: a 100 kB
    radiograph claiming 1 m pixels, or an ECG claiming 0.01 Hz, would ask for tens of GB.
    Upper bounds, computed as the transforms size their arrays; 0 for a spec without a
    transform this knows.
    """
    transform = (spec or {}).get("transform")
    array = getattr(value, "array", None)
    if transform == "radiograph_to_input":
        target = spec["field_of_view_mm"] / spec["image_size"]
        height, width = array.shape[-2] * value.spacing[0] / target, array.shape[-1] * value.spacing[1] / target
        return int(4 * max(height, 1) * max(width, 1))
    if transform == "fundus_to_input":  # cropped to the field of view, padded to its square: at most the longer side
        return int(4 * 3 * max(array.shape[-2:]) ** 2)
    if transform == "volume_to_input":  # the product of extent / target spacing does not depend on the axis order
        steps = np.linalg.norm(np.asarray(value.affine)[:3, :3], axis=0)
        extent = np.prod([n * step for n, step in zip(array.shape[-3:], steps, strict=True)])
        return int(4 * extent / np.prod(spec["spacing_mm"]))
    if transform == "ecg_to_input":
        ratio = spec["sample_rate"] / max(float(value.fs), 1e-9)
        return int(8 * value.signal.shape[0] * value.signal.shape[-1] * max(ratio, 1.0))
    return 0


def check_working_size(path, spec: dict | None, value: Any, max_bytes: int = MAX_WORKING_BYTES) -> None:
    """Refuse a study whose preprocessing would need over ``max_bytes`` (see :func:`working_bytes`).

    Raises:
        CorruptFileError: naming the size it would need; the header's spacing, sampling rate or
            shape is implausible.
    """
    needed = working_bytes(spec, value)
    if needed > max_bytes:
        raise CorruptFileError(path, f"preprocessing it would need {needed / 2**20:,.0f} MiB, over the "
                                     f"{max_bytes / 2**20:,.0f} MiB one study may use (implausible pixel spacing, "
                                     "sampling rate or image shape in its header)")


def preprocess_study(path, spec: dict | None, value: Any, preprocess: Callable[[Any], Any]) -> Any:
    """``preprocess(value)`` for a study read from ``path``, after :func:`check_working_size`.

    The transforms see an array, not the file it came from: a ``MedfmReadError`` they raise
    is raised again naming ``path``, so a quarantine entry or an error line says which file.
    """
    check_working_size(path, spec, value)
    try:
        return preprocess(value)
    except MedfmReadError as err:
        raise type(err)(path, err.reason) from None
