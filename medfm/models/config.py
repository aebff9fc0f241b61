"""Model configs: one named YAML per model (``configs/models/<name>.yaml``).

Each encoder's own keys are validated by the ``Config`` class of the encoder the
registry finds under its ``name``, so a new encoder brings its own schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from medfm.config import Config, read_yaml, validate_config
from medfm.errors import ConfigError
from medfm.keys import Modality
from medfm.registry import ENCODERS


class ModelConfig(Config):
    """Schema of ``configs/models/*.yaml``.

    Attributes:
        name: the model's name (``tiny``, ``demo``, ``base``...).
        embed_dim: size of the shared embedding space.
        init_temperature: initial softmax temperature of the contrastive loss
            (learnable; CLIP's 0.07).
        encoders: per modality, ``name`` (a registered encoder) plus its own keys.
    """

    name: str
    embed_dim: int = Field(128, ge=8)
    init_temperature: float = Field(0.07, gt=0, le=1)
    encoders: dict[Modality, dict[str, Any]]

    def resolved(self) -> ModelConfig:
        """This config with every encoder default written out.

        Checkpoints store this form, so a default changed in a later medfm release
        cannot silently change the architecture an old checkpoint is rebuilt with.
        """
        encoders = {m: {"name": raw["name"], **self.encoder_config(m).model_dump(mode="json")}
                    for m, raw in self.encoders.items()}
        return self.model_copy(update={"encoders": encoders})

    def encoder_config(self, modality: Modality) -> Config:
        """The validated config of one modality's encoder."""
        raw = dict(self.encoders[modality])
        cls = ENCODERS.get(raw.pop("name"))
        return cls.Config.model_validate(raw)


def load_model_config(path: str | Path) -> ModelConfig:
    """Load and fully validate a model config, encoders included."""
    import medfm.models  # noqa: F401  (registers the built-in encoders)

    path = Path(path)
    config = validate_config(read_yaml(path), ModelConfig, path)
    check_encoders(config, path)
    return config


def check_encoders(config: ModelConfig, path: str | Path | None = None) -> None:
    """Validate every encoder block against its registered schema."""
    for modality, raw in config.encoders.items():
        key = f"encoders.{modality}"
        if "name" not in raw:
            raise ConfigError(path, f"{key}.name", "required key is missing")
        if raw["name"] not in ENCODERS:
            raise ConfigError(path, f"{key}.name", f"unknown encoder {raw['name']!r}; one of: {', '.join(ENCODERS)}")
        cls = ENCODERS.get(raw["name"])
        try:
            validate_config({k: v for k, v in raw.items() if k != "name"}, cls.Config, path)
        except ConfigError as err:
            raise ConfigError(path, f"{key}.{err.key}" if err.key else key, err.reason) from None
