"""Schema of ``configs/train/*.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medfm.config import Config


class TrainConfig(Config):
    """Pretraining hyper-parameters.

    Attributes:
        lr: peak learning rate of encoders and projections trained from scratch.
        text_lr: peak learning rate of the LoRA adapters (a pretrained model moves less).
        warmup_fraction: share of all steps spent ramping the rate up linearly;
            the rest follows a cosine to zero.
        mask_same_patient: drop two studies of one patient from each other's negatives.
        on_error: what a dataset does with an unreadable file (``skip`` quarantines it).
        balance_by: label or metadata keys (e.g. ``[site]``) whose groups are drawn equally
            often, with replacement; empty: every sample once per epoch, shuffled.
    """

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(5e-4, gt=0)
    text_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    loss: str = "infonce"
    mask_same_patient: bool = True
    on_error: Literal["raise", "skip"] = "skip"
    balance_by: list[str] = []
