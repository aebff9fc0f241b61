"""Retrieval metrics: does an image find its own report (and back), and does case search find similar cases?

Case search: each query case ranks every case of its modality not of its own patient (its candidates); a
candidate is relevant if it shares one of the query's findings (for a normal query: if it has none).
precision@k is the share of relevant cases among the first k; chance is that share over every candidate (what
a random ranking scores); AP (average precision) is the mean, over the relevant candidates, of the precision
at each one's rank in the full ranking, and mAP its mean over queries. Intervals resample query patients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from medfm.evaluation import stats
from medfm.heads.retrieval import CaseIndex

# Similarity scores computed per chunk of queries: 4M float64 (32 MB) whatever the gallery's size.
SCORES_PER_CHUNK = 1 << 22

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



@dataclass(frozen=True)
class _Gallery:
    """Every live case of one modality in id order: what its queries rank, and which findings each shows."""

    rows: list[tuple[int, str, str, str, str | None]]  # id, study_id, patient_key, modality, findings
    ids: np.ndarray
    patients: np.ndarray  # patient code per case
    vectors: np.ndarray  # (cases, dim) float64 unit vectors
    names: list[str]  # the findings any case of the modality shows, sorted
    positive: np.ndarray  # (cases, findings) bool

    @classmethod
    def of(cls, index: CaseIndex, modality: str) -> _Gallery:
        rows = index.db.execute("SELECT id, study_id, patient_key, modality, findings FROM cases "
                                "WHERE modality = ? ORDER BY id", (modality,)).fetchall()
        ids = np.asarray([r[0] for r in rows], dtype=np.int64)
        found = [finding_set(r[4]) for r in rows]
        names = sorted(set().union(*found))
        positive = np.asarray([[n in f for n in names] for f in found], dtype=bool).reshape(len(rows), len(names))
        patients = np.unique([r[2] for r in rows], return_inverse=True)[1].ravel()
        vectors = index.vectors.reconstruct_batch(ids).astype(np.float64).reshape(len(rows), index.dim)
        return cls(rows, ids, patients, vectors, names, positive)

    def ranking(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cases best first for each query row, and whether each (query, case) is a candidate.

        The order is exact inner product, ties broken by case id (a stable sort of id-ordered cases); the
        query's own patient's cases go last. On an exact index its first k are the cases ``search`` returns
        (the same set where scores tie; FAISS orders tied cases its own way).
        """
        allowed = self.patients[queries][:, None] != self.patients[None, :]
        scores = self.vectors[queries] @ self.vectors.T
        return np.argsort(np.where(allowed, -scores, np.inf), axis=1, kind="stable"), allowed


def ranked_candidates(index: CaseIndex, case_id: int) -> list[int]:
    """Ids of every case that indexed case ``case_id`` could find (its modality, not its patient), best first."""
    case = index.case(case_id)
    if case is None:
        raise KeyError(f"no live case with id {case_id}")
    gallery = _Gallery.of(index, case.modality)
    order, allowed = gallery.ranking(np.searchsorted(gallery.ids, [case_id]))
    return gallery.ids[order[0][allowed[0][order[0]]]].tolist()


