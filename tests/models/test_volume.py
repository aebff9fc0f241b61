"""vit3d: anisotropic patch grid, forward/backward, config validation, input contract."""

import math

import pytest
import torch

from medfm.config import validate_config
from medfm.errors import ConfigError
from medfm.models.volume import ViT3dConfig, ViT3dEncoder
from medfm.registry import ENCODERS

TINY = dict(image_size=(16, 32, 48), patch_size=(4, 8, 16), hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64)


def test_registry_finds_vit3d_and_the_grid_is_anisotropic():
    encoder = ENCODERS.get("vit3d")(ViT3dConfig(**TINY))
    assert encoder.config.grid == (4, 4, 3)
    assert encoder.n_tokens == 48 == math.prod(encoder.config.grid)
    tokens = encoder.vit.patch_embedding(torch.zeros(2, 1, 16, 32, 48))
    assert tokens.shape == (2, 48, 32)


def test_forward_shape_and_backward_reaches_the_patch_embedding():
    encoder = ViT3dEncoder(ViT3dConfig(**TINY))
    out = encoder(torch.randn(3, 1, 16, 32, 48))
    assert out.shape == (3, encoder.out_dim) == (3, 32)
    out.sum().backward()
    assert encoder.vit.patch_embedding.patch_embeddings.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("override, key, words", [
    ({"patch_size": (4, 8, 7)}, "patch_size", "does not divide"),
    ({"orientation": "SPP"}, "orientation", "orientation code"),
    ({"window": (400, -1000)}, "window", "below"),
    ({"num_heads": 3}, "num_heads", "multiple"),
    ({"spacing_mm": (1.0, 0.0, 1.0)}, "spacing_mm", "positive"),
])
def test_config_errors_name_the_key(override, key, words):
    with pytest.raises(ConfigError) as err:
        validate_config({**TINY, **override}, ViT3dConfig, "model.yaml")
    assert err.value.key == key and words in err.value.reason


def test_window_normalisation_without_window_is_refused():
    with pytest.raises(ConfigError, match="window"):
        validate_config({**TINY, "normalise": "window"}, ViT3dConfig, "model.yaml")


def test_input_spec_carries_every_preprocessing_parameter():
    config = ViT3dConfig(**TINY, spacing_mm=(2.5, 0.7, 0.7), orientation="spl", normalise="window",
                         window=(-1000, 400))
    spec = ViT3dEncoder(config).input_spec()
    assert spec["transform"] == "volume_to_input" and isinstance(spec["version"], int)
    assert spec["shape"] == [16, 32, 48] and spec["spacing_mm"] == [2.5, 0.7, 0.7]
    assert spec["orientation"] == "SPL" and spec["axis_order"] == "DHW"
    assert spec["normalise"] == "window" and spec["window"] == [-1000, 400]
