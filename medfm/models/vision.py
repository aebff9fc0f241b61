"""2D image encoders (``cxr``, ``fundus``) and the input transforms they share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from monai.networks.nets import ViT
from pydantic import Field, model_validator
from torch import nn

from medfm.config import Config
from medfm.data.transforms import (
    FUNDUS_FOV_THRESHOLD,
    FUNDUS_MEAN,
    FUNDUS_STD,
    FUNDUS_TRANSFORM_VERSION,
    RADIOGRAPH_TRANSFORM_VERSION,
    fundus_to_input,
    radiograph_to_input,
)
from medfm.registry import ENCODERS

ImageTransform = Literal["radiograph", "fundus"]


class Image2dInputConfig(Config):
    """Keys of the input side shared by every 2D encoder.

    Attributes:
        image_size: side of the square input, pixels.
        transform: ``radiograph`` (one channel, fixed physical field of view) or
            ``fundus`` (RGB, cropped to the camera's circular field of view).
        in_channels: channels the transform yields: 1 for ``radiograph``, 3 for ``fundus``.
        field_of_view_mm: side of the radiograph field the input spans (``radiograph`` only).
    """

    image_size: int = Field(128, ge=16)
    transform: ImageTransform = "radiograph"
    in_channels: Literal[1, 3] = 1
    field_of_view_mm: float = Field(350.0, gt=0)

    @model_validator(mode="after")
    def _channels_match_transform(self) -> Image2dInputConfig:
        expected = _INPUTS[self.transform].channels
        if self.in_channels != expected:
            raise ValueError(f"in_channels {self.in_channels} does not match transform {self.transform!r}, "
                             f"which yields {expected} channel(s)")
        return self


class _InputKind:
    """One 2D input transform: the channels it yields, its spec, and the function."""

    def __init__(self, channels: int, spec: Callable[[Image2dInputConfig], dict],
                 apply: Callable[[Any, Image2dInputConfig], torch.Tensor]):
        self.channels, self.spec, self.apply = channels, spec, apply


_INPUTS: dict[str, _InputKind] = {
    # The radiograph spec is unchanged from before ``transform`` existed, so caches stay valid.
    "radiograph": _InputKind(
        1,
        lambda c: {"transform": "radiograph_to_input", "version": RADIOGRAPH_TRANSFORM_VERSION,
                   "image_size": c.image_size, "field_of_view_mm": c.field_of_view_mm},
        lambda image, c: radiograph_to_input(image, c.image_size, c.field_of_view_mm),
    ),
    "fundus": _InputKind(
        3,
        lambda c: {"transform": "fundus_to_input", "version": FUNDUS_TRANSFORM_VERSION,
                   "image_size": c.image_size, "channels": 3, "channel_order": "RGB",
                   "fov_threshold": FUNDUS_FOV_THRESHOLD, "mean": list(FUNDUS_MEAN), "std": list(FUNDUS_STD)},
        lambda image, c: fundus_to_input(image, c.image_size),
    ),
}


class Image2dInput:
    """``input_spec()`` and ``preprocess()`` of a 2D encoder, chosen by ``config.transform``.

    A mixin rather than a base ``nn.Module`` so ViT and ResNet encoders share exactly
    one implementation of the input contract without sharing an architecture.
    """

    config: Image2dInputConfig

    def input_spec(self) -> dict:
        """Every parameter the input transform depends on; part of the cache key and checkpoint."""
        return _INPUTS[self.config.transform].spec(self.config)

    def preprocess(self, image: Any) -> torch.Tensor:
        """Reader output (``RadiographImage`` or ``Image``) → the encoder's input tensor."""
        return _INPUTS[self.config.transform].apply(image, self.config)


class ViT2dConfig(Image2dInputConfig):
    patch_size: int = Field(16, ge=1)
    conv_stem: list[int] = []  # channels of stride-2 3x3 convolutions run before patching
    hidden_size: int = Field(192, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(3, ge=1)
    mlp_dim: int = Field(768, ge=8)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _shapes_divide(self) -> ViT2dConfig:
        grid = self.image_size // 2 ** len(self.conv_stem)
        if grid * 2 ** len(self.conv_stem) != self.image_size or grid % self.patch_size:
            raise ValueError(f"image_size {self.image_size} halved {len(self.conv_stem)} times by the conv stem "
                             f"is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        return self


@ENCODERS.register("vit2d")
class ViT2dEncoder(Image2dInput, nn.Module):
    """MONAI's ViT in 2D over one- or three-channel images, mean-pooled over patch tokens.

    An optional convolutional stem replaces the large linear patch embedding by a few
    stride-2 convolutions (Xiao et al., "Early convolutions help transformers see
    better", NeurIPS 2021): a ViT then learns from hundreds of images instead of
    millions, which is what a cohort-sized pretraining run has. ``transform`` picks
    the input contract (radiograph or fundus photograph); the architecture is the same.
    """

    Config = ViT2dConfig

    def __init__(self, config: ViT2dConfig):
        super().__init__()
        self.config = config
        channels = [config.in_channels, *config.conv_stem]
        self.stem = nn.Sequential(*[
            layer for c_in, c_out in zip(channels, channels[1:], strict=False)
            for layer in (nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GELU())
        ])
        self.vit = ViT(
            in_channels=channels[-1], img_size=config.image_size // 2 ** len(config.conv_stem),
            patch_size=config.patch_size,
            hidden_size=config.hidden_size, mlp_dim=config.mlp_dim, num_layers=config.num_layers,
            num_heads=config.num_heads, dropout_rate=config.dropout, spatial_dims=2, qkv_bias=True,
        )
        self.out_dim = config.hidden_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(self.stem(images))
        return tokens.mean(dim=1)
