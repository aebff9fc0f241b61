"""GRAM: align all modalities of a sample at once through the volume they span.

Cicchetti et al., "Gramian multimodal representation learning and alignment", ICLR 2025.
For unit vectors v_1..v_k the volume of their parallelotope is sqrt(det G), G_pq = v_p·v_q;
it is 0 when they coincide and grows as they spread, so ``-volume`` is a similarity
of k modalities at once (for k = 2, vol² = 1 - cos²).
"""

from __future__ import annotations

import torch
from torch import nn

from medfm.align.config import LossConfig
from medfm.align.infonce import contrastive_cross_entropy
from medfm.align.pairs import check_packed, packed_rows, target_masks
from medfm.errors import MedfmError
from medfm.keys import Modality, image_of_report
from medfm.registry import LOSSES


def gram_volumes(anchor: torch.Tensor, rest: torch.Tensor, present: torch.Tensor, eps: float) -> torch.Tensor:
    """Volume spanned by ``anchor[i]`` and the rest of sample j, for every (i, j) at once.

    The vectors of combination (i, j) are ``anchor[i]`` and ``rest[j, m]`` for every
    modality m present in *both* samples i and j. Absent slots are taken out of the
    Gram matrix by replacing their rows and columns with those of the identity, which
    leaves the determinant equal to that of the Gram matrix of the present vectors
    (a block-diagonal determinant), so one batched ``det`` over ``(n, n, k, k)`` covers
    every subset, and whatever sits in an absent slot gets no gradient.

    Args:
        anchor: ``(n, d)`` anchor embeddings.
        rest: ``(n, K, d)`` the other modalities; absent slots may hold anything.
        present: ``(n, K)`` bool, which slots of ``rest`` are real.
        eps: floor under det before the square root: det ≥ 0 in exact arithmetic but may round
            below 0, and sqrt'(0) is infinite (duplicated vectors), so ``sqrt(clamp(det, eps))``.

    Returns:
        ``(n, n)`` volumes, ``[i, j]`` = vol(anchor_i, rest_j restricted to modalities i and j share).
    """
    n, k, _ = rest.shape
    anchor_sq = (anchor * anchor).sum(-1)                      # (n,)      a_i·a_i
    cross = torch.einsum("id,jkd->ijk", anchor, rest)          # (n, n, K) a_i·x_j^m
    within = torch.einsum("jkd,jld->jkl", rest, rest)          # (n, K, K) x_j^m·x_j^l
    top = torch.cat([anchor_sq[:, None, None].expand(n, n, 1), cross], dim=-1)
    bottom = torch.cat([cross[..., None], within[None].expand(n, n, k, k)], dim=-1)
    gram = torch.cat([top[..., None, :], bottom], dim=-2)       # (n, n, K+1, K+1)
    shared = present[:, None, :] & present[None, :, :]
    slot = torch.cat([shared.new_ones(n, n, 1), shared], dim=-1)
    identity = torch.eye(k + 1, dtype=gram.dtype, device=gram.device)
    gram = torch.where(slot[..., :, None] & slot[..., None, :], gram, identity)
    if gram.dtype in (torch.float16, torch.bfloat16):
        gram = gram.float()  # LU-based det has no half kernels, and eps=1e-8 is below half precision
    return torch.linalg.det(gram).clamp(min=eps).sqrt()


@LOSSES.register("gram")
class GRAMLoss(nn.Module):
    """Anchor-vs-rest GRAM contrastive loss, both directions.

    With V_ij = vol(anchor_i, rest_j) from :func:`gram_volumes` and logits
    ``l_ij = -s·V_ij``, the loss is ½ [anchor→rest + rest→anchor]: row i's softmax over
    the rests j (is sample i's own rest the smallest volume with its anchor?) and
    column j's softmax over the anchors i, each the multi-positive cross-entropy of
    :func:`~medfm.align.infonce.contrastive_cross_entropy` (hard negatives use s_ij = -V_ij).

    Missing modalities:
        * a sample without the anchor, or with no modality besides it, is left out;
        * (i, j) uses only the non-anchor modalities *both* i and j have, so the
          positive (i, i) always spans at least as many vectors as any negative in its
          row and column: a negative never looks closer merely by carrying more vectors
          (each extra unit vector can only shrink a volume);
        * (i, j) sharing no non-anchor modality is neither a positive nor a negative.

    Same-patient pairs follow ``same_patient`` as in the other losses. The anchor is
    ``config.anchor`` (``pairs: anchor``) or ``report``; ``pairs`` is otherwise unused,
    since GRAM relates all modalities of a sample at once.
    """

    def __init__(self, config: LossConfig | None = None):
        super().__init__()
        self.config = config if config is not None else LossConfig(name="gram")
        self.anchor = self.config.anchor or Modality.REPORT

    def forward(self, embeddings: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                scale: torch.Tensor, groups: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, anchor = self.config, self.anchor
        check_packed(embeddings, masks)
        own_reports = [k for k in embeddings if image_of_report(k) is not None]
        if own_reports:
            raise MedfmError(f"loss input: gram spans one report and every image of a sample; this batch gives "
                             f"images their own reports ({', '.join(own_reports)}): use infonce or siglip")
        others = sorted(m for m in embeddings if m != anchor)
        if anchor not in embeddings or not others:
            raise MedfmError(f"loss input: gram needs the anchor {anchor!r} and another modality; "
                             f"got {sorted(map(str, embeddings))}")
        has_rest = torch.stack([masks[m] for m in others]).any(0)
        keep = masks[anchor] & has_rest
        n = int(keep.sum())
        if n < 2:
            raise MedfmError(f"loss input: gram needs two samples with {anchor!r} and another modality; got {n}")

        anchors = packed_rows(embeddings[anchor], masks[anchor], keep)
        present = torch.stack([masks[m][keep] for m in others], dim=1)
        slots = []
        for k, m in enumerate(others):
            rows = packed_rows(embeddings[m], masks[m], keep & masks[m])
            # Absent slots hold zeros only to make a rectangular tensor; gram_volumes masks them out.
            slots.append(rows.new_zeros(n, rows.shape[-1]).index_copy(0, present[:, k].nonzero()[:, 0], rows))
        volumes = gram_volumes(anchors, torch.stack(slots, dim=1), present, cfg.gram_eps)

        positives, valid = target_masks(None if groups is None else groups[keep], n, cfg.same_patient,
                                        anchors.device)
        comparable = (present[:, None, :] & present[None, :, :]).any(-1)
        valid = valid & comparable
        positives = positives & valid
        logits = -scale * volumes
        to_rest = contrastive_cross_entropy(logits, positives, valid, -volumes, cfg.hard_negatives)
        to_anchor = contrastive_cross_entropy(logits.T, positives.T, valid.T, -volumes.T, cfg.hard_negatives)
        logs = {f"{anchor}-to-rest": to_rest.item(), f"rest-to-{anchor}": to_anchor.item()}
        return 0.5 * (to_rest + to_anchor), logs
