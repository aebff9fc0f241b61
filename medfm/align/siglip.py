"""SigLIP: a sigmoid loss on every (sample, sample) pair, no softmax over the batch.

Zhai et al., "Sigmoid loss for language image pre-training", ICCV 2023.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medfm.align.config import LossConfig
from medfm.align.pairs import SamePatient, mean_over_pairs, target_masks
from medfm.errors import ConfigError
from medfm.registry import LOSSES


def pairwise_siglip(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                    groups: torch.Tensor | None = None, same_patient: SamePatient = "mask") -> torch.Tensor:
    """L = -1/n Σ_i Σ_j log σ(z_ij (s·a_i·b_j + bias)) over the valid entries.

    ``z_ij = +1`` for positives (the diagonal, and same-patient entries under
    ``positive``), ``-1`` otherwise; same-patient off-diagonal entries under ``mask``
    are not counted. Dividing by n (not by the number of entries) follows the paper.
    """
    positives, valid = target_masks(groups, len(a), same_patient, a.device)
    logits = scale * (a @ b.T) + bias
    sign = positives.to(logits.dtype) * 2 - 1
    return -torch.where(valid, F.logsigmoid(sign * logits), 0.0).sum() / len(a)


@LOSSES.register("siglip")
class SigLIPLoss(nn.Module):
    """Mean of :func:`pairwise_siglip` over the selected modality pairs with ≥ 2 shared samples.

    Owns one learnable parameter, the logit ``bias`` (initialised to ``siglip_init_bias``,
    -10 in the paper, so that the many negatives do not dominate the first steps). The
    training loop must therefore optimise ``loss_fn.parameters()`` and checkpoint
    ``loss_fn.state_dict()``. One bias is shared by all pairs, as one temperature is.
    """

    def __init__(self, config: LossConfig | None = None):
        super().__init__()
        self.config = config if config is not None else LossConfig(name="siglip")
        if self.config.hard_negatives > 0:
            # Robinson et al.'s reweighting reshapes a softmax denominator; SigLIP has none.
            raise ConfigError(None, "hard_negatives", "only the softmax losses (infonce, gram) support it, "
                                                      "not siglip; set it to 0")
        self.bias = nn.Parameter(torch.tensor(float(self.config.siglip_init_bias)))

    def forward(self, embeddings: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                scale: torch.Tensor, groups: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        loss, logs = mean_over_pairs(embeddings, masks, groups, cfg.pairs, cfg.anchor, lambda pair: pairwise_siglip(
            pair.a, pair.b, scale, self.bias, pair.groups, cfg.same_patient))
        logs["siglip_bias"] = self.bias.item()
        return loss, logs
