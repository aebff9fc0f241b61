"""Checkpoint layout: adapters apart and mergeable; the input contract stored, checked, and enforced."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from medfm.errors import CheckpointError, InputContractError
from medfm.io.dicom import RadiographImage
from medfm.io.wfdb import ECGRecord
from medfm.keys import Modality
from medfm.models import ModelConfig, MultimodalModel, create_model

REPORTS = ["The heart is enlarged.", "No pleural effusion."]


def small_config(**ecg):
    """cxr + ecg + a random BERT report encoder: every checkpoint path, built in well under a second."""
    return ModelConfig.model_validate({"name": "small", "embed_dim": 16, "encoders": {
        "cxr": {"name": "vit2d", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 1,
                "num_heads": 2, "mlp_dim": 64},
        "ecg": {"name": "ecg_transformer", "sample_rate": 50, "duration_s": 10, "patch_size": 50,
                "stem_channels": 8, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "mlp_dim": 64, **ecg},
        "report": {"name": "hf_text", "model": "random", "max_length": 32,
                   "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "layers": [1]}},
    }})


@pytest.fixture
def model():
    model = create_model(small_config(), seed=0)
    with torch.no_grad():  # move LoRA B off zero so the adapters change the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


def test_adapters_are_saved_apart_in_peft_format_and_load_back(tmp_path, model):
    before = model.encode(Modality.REPORT, REPORTS)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora_" in k for k in keys)
    adapter = tmp_path / "adapters/report"
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        assert f.keys() and all("lora_" in k for k in f.keys())
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    loaded = MultimodalModel.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.encode(Modality.REPORT, REPORTS), before)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft calls an API transformers 5 deprecates
def test_peft_itself_loads_the_adapter(tmp_path, model):
    from peft import PeftModel

    model.save_pretrained(tmp_path)
    fresh = create_model(small_config(), seed=0).encoders[Modality.REPORT]
    base = fresh.transformer
    peft_model = PeftModel.from_pretrained(base.__class__(base.config), tmp_path / "adapters/report")
    lora = {k: v for k, v in peft_model.state_dict().items() if "lora_B" in k}
    ours = {k: v for k, v in model.encoders[Modality.REPORT].backbone.state_dict().items() if "lora_B" in k}
    assert lora.keys() == ours.keys() and all(torch.equal(lora[k], ours[k]) for k in lora)


def test_missing_adapter_is_refused(tmp_path, model):
    model.save_pretrained(tmp_path)
    (tmp_path / "adapters/report/adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors: adapter file missing"):
        MultimodalModel.from_pretrained(tmp_path)


def test_merged_checkpoint_gives_the_same_embeddings_without_adapters(tmp_path, model):
    before = model.encode(Modality.REPORT, REPORTS)
    model.save_pretrained(tmp_path, merged=True)
    assert not model.merged  # the model in hand keeps its adapters
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["merged"] is True and not (tmp_path / "adapters").exists()
    loaded = MultimodalModel.from_pretrained(tmp_path).eval()
    assert loaded.merged and not any("lora_" in n for n, _ in loaded.named_parameters())
    assert torch.allclose(loaded.encode(Modality.REPORT, REPORTS), before, atol=1e-5)


def test_merge_adapters_in_place_keeps_outputs(model):
    before = model.encode(Modality.REPORT, REPORTS)
    model.merge_adapters()
    assert torch.allclose(model.encode(Modality.REPORT, REPORTS), before, atol=1e-5)


def test_checkpoint_records_and_checks_the_input_contract(tmp_path, model):
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["input_contract"]["ecg"]["sample_rate"] == 50
    assert meta["input_contract"]["cxr"]["image_size"] == 32
    # A checkpoint trained with an older ECG transform must not be fed this medfm's version.
    meta["input_contract"]["ecg"]["version"] = -1
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"ecg\.version: checkpoint -1, this medfm 1"):
        MultimodalModel.from_pretrained(tmp_path)


def test_wrong_image_size_and_channels_are_refused(model):
    with pytest.raises(InputContractError, match=r"cxr: the model was trained at size \(32, 32\), got \(64, 64\)"):
        model.encode(Modality.CXR, torch.rand(2, 1, 64, 64))
    with pytest.raises(InputContractError, match="cxr: the model was trained on 1-channel inputs, got 3"):
        model.encode(Modality.CXR, torch.rand(2, 3, 32, 32))


def test_short_ecg_is_refused_with_rate_and_duration():
    model = create_model(small_config(), seed=0)
    with pytest.raises(InputContractError, match=r"500 samples \(10.0 s at 50 Hz\), got 250"):
        model.encode(Modality.ECG, torch.randn(2, 12, 250))
    with pytest.raises(InputContractError, match="12-channel inputs, got 8"):
        model.encode(Modality.ECG, torch.randn(2, 8, 500))


def test_text_must_be_a_list_of_strings(model):
    with pytest.raises(InputContractError, match="report: expected a list of texts"):
        model.encode(Modality.REPORT, "one report, not a list")


def test_preprocess_refuses_an_ecg_without_the_models_leads(model):
    record = ECGRecord(np.zeros((12, 1000), np.float32), 100.0, np.zeros(12, bool))
    with pytest.raises(InputContractError, match="ecg: the model was trained on leads I, II"):
        model.preprocess(Modality.ECG, record)
    ok = ECGRecord(np.random.default_rng(0).normal(size=(12, 1000)).astype(np.float32), 100.0, np.ones(12, bool))
    assert model.preprocess(Modality.ECG, ok).shape == (12, 500)


def test_preprocess_converts_grey_stored_as_rgb_and_refuses_colour(model):
    grey = np.random.default_rng(0).random((1, 40, 50)).astype(np.float32)
    as_rgb = RadiographImage(np.repeat(grey, 3, axis=0), (1.0, 1.0))
    assert torch.equal(model.preprocess(Modality.CXR, as_rgb),
                       model.preprocess(Modality.CXR, RadiographImage(grey, (1.0, 1.0))))
    colour = RadiographImage(np.random.default_rng(1).random((3, 40, 50)).astype(np.float32), (1.0, 1.0))
    with pytest.raises(InputContractError, match="cxr: the model was trained on 1-channel images, got 3 channels"):
        model.preprocess(Modality.CXR, colour)


def test_every_checkpoint_file_is_as_readable_as_its_config(model, tmp_path):
    """safetensors creates files 0600; a checkpoint must not be private while its config.json is not."""
    import stat

    model.save_pretrained(tmp_path)
    expected = stat.S_IMODE((tmp_path / "config.json").stat().st_mode)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "adapter_model.safetensors" for p in files)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: expected for p in files}


def test_a_frozen_text_model_trains_nothing_caches_everything_and_round_trips(tmp_path):
    config = small_config()
    config.encoders["report"]["lora"] = None
    model = create_model(config, seed=0).eval()
    text = model.encoders[Modality.REPORT]
    assert not [n for n, p in text.named_parameters() if p.requires_grad]
    assert model.projections[Modality.REPORT].weight.requires_grad  # the projection still learns
    first = model.encode(Modality.REPORT, REPORTS)
    assert len(text._prefix_cache) == len(REPORTS)  # every layer's output is cached: later epochs are free
    config.encoders["report"]["cache_frozen_prefix"] = False
    uncached = create_model(config, seed=0).eval()
    uncached.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(uncached.encode(Modality.REPORT, REPORTS), first, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "adapters").exists()
    loaded = MultimodalModel.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.encode(Modality.REPORT, REPORTS), first)
