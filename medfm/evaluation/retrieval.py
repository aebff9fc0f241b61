"""Retrieval metrics: does an image find its own report (and back), and does case search find similar cases?"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medfm.heads.retrieval import CaseIndex

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


def shares_finding(query: frozenset[str], case: frozenset[str]) -> bool:
    """A returned case is relevant if it shows one of the query's findings, or, for a normal query, none."""
    return bool(query & case) if query else not case


def finding_set(findings: str | None) -> frozenset[str]:
    """A case's stored findings (``"cardiomegaly, pleural_effusion"``) as a set."""
    return frozenset(f.strip() for f in (findings or "").split(",") if f.strip())


def case_search_precision(index: CaseIndex, study_ids: list[str], k: int = 10) -> dict[str, Any]:
    """Precision@k of similar-case search per modality: the share of returned cases that share the query's finding.

    Each indexed case of ``study_ids`` (e.g. the test split) queries the index for ``k``
    cases of its own modality, leaving out its patient's studies, as a radiologist's search
    would. Relevance is :func:`shares_finding`. ``chance`` is the same share over every
    case the query could have returned (what a random ranking scores), so a modality whose
    findings are common does not look better than it is. ``by_finding``: precision@k of
    the queries positive for each finding, counting returned cases positive for it.
    Modalities whose cases carry no findings (the cohort names none) are left out.
    """
    wanted = set(study_ids)
    rows = list(index.db.execute("SELECT id, study_id, patient_key, modality, findings FROM cases "
                                 "WHERE findings IS NOT NULL ORDER BY id"))
    out: dict[str, Any] = {}
    for modality in sorted({r[3] for r in rows}):
        gallery = [(r[2], finding_set(r[4])) for r in rows if r[3] == modality]
        queries = [r for r in rows if r[3] == modality and r[1] in wanted]
        precision, chance, per_finding = [], [], {}
        for case_id, _, patient, _, findings in queries:
            own = finding_set(findings)
            hits = index.search(index.vector(case_id), k, modality=modality, exclude_patient=patient)
            found = [finding_set(h.case.findings) for h in hits]
            if not found:
                continue
            precision.append(np.mean([shares_finding(own, f) for f in found]))
            chance.append(np.mean([shares_finding(own, f) for p, f in gallery if p != patient]))
            for name in own:
                per_finding.setdefault(name, []).append(np.mean([name in f for f in found]))
        if precision:
            out[modality] = {f"precision@{k}": float(np.mean(precision)), "chance": float(np.mean(chance)),
                             "n_queries": len(precision), "gallery": len(gallery),
                             "by_finding": {name: {f"precision@{k}": float(np.mean(v)), "n_queries": len(v)}
                                            for name, v in sorted(per_finding.items())}}
    return out
