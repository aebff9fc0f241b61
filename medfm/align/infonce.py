"""Symmetric InfoNCE (CLIP) over every modality pair present in a batch."""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from medfm.keys import Modality
from medfm.registry import LOSSES


def pairwise_infonce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                     groups: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP loss between row-aligned unit embeddings ``a[i] ↔ b[i]``.

    L = ½ [CE(s·A·Bᵀ, I) + CE(s·B·Aᵀ, I)]. Rows with the same ``groups`` id (two
    studies of one patient) are removed from each other's negatives, since they
    are not truly different cases.
    """
    logits = scale * a @ b.T
    if groups is not None:
        same = (groups[:, None] == groups[None, :]) & ~torch.eye(len(groups), dtype=torch.bool)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@LOSSES.register("infonce")
class SymmetricInfoNCE(nn.Module):
    """Mean of :func:`pairwise_infonce` over all modality pairs with ≥ 2 shared samples.

    A pair only uses the samples that have both modalities, so a patient without an
    ECG still contributes to cxr–report and nothing absent is imputed.
    """

    def forward(self, embeddings: dict[Modality, torch.Tensor], masks: dict[Modality, torch.Tensor],
                scale: torch.Tensor, groups: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, dict[str, float]]:
        full = {m: _unpack(e, masks[m]) for m, e in embeddings.items()}
        losses, logs = [], {}
        for x, y in combinations(sorted(full), 2):
            both = masks[x] & masks[y]
            if both.sum() < 2:
                continue
            loss = pairwise_infonce(full[x][both], full[y][both], scale,
                                    None if groups is None else groups[both])
            losses.append(loss)
            logs[f"{x}-{y}"] = loss.item()
        if not losses:
            raise ValueError("no modality pair has two samples in this batch")
        return torch.stack(losses).mean(), logs


def _unpack(packed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    full = packed.new_zeros((len(mask), packed.shape[-1]))
    full[mask] = packed
    return full
