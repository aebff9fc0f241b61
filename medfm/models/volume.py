"""3D volume encoders (``oct``, ``ct``): a ViT over anisotropic patches, and their shared input contract.

One class serves both modalities; what differs (voxel size, orientation, intensity
window, patch shape) is configuration, written in ``configs/models/*.yaml``. The input
half (:class:`VolumeInputConfig`, :class:`VolumeInput`) is shared with ``resnet3d``
(:mod:`medfm.models.resnet`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from monai.networks.nets import ViT
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

from medfm.config import Config
from medfm.data.transforms import VOLUME_TRANSFORM_VERSION, volume_to_input
from medfm.io.images import Image
from medfm.registry import ENCODERS

_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}


class VolumeInputConfig(Config):
    """How a volume becomes an encoder input; the keys every 3D encoder shares.

    Attributes:
        image_size: input ``(D, H, W)`` voxels after resampling and crop/pad.
        spacing_mm: target voxel size per axis, mm; ``image_size * spacing_mm`` is the field.
        orientation: direction letters (one per ``D, H, W`` axis) the volume is turned to.
        normalise: ``window`` (fixed ``window`` in stored units, for CT's Hounsfield units),
            ``zscore`` or ``minmax`` (per volume, for OCT's unitless intensities).
        window: ``(lo, hi)`` for ``normalise: window``.
    """

    image_size: tuple[int, int, int] = (32, 64, 64)
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    orientation: str = "SPL"
    normalise: Literal["window", "zscore", "minmax"] = "zscore"
    window: tuple[float, float] | None = None

    @field_validator("image_size")
    @classmethod
    def _positive_sizes(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError(f"sizes must be positive, got {list(value)}")
        return value

    @field_validator("spacing_mm")
    @classmethod
    def _positive_spacing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError(f"spacing must be positive mm, got {list(value)}")
        return value

    @field_validator("orientation")
    @classmethod
    def _orientation_code(cls, value: str) -> str:
        letters = value.upper()
        if (len(letters) != 3 or any(c not in _OPPOSITE for c in letters)
                or len({frozenset((c, _OPPOSITE[c])) for c in letters}) != 3):
            raise ValueError(f"{value!r} is not an orientation code: three letters, one of L/R, one of P/A and "
                             "one of S/I, e.g. 'SPL'")
        return letters

    @field_validator("window")
    @classmethod
    def _window_ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] >= value[1]:
            raise ValueError(f"window low {value[0]} must be below high {value[1]}")
        return value

    @model_validator(mode="after")
    def _window_for_window(self) -> VolumeInputConfig:
        if self.normalise == "window" and self.window is None:
            raise ValueError("window: normalise is 'window' but no window (lo, hi) is given")
        return self


class VolumeInput:
    """Input contract and transform of a 3D encoder whose ``config`` is a :class:`VolumeInputConfig`."""

    config: VolumeInputConfig

    def input_spec(self) -> dict:
        """Every parameter :func:`volume_to_input` depends on; part of the cache key and checkpoint."""
        c = self.config
        return {
            "transform": "volume_to_input", "version": VOLUME_TRANSFORM_VERSION,
            "shape": list(c.image_size), "axis_order": "DHW", "channels": 1,
            "orientation": c.orientation, "spacing_mm": list(c.spacing_mm),
            "resample": "gaussian_antialias+trilinear",
            "normalise": c.normalise, "window": None if c.window is None else list(c.window),
        }

    def preprocess(self, image: Image) -> torch.Tensor:
        c = self.config
        return volume_to_input(image, c.image_size, c.spacing_mm, c.window, c.normalise, c.orientation)


class ViT3dConfig(VolumeInputConfig):
    """Keys of ``vit3d``; every size is a parameter so a tiny CPU config always exists.

    Attributes:
        patch_size: ``(pd, ph, pw)``; anisotropic because OCT B-scan stacks and thick-slice
            CT have few voxels along one axis, where a cubic patch would leave 1-2 tokens.
    """

    patch_size: tuple[int, int, int] = (4, 16, 16)
    hidden_size: int = Field(192, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(3, ge=1)
    mlp_dim: int = Field(768, ge=8)
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("patch_size")
    @classmethod
    def _patches_tile_the_volume(cls, value: tuple[int, int, int], info: ValidationInfo) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError(f"sizes must be positive, got {list(value)}")
        size = info.data.get("image_size")
        if size is not None and any(s % p for s, p in zip(size, value, strict=True)):
            raise ValueError(f"patch_size {list(value)} does not divide image_size {list(size)} on every axis "
                             "(D, H, W)")
        return value

    @field_validator("num_heads")
    @classmethod
    def _heads_divide(cls, value: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and hidden % value:
            raise ValueError(f"hidden_size {hidden} is not a multiple of num_heads {value}")
        return value

    @property
    def grid(self) -> tuple[int, int, int]:
        """Patch tokens per axis."""
        return tuple(s // p for s, p in zip(self.image_size, self.patch_size, strict=True))


@ENCODERS.register("vit3d")
class ViT3dEncoder(VolumeInput, nn.Module):
    """MONAI's ViT with ``spatial_dims=3`` and anisotropic patches, mean-pooled over tokens.

    No convolutional stem (unlike ``vit2d``): patches must stay independent for MAE
    pretraining (:mod:`medfm.models.mae`), and a stem's overlapping receptive fields
    would leak masked voxels into visible tokens.
    """

    Config = ViT3dConfig

    def __init__(self, config: ViT3dConfig):
        super().__init__()
        self.config = config
        self.vit = ViT(
            in_channels=1, img_size=config.image_size, patch_size=config.patch_size,
            hidden_size=config.hidden_size, mlp_dim=config.mlp_dim, num_layers=config.num_layers,
            num_heads=config.num_heads, dropout_rate=config.dropout, spatial_dims=3, qkv_bias=True,
        )
        self.out_dim = config.hidden_size

    @property
    def n_tokens(self) -> int:
        return math.prod(self.config.grid)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(volumes)
        return tokens.mean(dim=1)
