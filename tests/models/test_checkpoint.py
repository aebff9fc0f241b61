"""Checkpoints: adapters apart and mergeable; the input contract enforced; files hashed; pickle refused."""

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


# -- integrity and pickle refusal ----------------------------------------------------------------

HASHED = ["model.safetensors", "adapters/report/adapter_model.safetensors", "adapters/report/adapter_config.json"]


def one_line_checkpoint_error(call):
    with pytest.raises(CheckpointError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_every_written_file_has_its_sha256_in_config_json(tmp_path, model):
    from medfm.atomic import sha256_file

    model.save_pretrained(tmp_path)
    files = json.loads((tmp_path / "config.json").read_text())["files"]
    assert files == {name: sha256_file(tmp_path / name) for name in HASHED}


def truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # a weight's bit: the file still parses, the hash does not match
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip_a_byte])
@pytest.mark.parametrize("name", HASHED)
def test_a_truncated_or_altered_file_is_refused_by_name(tmp_path, model, name, damage):
    model.save_pretrained(tmp_path)
    damage(tmp_path / name)
    message = one_line_checkpoint_error(lambda: MultimodalModel.from_pretrained(tmp_path))
    assert message == (f"{tmp_path / name}: does not match the SHA-256 recorded in config.json when it was written "
                       "(truncated, altered, or its save was interrupted); refusing to load it")
    fresh = create_model(small_config(), seed=0)
    assert one_line_checkpoint_error(lambda: fresh.load_weights(tmp_path)) == message  # resuming checks too


def test_a_checkpoint_from_before_hashes_loads_with_a_warning(tmp_path, model):
    from medfm.models.trust import UnverifiedCheckpointWarning

    before = model.encode(Modality.REPORT, REPORTS)
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["files"]
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UnverifiedCheckpointWarning, match="config.json: no file hashes recorded"):
        loaded = MultimodalModel.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.encode(Modality.REPORT, REPORTS), before)


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda files: {"model.safetensors": files["model.safetensors"]},
     "adapter_config.json: no SHA-256 recorded for it in config.json"),
    (lambda files: {**files, "../model.safetensors": "0" * 64},
     "'files' names '../model.safetensors', which is not a file inside"),
    (lambda files: {**files, "model.safetensors": "abc"}, "'files' entry 'model.safetensors' is not a SHA-256"),
    (lambda files: list(files), "'files' must map file names to SHA-256 digests"),
])
def test_a_malformed_hash_record_is_refused(tmp_path, model, edit, reason):
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**meta, "files": edit(meta["files"])}))
    assert reason in one_line_checkpoint_error(lambda: MultimodalModel.from_pretrained(tmp_path))


@pytest.mark.parametrize(("content", "reason"), [
    ('{"format": "medfm-checkpoint/2", "mod', "config.json: not a readable JSON file"),
    ('{"architectures": ["BertModel"], "model_type": "bert"}', "config.json: not a medfm checkpoint config"),
])
def test_a_truncated_or_foreign_config_json_is_refused(tmp_path, model, content, reason):
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(content)
    assert reason in one_line_checkpoint_error(lambda: MultimodalModel.from_pretrained(tmp_path))


def pickle_refusal(path):
    return (f"{path}: is a pickle file, which can run code when loaded; medfm loads safetensors only; convert it, "
            "or pass trust_pickle=True to load it with torch.load(weights_only=True)")


def as_pickle(path, new_name):
    """Replace a safetensors file by a pickle of the same tensors (what torch.save writes)."""
    from safetensors.torch import load_file

    torch.save(load_file(str(path)), path.with_name(new_name))
    path.unlink()
    return path.with_name(new_name)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pth", "last.ckpt"])
def test_pickle_weights_are_refused_unless_trusted(tmp_path, model, name):
    before = model.encode(Modality.REPORT, REPORTS)
    model.save_pretrained(tmp_path)
    pickled = as_pickle(tmp_path / "model.safetensors", name)
    assert one_line_checkpoint_error(lambda: MultimodalModel.from_pretrained(tmp_path)) == pickle_refusal(pickled)
    assert one_line_checkpoint_error(lambda: MultimodalModel.from_pretrained(pickled)) == pickle_refusal(pickled)
    for source in (tmp_path, pickled):  # the folder, or the weights file itself
        loaded = MultimodalModel.from_pretrained(source, trust_pickle=True).eval()
        assert torch.equal(loaded.encode(Modality.REPORT, REPORTS), before)


