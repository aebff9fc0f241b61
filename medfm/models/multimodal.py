"""One encoder + projection per modality into a shared, unit-norm embedding space."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from medfm import __version__
from medfm.atomic import write_atomic, write_json_atomic
from medfm.errors import CheckpointError
from medfm.keys import Field, Modality
from medfm.models.config import ModelConfig, check_encoders
from medfm.registry import ENCODERS

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


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

    def encode(self, modality: Modality, inputs: Any) -> torch.Tensor:
        """Unit-norm embeddings ``(n, embed_dim)`` for a packed batch of one modality."""
        features = self.encoders[modality](inputs)
        return F.normalize(self.projections[modality](features), dim=-1)

    def forward(self, batch: dict[str, Any]) -> dict[Modality, torch.Tensor]:
        """Embed every modality present in a collated batch (packed, see ``collate_samples``)."""
        return {m: self.encode(m, batch[m]) for m in self.modalities if m in batch[Field.MASK]}

    def preprocess(self, modality: Modality, value: Any) -> Any:
        """The input transform this model was trained with, for one reader output."""
        encoder = self.encoders[modality]
        return encoder.preprocess(value) if hasattr(encoder, "preprocess") else value

    def input_spec(self, modality: Modality) -> dict | None:
        """The input contract of one modality's transform (None: nothing worth caching, e.g. text)."""
        encoder = self.encoders[modality]
        return encoder.input_spec() if hasattr(encoder, "input_spec") else None

    # -- checkpoints -------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` atomically.

        Frozen weights of a pretrained text model are not copied: they are reloaded
        from their local source, whose SHA-256 is recorded and checked on load.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        skipped = self._reloadable_keys()
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if k not in skipped}
        meta = {
            "format": "medfm-checkpoint/1",
            "medfm_version": __version__,
            "model": self.config.resolved().model_dump(mode="json"),
            "reloaded_from_base": self._base_fingerprints(),
        }
        write_atomic(directory / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
        write_json_atomic(directory / CONFIG, meta)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MultimodalModel:
        """Rebuild a model from a checkpoint folder; never unpickles.

        Raises:
            CheckpointError: files missing, base model changed, or weights do not fit.
        """
        meta = _read_checkpoint_meta(Path(directory))
        model = cls(ModelConfig.model_validate(meta["model"]))
        return model.load_weights(directory, meta)

    def load_weights(self, directory: str | Path, meta: dict | None = None) -> MultimodalModel:
        """Load a checkpoint's weights into this model (e.g. to resume training); never unpickles.

        Raises:
            CheckpointError: files missing, base model changed, or weights do not fit.
        """
        directory = Path(directory)
        meta = _read_checkpoint_meta(directory) if meta is None else meta
        if meta.get("reloaded_from_base", {}) != self._base_fingerprints():
            raise CheckpointError(f"{directory}: the pretrained text model on this machine differs from the "
                                  "one this checkpoint was trained on (SHA-256 mismatch)")
        state = load_file(str(directory / WEIGHTS))
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = set(missing) - self._reloadable_keys()
        if missing or unexpected:
            raise CheckpointError(f"{directory / WEIGHTS}: weights do not fit the model "
                                  f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        return self

    def _reloadable_keys(self) -> set[str]:
        keys = set()
        for modality, encoder in self.encoders.items():
            if hasattr(encoder, "frozen_base_keys"):
                keys |= {f"encoders.{modality}.{k}" for k in encoder.frozen_base_keys()}
        return keys

    def _base_fingerprints(self) -> dict[str, str]:
        out = {}
        for modality, encoder in self.encoders.items():
            if getattr(encoder, "pretrained", False):
                from medfm.models.text import text_model_path

                weights = text_model_path(encoder.config.model) / "model.safetensors"
                out[str(modality)] = _sha256(weights)
        return out


def create_model(config: ModelConfig, seed: int | None = None) -> MultimodalModel:
    """Build a model from its config; ``seed`` fixes the random initialisation."""
    if seed is not None:
        torch.manual_seed(seed)
    return MultimodalModel(config)


def _read_checkpoint_meta(directory: Path) -> dict:
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: checkpoint file missing")
    return json.loads((directory / CONFIG).read_text())


def _sha256(path: Path) -> str:
    """SHA-256 of a file, hashed once per process while its size and mtime stay the same.

    Every checkpoint records the 90 MB base text model's hash; re-reading it at each
    epoch's save would be wasted I/O.
    """
    stat = path.stat()
    return _sha256_of_version(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

