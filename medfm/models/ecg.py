"""12-lead ECG encoder: a transformer over time patches of all leads."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from medfm.config import Config
from medfm.data.transforms import ECG_TRANSFORM_VERSION, ecg_to_input
from medfm.io.wfdb import ECGRecord
from medfm.keys import STANDARD_LEADS
from medfm.registry import ENCODERS


class ECGTransformerConfig(Config):
    sample_rate: int = Field(100, ge=50)
    duration_s: float = Field(10.0, gt=0)
    patch_size: int = Field(25, ge=1)
    stem_channels: int = Field(64, ge=1)
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(3, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_dim: int = Field(512, ge=8)
    dropout: float = Field(0.0, ge=0, lt=1)
    voltage_token: bool = True

    @model_validator(mode="after")
    def _shapes_divide(self) -> ECGTransformerConfig:
        samples = round(self.sample_rate * self.duration_s)
        if samples % self.patch_size:
            raise ValueError(f"{samples} samples per record is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        return self


@ENCODERS.register("ecg_transformer")
class ECGTransformer(nn.Module):
    """Conv stem → non-overlapping time patches → pre-norm transformer → mean pool.

    The stem (kernel 7 at the model rate) sharpens local wave shapes such as P waves
    before patching, which a single linear patch embedding resolves poorly.

    Voltage is itself a finding (LVH), yet layer norms and the unit-norm embedding
    are blind to a record's overall scale. The optional voltage token therefore
    carries each lead's log peak-to-peak amplitude, as an additive code that no norm
    divides out.
    """

    Config = ECGTransformerConfig

    def __init__(self, config: ECGTransformerConfig):
        super().__init__()
        self.config = config
        n_patches = round(config.sample_rate * config.duration_s) // config.patch_size
        self.stem = nn.Sequential(
            nn.Conv1d(len(STANDARD_LEADS), config.stem_channels, kernel_size=7, padding=3), nn.GELU(),
        )
        self.patch = nn.Conv1d(config.stem_channels, config.hidden_size, config.patch_size, stride=config.patch_size)
        self.voltage = nn.Linear(len(STANDARD_LEADS), config.hidden_size) if config.voltage_token else None
        n_tokens = n_patches + (1 if config.voltage_token else 0)
        self.position = nn.Parameter(torch.zeros(1, n_tokens, config.hidden_size))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.hidden_size, config.num_heads, config.mlp_dim, config.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.hidden_size)
        self.out_dim = config.hidden_size

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(self.stem(signals)).transpose(1, 2)
        if self.voltage is not None:
            tokens = torch.cat([self.voltage(log_peak_to_peak(signals)).unsqueeze(1), tokens], dim=1)
        return self.norm(self.blocks(tokens + self.position)).mean(dim=1)

    def input_spec(self) -> dict:
        """What the input transform depends on; part of the preprocessing cache key."""
        return {"transform": "ecg_to_input", "version": ECG_TRANSFORM_VERSION,
                "sample_rate": self.config.sample_rate, "duration_s": self.config.duration_s}

    def preprocess(self, record: ECGRecord) -> torch.Tensor:
        return ecg_to_input(record, self.config.sample_rate, self.config.duration_s)


def log_peak_to_peak(signals: torch.Tensor, floor_mv: float = 0.05) -> torch.Tensor:
    """Per-lead log amplitude ``(B, leads)``: log of the 1st-99th percentile range in mV.

    Percentiles rather than min/max so a single spike does not set the voltage; the
    floor keeps absent (all-zero) leads finite.
    """
    q = torch.quantile(signals, torch.tensor([0.01, 0.99], dtype=signals.dtype), dim=-1)
    return torch.log((q[1] - q[0]).clamp_min(floor_mv))