def test_a_pickle_adapter_is_refused_unless_trusted(tmp_path, model):
    before = model.encode(Modality.REPORT, REPORTS)
    model.save_pretrained(tmp_path)
    pickled = as_pickle(tmp_path / "adapters/report/adapter_model.safetensors", "adapter_model.bin")
    assert one_line_checkpoint_error(lambda: MultimodalModel.from_pretrained(tmp_path)) == pickle_refusal(pickled)
    loaded = MultimodalModel.from_pretrained(tmp_path, trust_pickle=True).eval()
    assert torch.equal(loaded.encode(Modality.REPORT, REPORTS), before)


class _RunsCode:
    """Unpickling this calls Path.touch: what a malicious checkpoint would do with os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


def test_trusted_pickles_are_still_loaded_weights_only(tmp_path, model):
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"logit_scale": torch.ones(()), "payload": _RunsCode(marker)}, tmp_path / "model.pt")
    message = one_line_checkpoint_error(lambda: MultimodalModel.from_pretrained(tmp_path, trust_pickle=True))
    assert message.startswith(f"{tmp_path / 'model.pt'}: not loadable with torch.load(weights_only=True)")
    assert not marker.exists()
    torch.save([torch.ones(2)], tmp_path / "model.pt")
    assert one_line_checkpoint_error(lambda: MultimodalModel.from_pretrained(tmp_path, trust_pickle=True)) == (
        f"{tmp_path / 'model.pt'}: holds a list, not a state dict of tensors")


def pickle_only_text_model(folder):
    """A tiny BERT saved the old way: config.json, pytorch_model.bin (pickle) and MiniLM's tokenizer."""
    import shutil

    from transformers import BertConfig, BertModel

    from medfm.models.text import PACKAGED_MINILM, text_model_path

    folder.mkdir()
    bert = BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32), add_pooling_layer=False)
    bert.config.save_pretrained(folder)
    torch.save(bert.state_dict(), folder / "pytorch_model.bin")
    minilm = text_model_path(PACKAGED_MINILM)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm / name, folder / name)
    return folder


def test_a_text_model_with_only_pickle_weights_is_refused(tmp_path):
    from medfm.errors import ConfigError
    from medfm.models.text import HFTextConfig, HFTextEncoder, _load_quietly

    folder = pickle_only_text_model(tmp_path / "old-bert")
    with pytest.raises(ConfigError) as err:
        HFTextEncoder(HFTextConfig(model=str(folder), lora=None))
    assert str(err.value) == (f"encoders.report.model: {folder}: pytorch_model.bin is a pickle file, which can run "
                              "code when loaded; no *.safetensors weights; medfm loads text models from safetensors "
                              "only (convert the model with transformers' save_pretrained where you trust it)")
    # Beneath that check, transformers itself is told to load safetensors only (it would fall back to the .bin).
    with pytest.raises(OSError, match="model.safetensors"):
        _load_quietly(folder)


def test_checkpoint_convert_turns_a_trusted_pickle_into_hashed_safetensors(tmp_path, model, capsys):
    from medfm.cli import main

    before = model.encode(Modality.REPORT, REPORTS)
    model.save_pretrained(tmp_path / "src")
    as_pickle(tmp_path / "src/model.safetensors", "pytorch_model.bin")
    assert main(["checkpoint", "convert", str(tmp_path / "src"), str(tmp_path / "dst")]) == 2  # flag required
    capsys.readouterr()
    assert main(["checkpoint", "convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--trust-pickle"]) == 0
    assert (tmp_path / "dst/model.safetensors").is_file() and not (tmp_path / "dst/pytorch_model.bin").exists()
    converted = MultimodalModel.from_pretrained(tmp_path / "dst").eval()  # no trust needed any more
    assert torch.equal(converted.encode(Modality.REPORT, REPORTS), before)
    assert main(["checkpoint", "convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--trust-pickle"]) == 2
    assert "not empty" in capsys.readouterr().err
