"""resnet2d and the 2D input contracts it shares with vit2d."""

import pytest
import torch

from medfm.config import validate_config
from medfm.errors import ConfigError
from medfm.models.resnet import ResNet2dConfig
from medfm.models.vision import ViT2dConfig, ViT2dEncoder
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
