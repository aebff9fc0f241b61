"""Symmetric InfoNCE (CLIP) over modality pairs, with multi-positive targets and hard negatives.

The softmax cross-entropy here (:func:`contrastive_cross_entropy`) is also GRAM's,
which only changes how the scores are computed.
"""

from __future__ import annotations

import torch
from torch import nn

from medfm.align.config import LossConfig
from medfm.align.pairs import SamePatient, mean_over_pairs, target_masks
from medfm.errors import MedfmError
from medfm.registry import LOSSES


def contrastive_cross_entropy(logits: torch.Tensor, positives: torch.Tensor, valid: torch.Tensor,
                              similarity: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
    """Multi-positive softmax cross-entropy of each row of ``logits``, averaged over rows.

    For row i with positives P(i) and negatives N(i) (valid entries that are not positive)::

        L_i = -1/|P(i)| Σ_{p∈P(i)} log( exp(l_ip) / (Σ_{j∈P(i)} exp(l_ij) + Σ_{j∈N(i)} w_ij exp(l_ij)) )

    i.e. cross-entropy against the soft target that spreads mass 1/|P(i)| over the positives
    (SupCon's "L_out", Khosla et al. 2020; multi-positive CLIP). With one positive it is plain
    InfoNCE. Invalid entries are in neither sum.

    Hard negatives (Robinson et al., ICLR 2021): ``w_ij = exp(β s_ij) / mean_{k∈N(i)} exp(β s_ik)``,
    so negatives more similar to the query weigh more while the mean weight stays 1 (the
    denominator keeps its scale). It is applied as ``l_ij + log w_ij`` in log space, for stability.
    The weights are not detached, as in the paper's reference code.

    Args:
        logits: ``(n, m)`` scores.
        positives: ``(n, m)`` bool, at least one per row.
        valid: ``(n, m)`` bool, ``positives ⊆ valid``.
        similarity: ``(n, m)`` the ``s_ij`` hard-negative weights use; needed when ``beta > 0``.
        beta: hardness β ≥ 0; 0 skips the reweighting so results equal plain InfoNCE bit for bit.
    """
    negatives = valid & ~positives
    if beta > 0:
        if similarity is None:
            raise MedfmError("hard-negative reweighting (beta > 0) needs the similarities s_ij")
        has_negative = negatives.any(dim=1, keepdim=True)
        scored = torch.where(negatives, beta * similarity, float("-inf"))
        # Rows without negatives get a dummy finite row: their weight is never used, and an
        # all -inf logsumexp would put NaN into the backward pass.
        scored = torch.where(has_negative, scored, 0.0)
        log_mean = torch.logsumexp(scored, dim=1, keepdim=True) - negatives.sum(1, keepdim=True).clamp(min=1).log()
        logits = torch.where(negatives, logits + beta * similarity - log_mean, logits)
    log_prob = torch.log_softmax(logits.masked_fill(~valid, float("-inf")), dim=1)
    per_row = -torch.where(positives, log_prob, 0.0).sum(1) / positives.sum(1)
    return per_row.mean()


def symmetric_cross_entropy(logits: torch.Tensor, positives: torch.Tensor, valid: torch.Tensor,
                            similarity: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
    """½ [rows → columns + columns → rows] of :func:`contrastive_cross_entropy` (CLIP's two directions)."""
    sim_t = None if similarity is None else similarity.T
    return 0.5 * (contrastive_cross_entropy(logits, positives, valid, similarity, beta)
                  + contrastive_cross_entropy(logits.T, positives.T, valid.T, sim_t, beta))


# Rows of the n × n score matrix held at once by the blockwise loss: memory grows with
# n × BLOCK_ROWS instead of n², so a 4096-sample gradient-cached batch stays small (128 rows:
# the loss then needs less memory than one 256-sample chunk of the tiny model's activations).
BLOCK_ROWS = 128


def pairwise_infonce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, groups: torch.Tensor | None = None,
                     same_patient: SamePatient = "mask", hard_negatives: float = 0.0,
                     block_rows: int = BLOCK_ROWS) -> torch.Tensor:
    """CLIP loss between row-aligned unit embeddings ``a[i] ↔ b[i]``.

    L = ½ [CE(s·A·Bᵀ) + CE(s·B·Aᵀ)] with the targets of :func:`~medfm.align.pairs.target_masks`:
    rows sharing a ``groups`` id (two studies of one patient) are removed from each
    other's negatives (``mask``) or made positives of each other (``positive``).

    Without hard negatives the loss is computed ``block_rows`` rows at a time and the
    scores are recomputed in the backward pass (:class:`_BlockwiseInfoNCE`); the values
    and gradients are those of the full-matrix formula.
    """
    if hard_negatives == 0:
        return _BlockwiseInfoNCE.apply(a, b, scale, groups, same_patient, block_rows)
    cosine = a @ b.T
    positives, valid = target_masks(groups, len(a), same_patient, a.device)
    return symmetric_cross_entropy(scale * cosine, positives, valid, cosine, hard_negatives)


class _BlockwiseInfoNCE(torch.autograd.Function):
    """Symmetric multi-positive InfoNCE in row blocks, logits recomputed in backward.

    Forward keeps per-row and per-column log-sum-exps (O(n)); the column ones are
    accumulated across blocks. Backward rebuilds each block's softmaxes from them:
    dL/dl_ij = ½ [(p^row_ij − π_ij/|P_i|) + (p^col_ij − π_ij/|P_j|)] / n, with π the positives.
    """

    @staticmethod
    def forward(ctx, a, b, scale, groups, same_patient, block_rows):
        n = a.shape[0]
        row_lse = a.new_empty(n)
        col_lse = a.new_full((n,), float("-inf"))
        col_positive_logits = a.new_zeros(n)
        col_positives = a.new_zeros(n)
        row_loss = a.new_zeros(())
        for start in range(0, n, block_rows):
            rows = slice(start, min(start + block_rows, n))
            positives, valid = target_masks(groups, n, same_patient, a.device, rows)
            logits = (scale * a[rows] @ b.T).masked_fill(~valid, float("-inf"))
            row_lse[rows] = torch.logsumexp(logits, dim=1)
            kept = torch.where(positives, logits, 0.0)
            row_loss += (row_lse[rows] - kept.sum(1) / positives.sum(1)).sum()
            col_lse = torch.logaddexp(col_lse, torch.logsumexp(logits, dim=0))
            col_positive_logits += kept.sum(0)
            col_positives += positives.sum(0)
        col_loss = (col_lse - col_positive_logits / col_positives).sum()
        ctx.save_for_backward(a, b, scale, row_lse, col_lse, col_positives)
        ctx.groups, ctx.same_patient, ctx.block_rows = groups, same_patient, block_rows
        return 0.5 * (row_loss + col_loss) / n

    @staticmethod
    def backward(ctx, grad_output):
        a, b, scale, row_lse, col_lse, col_positives = ctx.saved_tensors
        n = a.shape[0]
        grad_a, grad_b, grad_scale = torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(scale)
        factor = 0.5 * grad_output / n
        for start in range(0, n, ctx.block_rows):
            rows = slice(start, min(start + ctx.block_rows, n))
            positives, valid = target_masks(ctx.groups, n, ctx.same_patient, a.device, rows)
            cosine = a[rows] @ b.T
            logits = (scale * cosine).masked_fill(~valid, float("-inf"))
            target = positives.to(a.dtype)
            grad_logits = (torch.exp(logits - row_lse[rows, None]) - target / target.sum(1, keepdim=True)
                           + torch.exp(logits - col_lse[None, :]) - target / col_positives[None, :]) * factor
            grad_scale += (grad_logits * cosine).sum()
            grad_cosine = scale * grad_logits
            grad_a[rows] = grad_cosine @ b
            grad_b += grad_cosine.T @ a[rows]
        return grad_a, grad_b, grad_scale, None, None, None


@LOSSES.register("infonce")
class SymmetricInfoNCE(nn.Module):
    """Mean of :func:`pairwise_infonce` over the selected modality pairs with ≥ 2 shared samples.

    A pair only uses the samples that have both modalities, so a patient without an
    ECG still contributes to cxr–report and nothing absent is imputed. No parameters:
    the temperature is the model's ``logit_scale``, passed in as ``scale``.
    """

    def __init__(self, config: LossConfig | None = None):
        super().__init__()
        # Default config: the training loop built losses without arguments before configs existed.
        self.config = config if config is not None else LossConfig(name="infonce")

    def forward(self, embeddings: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                scale: torch.Tensor, groups: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        return mean_over_pairs(embeddings, masks, groups, cfg.pairs, cfg.anchor, lambda pair: pairwise_infonce(
            pair.a, pair.b, scale, pair.groups, cfg.same_patient, cfg.hard_negatives))
