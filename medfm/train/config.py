"""Schema of ``configs/train/*.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from medfm.align.config import LossConfig
from medfm.config import Config
from medfm.keys import Modality


class TrainConfig(Config):
    """Pretraining hyper-parameters.

    Attributes:
        lr: peak learning rate of encoders and projections trained from scratch.
        text_lr: peak learning rate of the LoRA adapters (a pretrained model moves less).
        warmup_fraction: share of all steps spent ramping the rate up linearly;
            the rest follows a cosine to zero.
        loss: the contrastive objective and its options (``medfm.align.LossConfig``); a bare
            name such as ``infonce`` is short for ``{name: infonce}``.
        mask_same_patient: tell the loss which samples share a patient, so that two studies
            of one patient are never each other's negatives (``loss.same_patient`` says
            whether they are masked or positives); False: they are ordinary negatives.
        on_error: what a dataset does with an unreadable file (``skip`` quarantines it).
        balance_by: label or metadata keys (e.g. ``[site]``) whose groups are drawn equally
            often, with replacement; empty: every sample once per epoch, shuffled.
        batches: ``mixed``: a batch holds studies with whatever modalities they have;
            ``by_modality``: each image with its own report is a sample and each batch
            holds one modality (needs per-image reports and ``loss.pairs: anchor`` on
            ``report``; see :mod:`medfm.train.batches`).
        repeat: with ``by_modality``, how many times a modality's pairs are drawn per
            epoch (e.g. ``{ct: 3}`` for a modality few studies have); default 1.
        batch_size: samples per process; under torchrun the contrastive batch (the
            negatives each sample sees) is ``batch_size × world size``.
        accumulate: micro-batches summed into one optimizer step. Not equivalent to a
            larger batch for a contrastive loss (negatives come only from one
            micro-batch); ``grad_cache_chunk`` is the exact alternative.
        grad_cache_chunk: embed the batch in chunks of this many samples per process
            with gradient caching, so a large contrastive batch fits in memory with
            the same gradients; None: one forward pass over the whole batch.
        precision: ``auto`` takes bf16 only where the hardware computes it natively
            (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32.
        checkpoint_every_steps: also checkpoint every N optimizer steps (a checkpoint
            is always written at the end of each epoch); None: epoch ends only.
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
    loss: LossConfig = LossConfig()
    mask_same_patient: bool = True
    on_error: Literal["raise", "skip"] = "skip"
    balance_by: list[str] = []
    batches: Literal["mixed", "by_modality"] = "mixed"
    repeat: dict[Modality, int] = {}
    accumulate: int = Field(1, ge=1)
    grad_cache_chunk: int | None = Field(None, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every_steps: int | None = Field(None, ge=1)

    @field_validator("repeat")
    @classmethod
    def _positive_repeats(cls, value: dict[Modality, int]) -> dict[Modality, int]:
        bad = {str(m): n for m, n in value.items() if n < 1 or m == Modality.REPORT}
        if bad:
            raise ValueError(f"repeat takes image modalities and counts of at least 1; got {bad}")
        return value

    @model_validator(mode="after")
    def _by_modality_fits_the_loss(self) -> TrainConfig:
        if self.batches == "mixed":
            if self.repeat:
                raise ValueError("repeat needs batches: by_modality (a mixed batch repeats whole studies)")
            return self
        if self.loss.pairs != "anchor" or self.loss.anchor != Modality.REPORT or self.loss.name == "gram":
            raise ValueError("batches: by_modality aligns each image with its own report only; it needs "
                             "loss: {name: infonce or siglip, pairs: anchor, anchor: report}")
        if self.balance_by:
            raise ValueError("balance_by draws whole studies; it cannot be combined with batches: by_modality")
        return self

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_by_name(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value
