"""resnet2d and resnet3d, and the input contracts they share with vit2d and vit3d."""

import pytest
import torch

from medfm.config import validate_config
from medfm.errors import ConfigError
from medfm.models.resnet import GlobalPool, ResNet2dConfig, ResNet3dConfig, ResNet3dEncoder
from medfm.models.vision import ViT2dConfig, ViT2dEncoder
from medfm.models.volume import ViT3dConfig, ViT3dEncoder
from medfm.registry import ENCODERS

SMALL = dict(image_size=64, layers=[1, 1, 1, 1], widths=[8, 8, 16, 16])


@pytest.mark.parametrize("block, out_dim", [("basic", 16), ("bottleneck", 64)])
def test_forward_backward_and_pooled_output(block, out_dim):
    encoder = ENCODERS.get("resnet2d")(ResNet2dConfig(**SMALL, block=block, transform="fundus", in_channels=3))
    out = encoder(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, out_dim) == (2, encoder.out_dim)
    out.sum().backward()
    assert encoder.net.conv1.weight.grad.abs().sum() > 0
    assert encoder.net.fc is None  # the ImageNet classifier is gone


def test_default_is_resnet18_shaped():
    encoder = ENCODERS.get("resnet2d")(ResNet2dConfig())
    assert encoder.out_dim == 512
    assert [len(getattr(encoder.net, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert encoder.net.conv1.stride == (2, 2)


def test_resnet_and_vit_share_the_same_input_contract():
    resnet = ENCODERS.get("resnet2d")(ResNet2dConfig(**SMALL, transform="fundus", in_channels=3))
    vit = ViT2dEncoder(ViT2dConfig(image_size=64, patch_size=16, transform="fundus", in_channels=3,
                                   hidden_size=16, num_layers=1, num_heads=2, mlp_dim=16))
    assert resnet.input_spec() == vit.input_spec()
    assert resnet.input_spec()["transform"] == "fundus_to_input"
    cxr = ENCODERS.get("resnet2d")(ResNet2dConfig(**SMALL))
    assert cxr.input_spec() == {"transform": "radiograph_to_input", "version": 1, "image_size": 64,
                                "field_of_view_mm": 350.0}


@pytest.mark.parametrize("cls", [ResNet2dConfig, ViT2dConfig])
def test_channels_must_match_the_transform(cls):
    with pytest.raises(ConfigError, match="in_channels 1 does not match transform 'fundus'"):
        validate_config({"image_size": 64, "transform": "fundus"}, cls, "model.yaml")


def test_bad_stage_list_names_its_key():
    with pytest.raises(ConfigError) as err:
        validate_config({"layers": [2, 2, 2]}, ResNet2dConfig, "model.yaml")
    assert err.value.key == "layers"


def test_global_pools_are_mean_and_max_over_every_spatial_axis():
    x = torch.zeros(2, 3, 4, 5, 6)
    x[1, 2, 3, 4, 5] = 120.0  # one hot voxel, e.g. a nodule's response
    assert torch.equal(GlobalPool("max")(x).flatten(1)[1], torch.tensor([0.0, 0.0, 120.0]))
    both = GlobalPool("avgmax")(x).flatten(1)
    assert both.shape == (2, 6)
    assert torch.allclose(both[1], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 120.0]))


def test_resnet3d_takes_vit3d_input_contract_and_doubles_width_for_avgmax():
    common = {"image_size": [16, 32, 32], "spacing_mm": [1.0, 1.0, 1.0], "orientation": "SPL",
              "normalise": "zscore", "layers": [1, 1, 1, 1], "widths": [4, 4, 8, 8]}
    encoder = ResNet3dEncoder(ResNet3dConfig.model_validate({**common, "pool": "avgmax", "stem_stride": [1, 1, 1]}))
    vit = ViT3dEncoder(ViT3dConfig.model_validate({k: v for k, v in common.items() if k not in ("layers", "widths")}))
    assert encoder.input_spec() == vit.input_spec()  # the same cache entries and checkpoint contract
    assert encoder(torch.randn(2, 1, 16, 32, 32)).shape == (2, encoder.out_dim) and encoder.out_dim == 16


def test_batch_norm_over_a_one_voxel_last_stage_is_refused_and_group_norm_takes_one_study():
    shape = {"image_size": [16, 32, 32], "layers": [1, 1, 1, 1], "widths": [8, 8, 8, 8]}
    with pytest.raises(ValueError, match="single voxel.*norm: group"):
        ResNet3dConfig.model_validate(shape)  # stage 4 is 1x1x1: a one-study batch cannot be batch-normalised
    encoder = ResNet3dEncoder(ResNet3dConfig.model_validate({**shape, "norm": "group"})).train()
    out = encoder(torch.randn(1, 1, 16, 32, 32))
    out.sum().backward()
    assert out.shape == (1, 8)
    with pytest.raises(ValueError, match="at least 2 channels"):
        ResNet3dConfig.model_validate({**shape, "norm": "group", "widths": [1, 8, 8, 8]})
    norms = {type(m).__name__ for m in encoder.modules() if "Norm" in type(m).__name__}
    assert norms == {"GroupNorm"}  # every block, not only the stem as MONAI's own norm argument does
