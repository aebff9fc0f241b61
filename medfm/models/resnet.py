"""ResNet option for 2D images (``cxr``, ``fundus``): MONAI's ResNet, globally pooled."""

from __future__ import annotations

from typing import Literal

import torch
from monai.networks.nets import ResNet
from pydantic import Field, model_validator
from torch import nn

from medfm.models.vision import Image2dInput, Image2dInputConfig
from medfm.registry import ENCODERS


class ResNet2dConfig(Image2dInputConfig):
    """ResNet-18 by default (He et al. 2016): ``layers`` residual blocks per stage.

    Attributes:
        block: ``basic`` (ResNet-18/34) or ``bottleneck`` (ResNet-50 and deeper, 4x wider output).
        layers: blocks in each of the four stages.
        widths: channels of the four stages; the output size is ``widths[-1]`` (x4 for bottleneck).
        norm: ``batch`` as in the paper, or ``instance`` where batches are tiny or mix
            sites whose statistics should not be pooled.
    """

    block: Literal["basic", "bottleneck"] = "basic"
    layers: list[int] = Field(default_factory=lambda: [2, 2, 2, 2], min_length=4, max_length=4)
    widths: list[int] = Field(default_factory=lambda: [64, 128, 256, 512], min_length=4, max_length=4)
    norm: Literal["batch", "instance"] = "batch"

    @model_validator(mode="after")
    def _positive(self) -> ResNet2dConfig:
        if any(n < 1 for n in self.layers) or any(w < 1 for w in self.widths):
            raise ValueError(f"layers {self.layers} and widths {self.widths} must all be positive")
        return self


@ENCODERS.register("resnet2d")
class ResNet2dEncoder(Image2dInput, nn.Module):
    """MONAI ``ResNet`` in 2D with its classifier removed: global average pooling → features.

    The stem is the paper's 7x7 stride-2 convolution plus max pooling (MONAI defaults to
    stride 1, meant for small 3D volumes), so a 224-pixel image reaches stage 4 at 7x7.
    The input contract (``transform``) is shared with ``vit2d``.
    """

    Config = ResNet2dConfig

    def __init__(self, config: ResNet2dConfig):
        super().__init__()
        self.config = config
        self.net = ResNet(
            block=config.block, layers=list(config.layers), block_inplanes=list(config.widths), spatial_dims=2,
            n_input_channels=config.in_channels, conv1_t_size=7, conv1_t_stride=2, feed_forward=False,
            norm=config.norm if config.norm == "batch" else ("instance", {"affine": True}),
        )
        self.out_dim = config.widths[-1] * (4 if config.block == "bottleneck" else 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
