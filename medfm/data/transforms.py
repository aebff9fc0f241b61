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
from scipy.signal import resample_poly

from medfm.io.dicom import RadiographImage
from medfm.io.wfdb import ECGRecord

# Bump when the code of a transform changes its output: cached tensors of the old
# version are then never served (they are part of every cache key).
RADIOGRAPH_TRANSFORM_VERSION = 1
ECG_TRANSFORM_VERSION = 1


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
