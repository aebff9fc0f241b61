"""Every registered encoder passes the same checks; checkpoints round-trip exactly."""

import pytest
import torch

from medfm.errors import CheckpointError
from medfm.keys import Modality
from medfm.models import MultimodalModel, create_model, load_model_config
from medfm.registry import ENCODERS

from ..conftest import REPO

TINY = REPO / "configs/models/tiny.yaml"


def tiny_inputs(config, n=3):
    cxr, ecg = config.encoder_config(Modality.CXR), config.encoder_config(Modality.ECG)
    return {
        Modality.CXR: torch.rand(n, 1, cxr.image_size, cxr.image_size),
        Modality.ECG: torch.randn(n, 12, round(ecg.sample_rate * ecg.duration_s)),
        Modality.REPORT: ["The heart is enlarged.", "No pleural effusion.", "Sinus rhythm."][:n],
    }


@pytest.fixture(scope="module")
def tiny():
    config = load_model_config(TINY)
    return config, create_model(config, seed=0)


def test_every_registered_encoder_is_covered(tiny):
    config, _ = tiny
    assert {raw["name"] for raw in config.encoders.values()} == set(ENCODERS)


@pytest.mark.parametrize("modality", [Modality.CXR, Modality.ECG, Modality.REPORT])
def test_encoder_shape_dtype_unit_norm_and_backward(tiny, modality):
    config, model = tiny
    model.train()
    inputs = tiny_inputs(config)[modality]
    embedding = model.encode(modality, inputs)
    assert embedding.shape == (3, config.embed_dim)
    assert embedding.dtype == torch.float32
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(3), atol=1e-5)
    model.zero_grad()
    embedding.sum().backward()
    trained = [p for n, p in model.named_parameters() if n.startswith(f"encoders.{modality}.") and p.requires_grad]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_text_prefix_cache_gives_the_full_forward(tiny):
    _, model = tiny
    encoder = model.encoders[Modality.REPORT]
    texts = ["Small left pleural effusion.", "Heart size is normal. No effusion or pneumothorax."]
    model.eval()
    with torch.no_grad():
        cached = encoder(texts)
        tokens = encoder._tokenize(texts)
        hidden = encoder.bert(**tokens).last_hidden_state
        weights = tokens["attention_mask"].unsqueeze(-1).float()
        full = (hidden * weights).sum(1) / weights.sum(1)
    assert encoder.first_tuned_layer == 1
    assert torch.allclose(cached, full, atol=1e-5)


def minilm_with_lora(lora=None):
    """The demo model, its packaged MiniLM tuned by LoRA on the last layer (the shipped demo keeps it frozen)."""
    config = load_model_config(REPO / "configs/models/demo.yaml")
    config.encoders["report"]["lora"] = lora or {"r": 8, "alpha": 16, "dropout": 0.0, "layers": [5],
                                                 "target_modules": ["query", "key", "value", "dense"]}
    return create_model(config, seed=0)


def test_only_lora_and_new_modules_train():
    text = minilm_with_lora().encoders[Modality.REPORT]
    trainable = [n for n, p in text.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(".layer.5." in n for n in trainable)


def test_the_demo_text_model_is_frozen_and_left_out_of_checkpoints(tmp_path):
    model = create_model(load_model_config(REPO / "configs/models/demo.yaml"), seed=0)
    assert not [n for n, p in model.encoders[Modality.REPORT].named_parameters() if p.requires_grad]
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("encoders.report.")]
    assert not (tmp_path / "adapters").exists()


@pytest.mark.parametrize("config_name", ["tiny", "demo"])
def test_save_load_gives_identical_outputs(tmp_path, config_name):
    config = load_model_config(REPO / f"configs/models/{config_name}.yaml")
    model = create_model(config, seed=1)
    with torch.no_grad():  # move LoRA B off zero so the adapters matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    inputs = tiny_inputs(config)
    before = {m: model.encode(m, x) for m, x in inputs.items()}
    model.save_pretrained(tmp_path / "ckpt")
    loaded = MultimodalModel.from_pretrained(tmp_path / "ckpt").eval()
    for modality, x in inputs.items():
        assert torch.equal(loaded.encode(modality, x), before[modality]), modality
    assert loaded.logit_scale.item() == model.logit_scale.item()


def test_pretrained_text_weights_are_not_copied_into_the_checkpoint(tmp_path):
    model = minilm_with_lora()
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        text_keys = [k for k in f.keys() if k.startswith("encoders.report.")]
    assert text_keys == []  # the frozen MiniLM is reloaded from its package; LoRA lives in adapters/report/
    with safe_open(str(tmp_path / "adapters/report/adapter_model.safetensors"), "pt") as f:
        assert f.keys() and all("lora_" in k for k in f.keys())


def test_truncated_checkpoint_is_refused(tmp_path):
    model = create_model(load_model_config(TINY), seed=0)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:100])
    with pytest.raises(Exception) as err:
        MultimodalModel.from_pretrained(tmp_path)
    assert not isinstance(err.value, AssertionError)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        MultimodalModel.from_pretrained(tmp_path)


def test_checkpoint_config_spells_out_every_default(tmp_path):
    import json

    config = load_model_config(TINY)
    assert "voltage_token" not in config.encoders[Modality.ECG]  # the YAML leaves it to the default
    create_model(config, seed=0).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["model"]["encoders"]
    assert saved["ecg"]["voltage_token"] is True and saved["cxr"]["conv_stem"] == []


def imaging_inputs(config, n=3):
    """Random inputs of the tiny model's oct, ct and fundus encoders, shaped by their input specs."""
    out = {}
    for modality in (Modality.OCT, Modality.CT, Modality.FUNDUS):
        c = config.encoder_config(modality)
        shape = (1, *c.image_size) if hasattr(c, "spacing_mm") else (3, c.image_size, c.image_size)
        out[modality] = torch.randn(n, *shape)
    return out


@pytest.mark.parametrize("modality", [Modality.OCT, Modality.CT, Modality.FUNDUS])
def test_imaging_encoders_shape_unit_norm_backward_and_spec(tiny, modality):
    config, model = tiny
    model.train()
    embedding = model.encode(modality, imaging_inputs(config)[modality])
    assert embedding.shape == (3, config.embed_dim)
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(3), atol=1e-5)
    model.zero_grad()
    embedding.sum().backward()
    trained = [p for n, p in model.named_parameters() if n.startswith(f"encoders.{modality}.")]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    spec = model.input_spec(modality)
    assert spec["transform"] and isinstance(spec["version"], int)


def test_imaging_encoders_round_trip_through_a_checkpoint(tmp_path):
    config = load_model_config(TINY)
    model = create_model(config, seed=2).eval()
    inputs = imaging_inputs(config)
    before = {m: model.encode(m, x) for m, x in inputs.items()}
    model.save_pretrained(tmp_path / "ckpt")
    loaded = MultimodalModel.from_pretrained(tmp_path / "ckpt").eval()
    for modality, x in inputs.items():
        assert torch.equal(loaded.encode(modality, x), before[modality]), modality
