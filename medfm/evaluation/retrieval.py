"""Cross-modal retrieval: does an image find its own report among all reports, and back?"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)


def paired_recall_at_k(queries: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray,
                       ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Recall@k of row-paired embeddings: query ``i``'s true match is gallery item ``i``.

    Similarity is the dot product (cosine for unit embeddings). A query counts as found
    at k when fewer than k gallery items score strictly higher than its match, and a tie
    with the match counts against it (so a constant model scores chance, not 1).

    Returns:
        ``{"recall@1": ..., "recall@5": ..., ...}`` plus ``chance@k`` (k / n, what random
        embeddings score) for each k, and ``n``.
    """
    q = torch.as_tensor(queries, dtype=torch.float64)
    g = torch.as_tensor(gallery, dtype=torch.float64)
    if q.shape != g.shape or q.ndim != 2:
        raise ValueError(f"queries {tuple(q.shape)} and gallery {tuple(g.shape)} must be paired (n, d) arrays")
    n = len(q)
    if n == 0:
        return {"n": 0}
    similarity = q @ g.T
    matched = similarity.diagonal()[:, None]
    others = ~torch.eye(n, dtype=torch.bool)
    rank = ((similarity >= matched) & others).sum(dim=1)  # gallery items at least as close as the match
    out: dict[str, float] = {"n": n}
    for k in ks:
        out[f"recall@{k}"] = float((rank < k).double().mean())
        out[f"chance@{k}"] = min(k, n) / n
    return out


def cross_modal_retrieval(image: torch.Tensor, report: torch.Tensor,
                          ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """Image→report and report→image recall@k for studies that have both (row-paired)."""
    return {"image_to_report": paired_recall_at_k(image, report, ks),
            "report_to_image": paired_recall_at_k(report, image, ks)}
