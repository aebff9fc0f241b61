"""The report encoder: pooling, decoder LLMs from a local path, LoRA per architecture, the prefix cache."""

import pytest
import torch

from medfm.errors import ConfigError
from medfm.keys import Field, Modality, report_of
from medfm.models import ModelConfig, create_model, load_model_config
from medfm.models.text import HFTextConfig, HFTextEncoder, pool, text_model_path
from medfm.train import TrainConfig, pretrain

from ..conftest import REPO

REPORTS = ["The heart is enlarged.", "No pleural effusion or pneumothorax is seen today.", "Sinus rhythm."]


def test_last_token_pooling_indexes_the_last_real_token_for_either_padding_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # value = 4 * row + position
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]


def test_cls_and_mean_pooling_ignore_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, "cls").flatten().tolist() == [1.0, 2.0]
    assert pool(hidden, mask, "mean").flatten().tolist() == [2.0, 4.0]


def tiny_text(kind, **extra):
    size = {"kind": kind, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
    return HFTextConfig.model_validate({"model": "random", "random_size": size, "max_length": 32,
                                        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "layers": [1]}, **extra})


@pytest.mark.parametrize(("kind", "targets", "pattern"), [
    ("bert", {"query", "key", "value", "dense"}, ".layer.1."),
    ("gpt2", {"c_attn", "c_proj", "c_fc"}, ".h.1."),
    ("llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, ".layers.1."),
])
def test_lora_targets_and_layers_follow_the_architecture(kind, targets, pattern):
    torch.manual_seed(0)
    encoder = HFTextEncoder(tiny_text(kind))
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and pattern in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == targets
    assert encoder.causal == (kind != "bert")
    assert encoder.pooling == ("mean" if kind == "bert" else "last")


def test_decoder_refuses_cls_pooling():
    with pytest.raises(ConfigError, match="pooling.*first token"):
        HFTextEncoder(tiny_text("gpt2", pooling="cls"))


def test_decoder_embedding_ignores_padding_and_runs_uncached():
    """A report's vector must not depend on the longer reports it is batched with."""
    torch.manual_seed(0)
    encoder = HFTextEncoder(tiny_text("gpt2")).eval()
    assert encoder.first_tuned_layer == 0  # decoders run the whole model (no frozen-prefix cache)
    with torch.no_grad():
        alone = encoder(REPORTS[:1])
        batched = encoder(REPORTS)
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_bert_prefix_cache_agrees_with_the_full_forward(pooling):
    torch.manual_seed(0)
    cached = HFTextEncoder(tiny_text("bert", pooling=pooling)).eval()
    uncached = HFTextEncoder(tiny_text("bert", pooling=pooling, cache_frozen_prefix=False)).eval()
    uncached.load_state_dict(cached.state_dict())
    with torch.no_grad():  # LoRA B off zero so the adapted layer matters
        for (name, p), q in zip(cached.named_parameters(), uncached.parameters(), strict=True):
            if "lora_B" in name:
                p.normal_(0, 0.05)
                q.copy_(p)
    assert cached.first_tuned_layer == 1 and uncached.first_tuned_layer == 0
    with torch.no_grad():
        assert torch.allclose(cached(REPORTS), uncached(REPORTS), atol=1e-5)


def save_tiny_decoder(folder, kind):
    """A tiny random decoder LLM and its tokenizer saved as a Hugging Face model folder, offline."""
    torch.manual_seed(0)
    encoder = HFTextEncoder(tiny_text(kind))
    encoder.transformer.save_pretrained(folder)  # peft-wrapped: save the bare model, adapters merged out below
    from safetensors.torch import load_file, save_file

    weights = {k.replace("base_layer.", ""): v for k, v in load_file(str(folder / "model.safetensors")).items()
               if "lora_" not in k}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    encoder.tokenizer.save_pretrained(folder)
    return folder


def toy_samples(n=16):
    g = torch.Generator().manual_seed(0)
    return [{
        Modality.CXR: torch.rand(1, 32, 32, generator=g) * 0.2 + (0.8 if i % 2 else 0.0),
        Modality.REPORT: "The heart is enlarged." if i % 2 else "Heart size is normal.",
        Field.LABEL: {"finding": float(i % 2)},
        Field.META: {"patient_id": f"P{i}", "study_id": f"S{i}"},
    } for i in range(n)]


@pytest.mark.parametrize("kind", ["gpt2", pytest.param("llama", marks=pytest.mark.slow)])
def test_local_decoder_llm_trains_with_lora(tmp_path, kind):
    folder = save_tiny_decoder(tmp_path / kind, kind)
    config = ModelConfig.model_validate({"name": "decoder", "embed_dim": 16, "encoders": {
        "cxr": {"name": "vit2d", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 1,
                "num_heads": 2, "mlp_dim": 64},
        "report": {"name": "hf_text", "model": str(folder), "max_length": 32,
                   "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
    }})
    model = create_model(config, seed=0)
    text = model.encoders[Modality.REPORT]
    assert text.pretrained and text.causal and text.pooling == "last"
    before = {n: p.detach().clone() for n, p in text.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in text.named_parameters() if not p.requires_grad}
    summary = pretrain(model, toy_samples(), TrainConfig(epochs=5, batch_size=8, lr=3e-3, text_lr=3e-3,
                                                         warmup_fraction=0.0), tmp_path / "run", show_progress=False)
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < losses[0]
    after = dict(text.named_parameters())
    assert before and all("lora_" in n for n in before)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a local model folder"):
        text_model_path(str(tmp_path))


def test_sections_keep_findings_and_impression_and_leave_prompts_whole():
    torch.manual_seed(0)
    plain = HFTextEncoder(tiny_text("bert")).eval()
    sections = HFTextEncoder(tiny_text("bert", sections=["findings", "impression"])).eval()
    sections.load_state_dict(plain.state_dict())
    report = "EXAMINATION: OCT macula, left eye. FINDINGS: Soft drusen. IMPRESSION: Drusen."
    with torch.no_grad():
        assert torch.allclose(sections([report]), plain(["Soft drusen. Drusen."]), atol=1e-6)
        assert torch.allclose(sections(["No drusen."]), plain(["No drusen."]), atol=1e-6)


def test_unknown_section_is_refused():
    with pytest.raises(ValueError, match="sections must be"):
        tiny_text("bert", sections=["findngs"])


def test_own_reports_share_one_text_encoder_call_and_match_encoding_alone():
    model = create_model(load_model_config(REPO / "configs/models/tiny.yaml"), seed=0).eval()
    texts = {report_of(Modality.CXR): ["Cardiomegaly.", "Normal heart size."],
             report_of(Modality.ECG): ["Atrial fibrillation."]}
    batch = {**texts, Field.MASK: {k: torch.ones(len(v), dtype=torch.bool) for k, v in texts.items()}}
    calls = []
    model.encoders[Modality.REPORT].register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    with torch.no_grad():
        out = model(batch)
        for key, values in texts.items():
            assert torch.allclose(out[key], model.encode(Modality.REPORT, values), atol=1e-6)
    assert calls[0] == 3  # the batch's three texts in one call, then the two checks
