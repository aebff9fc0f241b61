"""ResNet options: 2D images (``cxr``, ``fundus``) and volumes (``oct``, ``ct``); MONAI's ResNet, globally pooled.

Where a modality has a few hundred studies, a convolutional network's locality bias
learns small findings that a ViT trained from scratch does not: on the demo's fundus
photos, the same contrastive run reached zero-shot AUROC 0.88 for drusen with
``resnet2d`` and 0.58 with ``vit2d`` (docs/encoders.md).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets import ResNet
from pydantic import Field, model_validator
from torch import nn

from medfm.config import Config
from medfm.models.vision import Image2dInput, Image2dInputConfig
from medfm.models.volume import VolumeInput, VolumeInputConfig
from medfm.registry import ENCODERS


class ResNetShape(Config):
    """Depth and width of a ResNet, 2D or 3D.

    Attributes:
        block: ``basic`` (ResNet-18/34) or ``bottleneck`` (ResNet-50 and deeper, 4x wider output).
        layers: blocks in each of the four stages.
        widths: channels of the four stages; the output size is ``widths[-1]`` (x4 for bottleneck).
        norm: ``batch`` as in the paper; ``instance`` where batches are tiny or mix
            sites whose statistics should not be pooled; ``group`` (GroupNorm, 8 groups)
            with up to 32 groups of at least 2 channels, so it normalises even a single study
            whose last stage is one voxel, which batch norm cannot (refused when the config loads).
        pool: how the last feature map becomes one vector: ``avg`` as in the paper;
            ``max`` or ``avgmax`` (both, concatenated) where a finding is a few voxels
            anywhere in the volume (a lung nodule), which an average over the whole map
            dilutes.
    """

    block: Literal["basic", "bottleneck"] = "basic"
    layers: list[int] = Field(default_factory=lambda: [2, 2, 2, 2], min_length=4, max_length=4)
    widths: list[int] = Field(default_factory=lambda: [64, 128, 256, 512], min_length=4, max_length=4)
    norm: Literal["batch", "instance", "group"] = "batch"
    pool: Literal["avg", "max", "avgmax"] = "avg"

    @property
    def out_dim(self) -> int:
        return self.widths[-1] * (4 if self.block == "bottleneck" else 1) * (2 if self.pool == "avgmax" else 1)

    @model_validator(mode="after")
    def _positive(self) -> ResNetShape:
        if any(n < 1 for n in self.layers) or any(w < 1 for w in self.widths):
            raise ValueError(f"layers {self.layers} and widths {self.widths} must all be positive")
        if self.norm == "group" and min(self.widths) < 2:
            raise ValueError(f"norm: group needs at least 2 channels per group; widths {self.widths} must be >= 2")
        return self

    def _last_stage_fits_batch_norm(self, stem_stride: tuple[int, ...]) -> None:
        """Batch norm of a one-study batch over a 1-voxel map has nothing to normalise; say so now."""
        if self.norm == "batch" and math.prod(last_stage_size(self.image_size, stem_stride)) == 1:
            raise ValueError(f"the last stage is a single voxel for image_size {self.image_size}, so batch norm fails "
                             "on a batch with one study of this modality; use norm: group (or instance), a larger "
                             "image_size or a smaller stem_stride")


def last_stage_size(image_size: int | tuple[int, ...], stem_stride: tuple[int, ...]) -> tuple[int, ...]:
    """Map size of stage 4: the strided stem, max pooling and stages 2-4 each divide an axis, rounding up."""
    sizes = (image_size,) * len(stem_stride) if isinstance(image_size, int) else tuple(image_size)
    return tuple(math.ceil(math.ceil(s / t) / 16) for s, t in zip(sizes, stem_stride, strict=True))


class ResNet2dConfig(ResNetShape, Image2dInputConfig):
    """ResNet-18 by default (He et al. 2016) on a 2D image; see :class:`ResNetShape`."""

    @model_validator(mode="after")
    def _norm_fits(self) -> ResNet2dConfig:
        self._last_stage_fits_batch_norm((2, 2))
        return self


class ResNet3dConfig(ResNetShape, VolumeInputConfig):
    """A 3D ResNet on a volume; see :class:`ResNetShape` and :class:`VolumeInputConfig`.

    Attributes:
        stem_kernel: ``(D, H, W)`` kernel of the first convolution; thin along an axis with
            few voxels (the 16 B-scans of an OCT cube, thick CT slices).
        stem_stride: its stride; max pooling then halves every axis (rounding up), as does
            each of stages 2-4: stage 4 sees ``image_size / (16 × stem_stride)`` voxels.
    """

    stem_kernel: tuple[int, int, int] = (3, 7, 7)
    stem_stride: tuple[int, int, int] = (1, 2, 2)

    @model_validator(mode="after")
    def _stem_fits(self) -> ResNet3dConfig:
        if min(self.stem_kernel) < 1 or min(self.stem_stride) < 1:
            raise ValueError(f"stem_kernel {list(self.stem_kernel)} and stem_stride {list(self.stem_stride)} "
                             "must be positive")
        self._last_stage_fits_batch_norm(self.stem_stride)
        return self


def _monai_resnet(config: ResNetShape, spatial_dims: int, in_channels: int, stem_kernel, stem_stride) -> ResNet:
    net = ResNet(
        block=config.block, layers=list(config.layers), block_inplanes=list(config.widths),
        spatial_dims=spatial_dims, n_input_channels=in_channels, conv1_t_size=stem_kernel,
        conv1_t_stride=stem_stride, feed_forward=False,
    )
    if config.norm != "batch":
        _replace_batch_norm(net, spatial_dims, config.norm)
    if config.pool != "avg":  # MONAI flattens whatever its avgpool returns
        net.avgpool = GlobalPool(config.pool)
    return net


def _replace_batch_norm(module: nn.Module, spatial_dims: int, norm: str) -> None:
    """Swap every batch norm for ``norm``: MONAI 1.6's ResNet applies its ``norm`` to the stem only."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            channels = child.num_features
            spec = (("instance", {"affine": True}) if norm == "instance"
                    else ("group", {"num_groups": _groups(channels)}))
            setattr(module, name, get_norm_layer(name=spec, spatial_dims=spatial_dims, channels=channels))
        else:
            _replace_batch_norm(child, spatial_dims, norm)


def _groups(channels: int) -> int:
    """The most groups, up to GroupNorm's usual 32, that divide ``channels`` into groups of at least 2."""
    return next(g for g in range(min(32, channels // 2), 0, -1) if channels % g == 0)


class GlobalPool(nn.Module):
    """``max`` or ``avgmax`` (average and maximum, concatenated) over every spatial axis, keeping them as size 1."""

    def __init__(self, kind: Literal["max", "avgmax"]):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = tuple(range(2, x.ndim))
        peak = x.amax(axes, keepdim=True)
        return peak if self.kind == "max" else torch.cat([x.mean(axes, keepdim=True), peak], dim=1)


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
        self.net = _monai_resnet(config, 2, config.in_channels, 7, 2)
        self.out_dim = config.out_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


@ENCODERS.register("resnet3d")
class ResNet3dEncoder(VolumeInput, nn.Module):
    """MONAI ``ResNet`` in 3D with its classifier removed; the input contract is ``vit3d``'s."""

    Config = ResNet3dConfig

    def __init__(self, config: ResNet3dConfig):
        super().__init__()
        self.config = config
        self.net = _monai_resnet(config, 3, 1, config.stem_kernel, config.stem_stride)
        self.out_dim = config.out_dim

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.net(volumes)
