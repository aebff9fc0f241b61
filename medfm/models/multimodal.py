"""One encoder + projection per modality into a shared, unit-norm embedding space."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from medfm import __version__
from medfm.atomic import fsync_directory, fsync_tree, recover_together, sha256_file, write_atomic, write_json_atomic
from medfm.config import validate_config
from medfm.errors import CheckpointError, InputContractError
from medfm.io.wfdb import ECGRecord
from medfm.keys import STANDARD_LEADS, Field, Modality, encoder_of, is_text
from medfm.models.config import ModelConfig, check_encoders
from medfm.models.contract import check_contract, check_input_shape, expected_input_shape
from medfm.models.trust import (
    FILES,
    checked_record,
    expected_sha256,
    is_pickle,
    load_tensors,
    pickle_refusal,
    read_verified,
    record_of,
    weights_file,
)
from medfm.registry import ENCODERS

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ADAPTERS = "adapters"  # adapters/<modality>/adapter_model.safetensors + adapter_config.json (peft's format)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "medfm-checkpoint/2"


class MultimodalModel(nn.Module):
    """Encoders and projections for every modality named in the config.

    ``logit_scale`` is the log inverse temperature of the contrastive loss and of
    zero-shot probabilities; it is learnt, as in CLIP, and clamped at 100.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_encoders(config)
        self.config = config
        self.encoders = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        for modality, raw in config.encoders.items():
            encoder = ENCODERS.get(raw["name"])(config.encoder_config(modality))
            self.encoders[modality] = encoder
            self.projections[modality] = nn.Linear(encoder.out_dim, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    @property
    def modalities(self) -> list[Modality]:
        return [Modality(m) for m in self.encoders]

    def temperature_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def encode(self, key: str, inputs: Any) -> torch.Tensor:
        """Unit-norm embeddings ``(n, embed_dim)`` for a packed batch of one input key.

        ``key`` is a modality, or an image's own report (``report.oct``), which the report
        encoder embeds.

        Raises:
            InputContractError: the batch does not match the input contract (see ``check_input``).
        """
        modality = encoder_of(key)
        self.check_input(modality, inputs)
        features = self.encoders[modality](inputs)
        return F.normalize(self.projections[modality](features), dim=-1)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Embed every input present in a collated batch (packed, see ``collate_samples``).

        All texts of the batch (one report, or each image's own) go through the report
        encoder in one call, so its length grouping and prefix cache see them together.
        """
        keys = [k for k in batch[Field.MASK] if encoder_of(k) in self.encoders]
        out = {k: self.encode(k, batch[k]) for k in keys if not is_text(k)}
        texts = [k for k in keys if is_text(k)]
        if texts:
            embedded = self.encode(Modality.REPORT, [t for k in texts for t in batch[k]])
            out.update(zip(texts, embedded.split([len(batch[k]) for k in texts]), strict=True))
        return out

    def check_input(self, modality: Modality, inputs: Any) -> None:
        """Refuse a batch the model was not trained on: wrong channels, image size or signal length.

        Raises:
            InputContractError: expected vs got, e.g. a 256x256 image for a model trained at
                128, or a 5 s ECG for a 10 s model.
        """
        spec = self.input_spec(modality)
        if spec is None:
            if isinstance(inputs, str) or not all(isinstance(t, str) for t in inputs):
                raise InputContractError(f"{modality}: expected a list of texts, got {type(inputs).__name__}")
            return
        if not isinstance(inputs, torch.Tensor):
            raise InputContractError(f"{modality}: expected a tensor batch, got {type(inputs).__name__}")
        check_input_shape(str(modality), spec, tuple(inputs.shape))

    def preprocess(self, modality: Modality, value: Any) -> Any:
        """The input transform this model was trained with, for one reader output.

        The transform is the encoder's own, built from the config stored in the
        checkpoint (whose input contract ``from_pretrained`` has checked), so it is the one
        used in training. Reader outputs that cannot be made to match are refused.

        Raises:
            InputContractError: an ECG with none of the model's leads, a colour image for a
                one-channel model, or a transform output of the wrong shape.
        """
        encoder = self.encoders[modality]
        spec = self.input_spec(modality)
        if spec is None or not hasattr(encoder, "preprocess"):
            return value
        value = _conform_reader_output(str(modality), spec, value)
        out = encoder.preprocess(value)
        if isinstance(out, torch.Tensor):
            check_input_shape(str(modality), spec, (1, *out.shape))
        return out

    def input_spec(self, modality: Modality) -> dict | None:
        """The input contract of one modality's transform (None: nothing worth caching, e.g. text)."""
        encoder = self.encoders[modality]
        return encoder.input_spec() if hasattr(encoder, "input_spec") else None

    def input_contract(self) -> dict[str, dict]:
        """``{modality: input_spec}`` for every modality with a spec; stored in checkpoints."""
        specs = {str(m): self.input_spec(m) for m in self.modalities}
        return {m: spec for m, spec in specs.items() if spec is not None}

    def merge_adapters(self) -> MultimodalModel:
        """Merge every LoRA adapter into its base weights, so inference needs no peft; returns self."""
        for encoder in self.encoders.values():
            if hasattr(encoder, "merge_adapters"):
                encoder.merge_adapters()
        return self

    @property
    def merged(self) -> bool:
        return any(getattr(encoder, "merged", False) for encoder in self.encoders.values())

    # -- checkpoints -------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, merged: bool = False) -> Path:
        """Write a checkpoint folder; each file is written atomically.

        Layout: ``model.safetensors`` (every weight except LoRA adapters and the frozen
        pretrained text model), ``adapters/<modality>/`` (peft's
        ``adapter_model.safetensors`` + ``adapter_config.json``, loadable by peft
        itself) and ``config.json`` (model config, input contract, SHA-256 of the
        pretrained text weights, ``merged``, and under ``files`` the SHA-256 of every
        other file written, checked on load). Frozen weights of a pretrained text model
        are not copied: they are reloaded from their local source, whose hash is checked
        on load.

        Args:
            merged: write a copy of this model with LoRA merged into the text weights
                (no adapters; the merged text weights are saved in full). This model is
                left unmerged.
        """
        if merged and not self.merged:
            twin = copy.deepcopy(self).merge_adapters()
            return twin.save_pretrained(directory)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        skipped = self._reloadable_keys()
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()
                 if k not in skipped and "lora_" not in k}
        meta = {
            "format": FORMAT,
            "medfm_version": __version__,
            "model": self.config.resolved().model_dump(mode="json"),
            "merged": self.merged,
            "input_contract": self.input_contract(),
            "reloaded_from_base": self._base_fingerprints(),
        }
        written = [write_atomic(directory / WEIGHTS,
                                lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))]
        adapters = self._adapter_encoders()
        for modality, encoder in adapters.items():
            folder = directory / ADAPTERS / modality
            _write_dir_atomic(folder, encoder.save_adapter)
            written += [folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG]
        if not adapters and (directory / ADAPTERS).exists():
            shutil.rmtree(directory / ADAPTERS)  # a merged checkpoint over an unmerged one: drop stale adapters
        # config.json holds the hashes, so it is not hashed itself; what it says is cross-checked on load
        # (the weights must fit its model config exactly, its contract and base-model hash must match).
        meta[FILES] = record_of(directory, written)
        write_json_atomic(directory / CONFIG, meta)  # last: a complete config.json marks a complete checkpoint
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, trust_pickle: bool = False) -> MultimodalModel:
        """Rebuild a model from a checkpoint folder (or its weights file, ``config.json`` beside it).

        Every file is checked against the SHA-256 recorded in ``config.json`` when it was
        written. Checkpoints written before hashes were recorded load with an
        :class:`~medfm.models.trust.UnverifiedCheckpointWarning`.

        Args:
            trust_pickle: load pickle weights (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) found
                instead of safetensors, with ``torch.load(weights_only=True)``; off, they
                are refused, since unpickling can run code.

        Raises:
            CheckpointError: files missing, a pickle file without ``trust_pickle``, a file
                that does not match its recorded hash, base model changed, input contract
                changed, or weights do not fit.
            ConfigError: the model config in ``config.json`` is not valid.
        """
        _finish_interrupted_save(Path(directory))
        directory, weights = _checkpoint_files(Path(directory), trust_pickle)
        meta = _read_checkpoint_meta(directory)
        model = cls(validate_config(meta["model"], ModelConfig, directory / CONFIG))
        if meta.get("merged", False):
            model.merge_adapters()
        return model._load_checkpoint(directory, weights, meta, trust_pickle)

    def load_weights(self, directory: str | Path, meta: dict | None = None,
                     trust_pickle: bool = False) -> MultimodalModel:
        """Load a checkpoint's weights (and adapters) into this model, e.g. to resume training.

        Checked as in :meth:`from_pretrained`; pickle files only with ``trust_pickle``.

        Raises:
            CheckpointError: files missing, a pickle file without ``trust_pickle``, a file
                that does not match its recorded hash, base model changed, input contract
                changed, merged state differs, or weights do not fit.
        """
        directory, weights = _checkpoint_files(Path(directory), trust_pickle)
        meta = _read_checkpoint_meta(directory) if meta is None else meta
        return self._load_checkpoint(directory, weights, meta, trust_pickle)

    def _load_checkpoint(self, directory: Path, weights: Path, meta: dict, trust_pickle: bool) -> MultimodalModel:
        where = directory / CONFIG
        record = checked_record(directory, meta.get(FILES), where)
        if "input_contract" in meta:  # format 1 checkpoints predate the contract
            check_contract(meta["input_contract"], self.input_contract(), str(directory / CONFIG))
        if bool(meta.get("merged", False)) != self.merged:
            raise CheckpointError(f"{directory / CONFIG}: checkpoint has merged={meta.get('merged', False)} "
                                  f"adapters but this model has merged={self.merged}; use from_pretrained")
        if meta.get("reloaded_from_base", {}) != self._base_fingerprints():
            raise CheckpointError(f"{directory}: the pretrained text model on this machine differs from the "
                                  "one this checkpoint was trained on (SHA-256 mismatch)")
        state = load_tensors(weights, expected_sha256(record, directory, weights, where), where, trust_pickle)
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = set(missing) - self._reloadable_keys()
        if meta.get("format") == FORMAT:
            missing -= self._load_adapters(directory, record, trust_pickle)
        if missing or unexpected:
            raise CheckpointError(f"{weights}: weights do not fit the model "
                                  f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        return self

    def _adapter_encoders(self) -> dict[str, nn.Module]:
        return {str(m): e for m, e in self.encoders.items() if getattr(e, "has_adapters", False)}

    def _load_adapters(self, directory: Path, record: dict[str, str] | None, trust_pickle: bool) -> set[str]:
        """Load each modality's peft adapter, hashes checked; returns the model's state-dict keys they filled."""
        from peft import set_peft_model_state_dict

        where = directory / CONFIG
        filled: set[str] = set()
        for modality, encoder in self._adapter_encoders().items():
            folder = directory / ADAPTERS / modality
            weights = weights_file(folder, ADAPTER_WEIGHTS, trust_pickle)
            for path in (weights or folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG):
                if not path.is_file():
                    raise CheckpointError(f"{path}: adapter file missing")
            config_path = folder / ADAPTER_CONFIG
            try:
                stored = json.loads(read_verified(config_path, expected_sha256(record, directory, config_path, where),
                                                  where))
            except ValueError as err:
                raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
            current = encoder.backbone.peft_config["default"].to_dict()
            for key in ("r", "lora_alpha", "target_modules", "layers_to_transform"):
                a, b = stored.get(key), current.get(key)
                a, b = (sorted(a) if isinstance(a, list | set) else a), (sorted(b) if isinstance(b, list | set) else b)
                if a != b:
                    raise CheckpointError(f"{folder / ADAPTER_CONFIG}: {key} is {a!r} but the model config "
                                          f"builds {b!r}")
            tensors = load_tensors(weights, expected_sha256(record, directory, weights, where), where, trust_pickle)
            expected = encoder.adapter_state()
            if set(tensors) != set(expected):
                raise CheckpointError(f"{weights}: adapter weights do not fit the model "
                                      f"(missing {sorted(set(expected) - set(tensors))[:3]}, "
                                      f"unexpected {sorted(set(tensors) - set(expected))[:3]})")
            set_peft_model_state_dict(encoder.backbone, tensors)
            encoder.clear_prefix_cache()
            filled |= {f"encoders.{modality}.{k}" for k, _ in encoder.named_parameters() if "lora_" in k}
        return filled

    def _reloadable_keys(self) -> set[str]:
        keys = set()
        for modality, encoder in self.encoders.items():
            if hasattr(encoder, "frozen_base_keys"):
                keys |= {f"encoders.{modality}.{k}" for k in encoder.frozen_base_keys()}
        return keys

    def _base_fingerprints(self) -> dict[str, str]:
        from medfm.models.text import base_weights_sha256

        return {str(m): base_weights_sha256(e.config.model) for m, e in self.encoders.items()
                if getattr(e, "reloads_base", False)}


def _conform_reader_output(modality: str, spec: dict, value: Any) -> Any:
    """Make a reader output fit the contract where that is lossless, else refuse it.

    An ECG must have at least one of the model's leads; a grey image stored as RGB
    (identical channels) becomes one channel for a one-channel model, a true colour
    image is refused rather than silently averaged.
    """
    if isinstance(value, ECGRecord):
        if value.signal.shape[0] != len(STANDARD_LEADS) or not value.lead_mask.any():
            raise InputContractError(f"{modality}: the model was trained on leads {', '.join(STANDARD_LEADS)}; "
                                     f"this record has none of them ({int(value.lead_mask.sum())} of "
                                     f"{len(STANDARD_LEADS)} present, signal shape {value.signal.shape})")
        return value
    array = getattr(value, "array", None)
    shape = expected_input_shape(spec)
    channels = shape[0] if shape else None
    if isinstance(array, np.ndarray) and channels is not None and array.ndim >= 3 and array.shape[0] != channels:
        if channels == 1 and all(np.array_equal(array[0], c) for c in array[1:]) and dataclasses.is_dataclass(value):
            return dataclasses.replace(value, array=array[:1])
        raise InputContractError(f"{modality}: the model was trained on {channels}-channel images, got "
                                 f"{array.shape[0]} channels that differ from each other (a colour image)")
    return value


def _write_dir_atomic(target: Path, write: Any) -> None:
    """``write(tmp_dir)`` into a fresh sibling folder, then swap it in for ``target``.

    Readers see the old folder or the new one, except for the instant between the two
    renames, when ``target`` is absent (loading then fails loudly, never half-written).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = target.with_name(f".{target.name}.{tag}.tmp")
    old = target.with_name(f".{target.name}.{tag}.old")
    try:
        write(tmp)
        fsync_tree(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_directory(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def create_model(config: ModelConfig, seed: int | None = None) -> MultimodalModel:
    """Build a model from its config; ``seed`` fixes the random initialisation."""
    if seed is not None:
        torch.manual_seed(seed)
    return MultimodalModel(config)


def _checkpoint_files(path: Path, trust_pickle: bool) -> tuple[Path, Path]:
    """``(checkpoint folder, weights file)`` of a folder or of a weights file given directly.

    Raises:
        CheckpointError: no weights, or pickle weights without ``trust_pickle``.
    """
    if path.is_file():
        if is_pickle(path) and not trust_pickle:
            raise CheckpointError(pickle_refusal(path))
        return path.parent, path
    weights = weights_file(path, WEIGHTS, trust_pickle)
    if weights is None:
        raise CheckpointError(f"{path / WEIGHTS}: checkpoint file missing")
    return path, weights


def _read_checkpoint_meta(directory: Path) -> dict:
    """``config.json`` of a checkpoint folder, checked to be a medfm checkpoint's.

    Raises:
        CheckpointError: missing, not JSON (e.g. truncated), or not written by medfm.
    """
    path = directory / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("medfm-checkpoint/") \
            or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{path}: not a medfm checkpoint config (no 'format': 'medfm-checkpoint/N' "
                              "and 'model'); medfm loads folders written by save_pretrained")
    return meta


def _sha256(path: Path) -> str:
    """SHA-256 of a file, hashed once per process while its size and mtime stay the same.

    Every checkpoint records the 90 MB base text model's hash; re-reading it at each
    epoch's save would be wasted I/O.
    """
    stat = path.stat()
    return _sha256_of_version(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _finish_interrupted_save(directory: Path) -> None:
    """A checkpoint a kill left mid-replacement (:func:`medfm.atomic.commit_together`) is completed, or its
    uncommitted staging dropped, before it is read; a read-only folder is read as it is."""
    if directory.is_dir():
        try:
            recover_together(directory)
        except OSError:
            pass  # not ours to write: the hash checks that follow refuse a mixed set
