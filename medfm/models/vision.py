"""2D image encoders (``cxr``, ``fundus``)."""

from __future__ import annotations

import torch
from monai.networks.nets import ViT
from pydantic import Field, model_validator
from torch import nn

from medfm.config import Config
from medfm.data.transforms import RADIOGRAPH_TRANSFORM_VERSION, radiograph_to_input
from medfm.io.dicom import RadiographImage
from medfm.registry import ENCODERS


class ViT2dConfig(Config):
    image_size: int = Field(128, ge=16)
    patch_size: int = Field(16, ge=1)
    conv_stem: list[int] = []  # channels of stride-2 3x3 convolutions run before patching
    field_of_view_mm: float = Field(350.0, gt=0)
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
class ViT2dEncoder(nn.Module):
    """MONAI's ViT in 2D over one-channel images, mean-pooled over patch tokens.

    An optional convolutional stem replaces the large linear patch embedding by a few
    stride-2 convolutions (Xiao et al., "Early convolutions help transformers see
    better", NeurIPS 2021): a ViT then learns from hundreds of images instead of
    millions, which is what a cohort-sized pretraining run has.
    """

    Config = ViT2dConfig

    def __init__(self, config: ViT2dConfig):
        super().__init__()
        self.config = config
        channels = [1, *config.conv_stem]
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

    def input_spec(self) -> dict:
        """What the input transform depends on; part of the preprocessing cache key."""
        return {"transform": "radiograph_to_input", "version": RADIOGRAPH_TRANSFORM_VERSION,
                "image_size": self.config.image_size, "field_of_view_mm": self.config.field_of_view_mm}

    def preprocess(self, image: RadiographImage) -> torch.Tensor:
        return radiograph_to_input(image, self.config.image_size, self.config.field_of_view_mm)
