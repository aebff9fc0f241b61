"""Schema of the ``loss:`` block: which objective aligns the modalities, and how.

Every loss is built as ``LOSSES.get(config.name)(config)``, so one config class
covers all objectives; a key an objective cannot honour is rejected when the
loss is built, never ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from medfm.config import Config
from medfm.keys import Modality
from medfm.registry import LOSSES


class LossConfig(Config):
    """Alignment objective and its options.

    Attributes:
        name: registered loss (``infonce``, ``siglip``, ``gram``).
        pairs: ``all`` aligns every pair of modalities present in a batch; ``anchor`` only
            pairs that contain ``anchor`` (e.g. everything to the report).
        anchor: the modality every other one is aligned to; required when ``pairs`` is
            ``anchor`` and only read then (GRAM uses it as its anchor, default ``report``).
        same_patient: two studies of one patient in a batch are neither positives nor
            negatives of each other (``mask``) or both count as positives (``positive``).
        hard_negatives: β of the hard-negative reweighting (Robinson et al., ICLR 2021);
            0 turns it off. Softmax objectives only (``infonce``, ``gram``).
        siglip_init_bias: initial value of SigLIP's learnable logit bias (Zhai et al., 2023).
        gram_eps: floor under the Gram determinant before its square root, so a degenerate
            (zero-volume) set of vectors keeps finite gradients.
    """

    name: str = "infonce"
    pairs: Literal["all", "anchor"] = "all"
    # validate_default: the "required iff pairs == anchor" rule must also fire when the key is omitted.
    anchor: Modality | None = Field(None, validate_default=True)
    same_patient: Literal["mask", "positive"] = "mask"
    hard_negatives: float = Field(0.0, ge=0)
    siglip_init_bias: float = -10.0
    gram_eps: float = Field(1e-8, gt=0, lt=1)

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in LOSSES:
            raise ValueError(f"unknown loss; registered: {', '.join(LOSSES)}")
        return name

    @field_validator("anchor")
    @classmethod
    def _anchor_iff_anchor_pairs(cls, anchor: Modality | None, info: ValidationInfo) -> Modality | None:
        # A field validator (not a model validator) so the error's location names the key ``anchor``.
        pairs = info.data.get("pairs")
        if pairs == "anchor" and anchor is None:
            raise ValueError("required when pairs is 'anchor'")
        if pairs == "all" and anchor is not None:
            raise ValueError("only read when pairs is 'anchor'; set pairs: anchor or remove it")
        return anchor