def _precision_and_ap(relevant: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision in the first ``top`` and average precision of each row of relevance flags in rank order."""
    hits = np.cumsum(relevant, axis=1)  # relevant cases among the first r + 1
    precision = hits[np.arange(len(relevant)), top - 1] / top
    rank = np.arange(1, relevant.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(relevant, hits / rank, 0.0).sum(axis=1) / hits[:, -1]
    return precision, ap


def _modality_queries(gallery: _Gallery, wanted: set[str], k: int) -> pd.DataFrame:
    counts = np.bincount(gallery.patients, minlength=gallery.patients.max(initial=-1) + 1)
    asking = np.asarray([i for i, r in enumerate(gallery.rows) if r[4] is not None and r[1] in wanted
                         and counts[gallery.patients[i]] < len(gallery.rows)], dtype=np.int64)  # has candidates
    normal = ~gallery.positive.any(axis=1)
    shown = gallery.positive.astype(np.float64)  # float: the overlap count below is one BLAS product
    columns: dict[str, list[np.ndarray]] = {}
    chunk = max(1, SCORES_PER_CHUNK // max(len(gallery.rows), 1))
    for start in range(0, len(asking), chunk):
        queries = asking[start:start + chunk]
        order, allowed = gallery.ranking(queries)
        top = np.minimum(k, allowed.sum(axis=1))
        shares = np.where(normal[queries][:, None], normal[None, :], shown[queries] @ shown.T > 0) & allowed
        precision, ap = _precision_and_ap(np.take_along_axis(shares, order, axis=1), top)
        found = {f"precision@{k}": precision, "chance": shares.sum(axis=1) / allowed.sum(axis=1),
                 "average_precision": ap}
        allowed_ranked = np.take_along_axis(allowed, order, axis=1)
        for j, name in enumerate(gallery.names):  # only the queries positive for the finding rank by it
            rows = np.flatnonzero(gallery.positive[queries, j])
            precision, ap = np.full(len(queries), np.nan), np.full(len(queries), np.nan)
            if len(rows):
                has = gallery.positive[order[rows], j] & allowed_ranked[rows]
                precision[rows], ap[rows] = _precision_and_ap(has, top[rows])
            found[f"precision@{k}.{name}"], found[f"average_precision.{name}"] = precision, ap
        for column, values in found.items():
            columns.setdefault(column, []).append(values)
    rows = [gallery.rows[i] for i in asking]
    return pd.DataFrame({"modality": [r[3] for r in rows], "study_id": [r[1] for r in rows],
                         "patient": [r[2] for r in rows],
                         "findings": [", ".join(sorted(finding_set(r[4]))) for r in rows],
                         **{c: np.concatenate(v) for c, v in columns.items()}})


def case_search_queries(index: CaseIndex, study_ids: list[str], k: int = 10) -> pd.DataFrame:
    """One row per query of similar-case search, with its precision@k, chance and average precision.

    Every indexed case of ``study_ids`` with findings recorded queries its modality, its own patient's cases
    left out (a query with nothing left to return is dropped). Each query's full ranking is one exact
    inner-product pass over the modality's stored vectors, ties broken by case id; its first k are the cases
    ``index.search(..., k)`` returns on an exact index.

    Raises:
        ValueError: ``k`` is below 1.

    Returns:
        Columns ``modality``, ``study_id``, ``patient`` (patient key), ``findings`` (sorted, ``", "``-joined;
        ``""`` for normal), ``precision@{k}``, ``chance``, ``average_precision`` (NaN when no candidate is
        relevant), and for each finding ``f`` of the modality ``precision@{k}.{f}`` and ``average_precision.{f}``
        (relevant: the case is positive for ``f``; NaN for queries not positive for ``f``). Rows in modality,
        then case id order.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    wanted = set(study_ids)
    modalities = [r[0] for r in index.db.execute(
        "SELECT DISTINCT modality FROM cases WHERE findings IS NOT NULL ORDER BY modality")]
    tables = [_modality_queries(_Gallery.of(index, m), wanted, k) for m in modalities]
    base = ["modality", "study_id", "patient", "findings", f"precision@{k}", "chance", "average_precision"]
    table = pd.concat([t for t in tables if len(t)] or [pd.DataFrame(columns=base)], ignore_index=True)
    findings = sorted({c.split(".", 1)[1] for c in table.columns if c.startswith("average_precision.")})
    return table[base + [f"{m}.{f}" for f in findings for m in (f"precision@{k}", "average_precision")]]


def _cluster_means(values: np.ndarray, patients: np.ndarray, n_resamples: int, level: float,
                   seed: int) -> list[dict[str, Any]]:
    """Mean of each column of ``values`` (NaN left out) with a percentile interval resampling ``patients``.

    A resample weighs each row by how many times its patient was drawn, so every column's weighted mean over a
    block of resamples is one matrix product; a resample that draws no defined value is undefined (NaN) and
    counted in ``undefined_resamples``.
    """
    codes = np.unique(patients, return_inverse=True)[1].ravel()
    n_patients = int(codes.max(initial=-1)) + 1
    defined = ~np.isnan(values)
    sums = np.stack([np.bincount(codes, np.where(defined[:, j], values[:, j], 0.0), n_patients)
                     for j in range(values.shape[1])], axis=1)
    counts = np.stack([np.bincount(codes, defined[:, j], n_patients) for j in range(values.shape[1])], axis=1)
    blocks = []
    for draws in stats.patient_resamples(n_patients, n_resamples, seed):
        weights = stats._draw_counts(draws, n_patients).T  # (resamples, patients)
        with np.errstate(invalid="ignore", divide="ignore"):
            blocks.append((weights @ sums) / (weights @ counts))
    replicates = np.concatenate(blocks) if blocks else np.empty((0, values.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        estimates = sums.sum(axis=0) / counts.sum(axis=0)
    what = stats._bootstrap_name(clusters=patients)
    return [stats._percentile(estimates[j], replicates[:, j], level, what, n_resamples, n_patients)
            for j in range(values.shape[1])]


def case_search_validation(queries: pd.DataFrame, k: int = 10, n_resamples: int = 2000, level: float = 0.95,
                           seed: int = 0) -> dict[str, Any]:
    """Precision@k and mAP of similar-case search per modality and finding, with patient-bootstrap intervals.

    Uses the table of :func:`case_search_queries` alone (stored beside a run's results, it gives the same
    numbers when a report is rebuilt). Estimates are means over queries (undefined APs left out); intervals
    resample the query patients (stats.py's draws, so each metric of a modality sees the same resamples).

    Returns:
        ``{modality: {"n_queries", "n_patients", "precision@{k}": interval, "mAP": interval, "chance": mean,
        "by_finding": {f: {"n_queries", "precision@{k}": interval, "mAP": interval}}}}``; ``by_finding`` counts
        the queries positive for ``f`` only.

    Raises:
        ValueError: a column is missing or ``level`` is not in (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    precision = f"precision@{k}"
    missing = {"modality", "patient", "findings", precision, "chance", "average_precision"} - set(queries.columns)
    if missing:
        raise ValueError(f"case search queries lack the columns {sorted(missing)} (k={k}?)")
    out: dict[str, Any] = {}
    for modality, rows in queries.groupby("modality", sort=True):
        patients = rows["patient"].to_numpy()
        both = _cluster_means(rows[[precision, "average_precision"]].to_numpy(float), patients, n_resamples,
                              level, seed)
        shown = [finding_set(f) for f in rows["findings"]]
        by_finding = {}
        for name in sorted(set().union(*shown)):
            positive = np.asarray([name in s for s in shown])
            columns = [f"{precision}.{name}", f"average_precision.{name}"]
            p, ap = _cluster_means(rows.loc[positive, columns].to_numpy(float), patients[positive], n_resamples,
                                   level, seed)
            by_finding[name] = {"n_queries": int(positive.sum()), precision: p, "mAP": ap}
        out[str(modality)] = {"n_queries": len(rows), "n_patients": int(len(np.unique(patients))),
                              precision: both[0], "mAP": both[1], "chance": float(np.mean(rows["chance"])),
                              "by_finding": by_finding}
    return out


def case_search_precision(index: CaseIndex, study_ids: list[str], k: int = 10) -> dict[str, Any]:
    """Precision@k of similar-case search per modality: the share of returned cases that share the query's finding.

    Each indexed case of ``study_ids`` (e.g. the test split) queries the index for ``k``
    cases of its own modality, leaving out its patient's studies, as a radiologist's search
    would. Relevance is :func:`shares_finding`. ``chance`` is the same share over every
    case the query could have returned (what a random ranking scores), so a modality whose
    findings are common does not look better than it is. ``mAP``: mean average precision
    over the full ranking (queries with a relevant candidate). ``by_finding``: precision@k of
    the queries positive for each finding, counting returned cases positive for it.
    Modalities whose cases carry no findings (the cohort names none) are left out.
    """
    return case_search_summary(case_search_queries(index, study_ids, k), index, k)


def case_search_summary(queries: pd.DataFrame, index: CaseIndex, k: int = 10) -> dict[str, Any]:
    """:func:`case_search_precision`'s figures from an already computed :func:`case_search_queries` table."""
    gallery = dict(index.db.execute("SELECT modality, COUNT(*) FROM cases WHERE findings IS NOT NULL "
                                    "GROUP BY modality"))
    precision = f"precision@{k}"
    out: dict[str, Any] = {}
    for modality, rows in queries.groupby("modality", sort=True):
        ap = rows["average_precision"].to_numpy(float)
        by_finding = {}
        for column in (c for c in rows.columns if c.startswith(f"{precision}.")):
            values = rows[column].to_numpy(float)
            values = values[~np.isnan(values)]
            if len(values):
                by_finding[column.split(".", 1)[1]] = {precision: float(np.mean(values)), "n_queries": len(values)}
        out[str(modality)] = {precision: float(np.mean(rows[precision].to_numpy(float))),
                              "chance": float(np.mean(rows["chance"].to_numpy(float))),
                              "mAP": float(np.mean(ap[~np.isnan(ap)])) if (~np.isnan(ap)).any() else float("nan"),
                              "n_queries": len(rows), "gallery": gallery[modality], "by_finding": by_finding}
    return out
