"""Statistics of validation reports: discrimination with confidence intervals, and operating points.

Every interval is a plain dict ``{"estimate", "low", "high", "level", "method"}``: a report never shows an
interval without the method that produced it. The default interval is a bootstrap that resamples patients
(a patient with two eyes or several studies is one cluster); DeLong is offered where each patient contributes
one observation, and Wilson intervals for proportions without clustering.

The bootstrap is vectorised: a resample is a row of per-observation multiplicities (how many times its patient
was drawn), and AUROC/AUPRC of a block of resamples come from one pass of grouped and cumulative sums over a
``(resamples, rows)`` weight matrix, never from a Python loop over resamples.

Rows whose label is NaN (unknown) are ignored everywhere; a metric that needs both classes is NaN without them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy.special import ndtri
from scipy.stats import norm, rankdata

BLOCK = 64  # resamples per block: a (64, 100_000) float64 weight matrix is 51 MB

def known_rows(labels: Any, *columns: Any) -> tuple[np.ndarray, ...]:
    """Float labels and columns without the rows whose label is NaN; labels must otherwise be 0 or 1."""
    labels = np.asarray(labels, dtype=float).ravel()
    arrays = [np.asarray(c, dtype=float).ravel() for c in columns]
    if any(len(a) != len(labels) for a in arrays):
        raise ValueError(f"labels have {len(labels)} rows but the other columns {[len(a) for a in arrays]}")
    keep = ~np.isnan(labels)
    labels = labels[keep]
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0, 1 or NaN, got {np.unique(labels[~np.isin(labels, (0.0, 1.0))])[:5]}")
    return (labels, *(a[keep] for a in arrays))


def interval(estimate: float, low: float, high: float, level: float, method: str, **extra: Any) -> dict[str, Any]:
    return {"estimate": float(estimate), "low": float(low), "high": float(high), "level": level, "method": method,
            **extra}


def two_sided_z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(ndtri(0.5 + level / 2))


# -- AUROC and AUPRC, weighted, over a batch of resamples ------------------------------------

def _cumulative(weights: np.ndarray) -> np.ndarray:
    """Running sums down the rows with a leading zero row: ``out[k]`` is the weight of the first ``k`` rows."""
    out = np.zeros((len(weights) + 1, weights.shape[1]))
    np.cumsum(weights, axis=0, out=out[1:])
    return out


class _ScoreOrder:
    """Rows sorted by score once, with where each row falls among either class: what every resample reuses.

    Metrics take per-patient weights ``(n_patients, B)``, one column per resample; a row weighs what its patient
    does. Rows are gathered by patient, never a ``(B, rows)`` matrix built by column indexing, which is slow.
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray, codes: np.ndarray):
        order = np.argsort(scores, kind="stable")
        positive = labels[order] == 1
        scores, codes = scores[order], codes[order]
        self.pos_codes, self.neg_codes = codes[positive], codes[~positive]
        pos_scores, neg_scores = scores[positive], scores[~positive]
        # negatives strictly below / at or below each positive, positives likewise below each negative and
        # strictly below each positive (with ties, a positive's threshold group starts at the first of them)
        self.negs_below = np.searchsorted(neg_scores, pos_scores, "left")
        self.negs_at_or_below = np.searchsorted(neg_scores, pos_scores, "right")
        self.pos_below = np.searchsorted(pos_scores, neg_scores, "left")
        self.pos_at_or_below = np.searchsorted(pos_scores, neg_scores, "right")
        self.pos_below_pos = np.searchsorted(pos_scores, pos_scores, "left")
        self.ties = not np.array_equal(self.negs_below, self.negs_at_or_below)

    def auroc(self, weights: np.ndarray) -> np.ndarray:
        w_pos, w_neg = weights[self.pos_codes], weights[self.neg_codes]
        pairs = w_pos.sum(axis=0) * w_neg.sum(axis=0)
        # Mann–Whitney: a positive beats the negatives below it and ties with those at its score (½). The running
        # sum goes over the smaller class (usually the positives): Σ_neg w·(positives above + ½ tied) is
        # pairs − Σ_neg w·(positives below + ½ tied). Integer weights keep every sum exact.
        if len(w_pos) <= len(w_neg):
            below = _cumulative(w_pos)
            lost = below[self.pos_below] + below[self.pos_at_or_below] if self.ties else 2 * below[self.pos_below]
            wins = pairs - np.einsum("jb,jb->b", w_neg, lost) / 2
        else:
            below = _cumulative(w_neg)
            beaten = below[self.negs_below] + below[self.negs_at_or_below] if self.ties else 2 * below[self.negs_below]
            wins = np.einsum("ib,ib->b", w_pos, beaten) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, wins / pairs, np.nan)

    def auprc(self, weights: np.ndarray) -> np.ndarray:
        w_pos, w_neg = weights[self.pos_codes], weights[self.neg_codes]
        pos_cum, neg_cum = _cumulative(w_pos), _cumulative(w_neg)
        # sklearn's average precision Σ_k (R_k − R_{k−1}) P_k: each positive adds its weight times the precision
        # of calling everything at or above its score positive
        true_pos = pos_cum[-1] - pos_cum[self.pos_below_pos]
        called = true_pos + neg_cum[-1] - neg_cum[self.negs_below]
        precision = np.divide(true_pos, called, out=np.zeros_like(true_pos), where=called > 0)
        total_pos, total_neg = pos_cum[-1], neg_cum[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = np.einsum("ib,ib->b", w_pos, precision) / total_pos
        return np.where((total_pos > 0) & (total_neg > 0), ap, np.nan)


METRICS = ("auroc", "auprc")


def _weighted(metric: str, labels: Any, scores: Any, weights: Any | None) -> float | np.ndarray:
    raw = np.asarray(labels, dtype=float).ravel()
    labels, scores = known_rows(raw, scores)
    fn = getattr(_ScoreOrder(labels, scores, np.arange(len(labels))), metric)
    if weights is None:
        return float(fn(np.ones((len(labels), 1)))[0])
    weights = np.asarray(weights, dtype=float)[..., ~np.isnan(raw)]
    if weights.ndim == 1:
        return float(fn(weights[:, None])[0])
    return fn(np.ascontiguousarray(weights.T))


def auroc(labels: Any, scores: Any, weights: Any | None = None) -> float | np.ndarray:
    """Area under the ROC curve (Mann–Whitney, ties ½), optionally weighted.

    Args:
        labels: 0/1 per row, NaN for unknown (ignored).
        scores: higher means more likely positive.
        weights: None, ``(n,)`` weights, or ``(B, n)`` multiplicities of B resamples.

    Returns:
        A float, or ``(B,)`` values for a weight matrix; NaN where a class is absent.
    """
    return _weighted("auroc", labels, scores, weights)


def auprc(labels: Any, scores: Any, weights: Any | None = None) -> float | np.ndarray:
    """Area under the precision-recall curve as average precision (scikit-learn's ``average_precision_score``).

    Arguments and returns as ``auroc``; NaN where a class is absent.
    """
    return _weighted("auprc", labels, scores, weights)


# -- cluster (patient) bootstrap ---------------------------------------------------------------

def patient_resamples(n_patients: int, n_resamples: int, seed: int = 0, block: int = BLOCK) -> Iterator[np.ndarray]:
    """The patients drawn with replacement, ``(resamples in block, n_patients)`` indices per block.

    The bootstrap functions consume exactly this sequence, so a test can rebuild their resamples.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, block):
        yield rng.integers(n_patients, size=(min(block, n_resamples - start), n_patients))


def _draw_counts(draws: np.ndarray, n_patients: int) -> np.ndarray:
    """How many times each patient is drawn in each resample: ``(n_patients, B)`` floats."""
    counts = np.empty((len(draws), n_patients))
    for b, drawn in enumerate(draws):  # one bincount per resample beats one over offset indices
        counts[b] = np.bincount(drawn, minlength=n_patients)
    return np.ascontiguousarray(counts.T)


def _metric(metric: str | Callable[..., Any]) -> tuple[str, Callable[..., Any]]:
    """Name and ``f(labels, scores, codes) -> f(patient weights (P, B)) -> (B,)``."""
    if callable(metric):
        def by_rows(labels: np.ndarray, scores: np.ndarray, codes: np.ndarray) -> Callable[..., Any]:
            return lambda weights: metric(labels, scores, weights[codes].T)
        return metric.__name__, by_rows
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: one of {METRICS} or a callable(labels, scores, weights)")
    return metric, lambda labels, scores, codes: getattr(_ScoreOrder(labels, scores, codes), metric)


def _replicates(metric: Callable[..., Any], sets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                n_patients: int, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, len(sets))`` metric values; every set is weighted by the same patient draws."""
    prepared = [metric(labels, scores, codes) for labels, scores, codes in sets]  # sorted once, not per resample
    blocks = []
    for draws in patient_resamples(n_patients, n_resamples, seed):
        counts = _draw_counts(draws, n_patients)
        blocks.append(np.stack([fn(counts) for fn in prepared], axis=1))
    return np.concatenate(blocks) if blocks else np.empty((0, len(sets)))


def _percentile(estimate: float, values: np.ndarray, level: float, what: str, n_resamples: int,
                n_patients: int) -> dict[str, Any]:
    valid = values[~np.isnan(values)]
    low, high = np.quantile(valid, [(1 - level) / 2, (1 + level) / 2]) if len(valid) else (np.nan, np.nan)
    return interval(estimate, low, high, level, f"{what}, {n_resamples} resamples, percentile",
                    n_patients=n_patients, undefined_resamples=int(len(values) - len(valid)))


def _patient_codes(clusters: Any | None, labels: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Raw labels, a patient code per row with a known label (0..P−1), and P."""
    raw = np.asarray(labels, dtype=float).ravel()
    ids = np.arange(len(raw)) if clusters is None else np.asarray(clusters).ravel()
    if len(ids) != len(raw):
        raise ValueError(f"clusters have {len(ids)} rows, labels {len(raw)}")
    _, codes = np.unique(ids[~np.isnan(raw)], return_inverse=True)
    return raw, codes, int(codes.max()) + 1 if len(codes) else 0


def _bootstrap_name(clusters: Any | None, paired: bool = False) -> str:
    kind = "paired " if paired else ""
    if clusters is None:
        return f"{kind}bootstrap of rows (each row taken as its own patient)"
    return f"{kind}cluster bootstrap resampling patients"


def bootstrap_ci(metric: str | Callable[..., Any], labels: Any, scores: Any, clusters: Any | None = None,
                 n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Percentile interval of a metric from a bootstrap that resamples patients.

    Args:
        metric: ``"auroc"``, ``"auprc"``, or ``f(labels, scores, weights)`` accepting a ``(B, n)`` weight matrix
            (as ``auroc``, or ``calibration.brier``).
        labels: 0/1 per row, NaN for unknown (ignored).
        scores: one score or probability per row.
        clusters: patient id per row; None resamples rows as if each were its own patient.
        n_resamples, level, seed: bootstrap size, interval level, random seed.

    Returns:
        Interval dict with ``metric``, ``n_patients`` and ``undefined_resamples`` (resamples missing a class,
        left out of the percentiles).
    """
    name, metric_fn = _metric(metric)
    raw, codes, n_patients = _patient_codes(clusters, labels)
    labels, scores = known_rows(raw, scores)
    estimate = float(metric_fn(labels, scores, np.arange(len(labels)))(np.ones((len(labels), 1)))[0])
    values = _replicates(metric_fn, [(labels, scores, codes)], n_patients, n_resamples, seed)[:, 0]
    return {"metric": name, **_percentile(estimate, values, level, _bootstrap_name(clusters), n_resamples,
                                          n_patients)}


def paired_bootstrap_difference(labels: Any, scores_a: Any, scores_b: Any, clusters: Any | None = None,
                                metric: str | Callable[..., Any] = "auroc", n_resamples: int = 2000,
                                level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Interval of metric(a) − metric(b) for two models scored on the same rows, resampling the same patients.

    Returns:
        ``{"metric", "a", "b", "difference", ...}``, each an interval dict from the same resamples.
    """
    return shared_patient_bootstrap_difference(labels, scores_a, clusters, labels, scores_b, clusters, metric,
                                               n_resamples, level, seed)


def shared_patient_bootstrap_difference(labels_a: Any, scores_a: Any, clusters_a: Any | None, labels_b: Any,
                                        scores_b: Any, clusters_b: Any | None,
                                        metric: str | Callable[..., Any] = "auroc", n_resamples: int = 2000,
                                        level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Interval of metric(a) − metric(b) for two prediction sets keyed by patient (two devices, same patients).

    Only patients with a known label in both sets count; each resample draws them with replacement and weights
    every row of a drawn patient, in both sets, by its number of draws. Without clusters the two sets must be
    row-aligned, and each row is a patient.

    Returns:
        ``{"metric", "a", "b", "difference", "rows_dropped_a", "rows_dropped_b"}``: estimates and intervals on
        the shared patients; the rows of patients missing from the other set are dropped and counted.
    """
    name, metric_fn = _metric(metric)
    if (clusters_a is None) != (clusters_b is None):
        raise ValueError("give patient ids for both prediction sets or for neither")
    raw_a, raw_b = np.asarray(labels_a, dtype=float).ravel(), np.asarray(labels_b, dtype=float).ravel()
    if clusters_a is None and len(raw_a) != len(raw_b):
        raise ValueError(f"without patient ids the two sets must be row-aligned: {len(raw_a)} vs {len(raw_b)} rows")
    ids_a = np.arange(len(raw_a)) if clusters_a is None else np.asarray(clusters_a).ravel()
    ids_b = np.arange(len(raw_b)) if clusters_b is None else np.asarray(clusters_b).ravel()
    sets, dropped = [], []
    ids_a, ids_b = ids_a[~np.isnan(raw_a)], ids_b[~np.isnan(raw_b)]
    shared = np.intersect1d(ids_a, ids_b)
    for raw, scores, ids in ((raw_a, scores_a, ids_a), (raw_b, scores_b, ids_b)):
        labels, scores = known_rows(raw, scores)
        keep = np.isin(ids, shared)
        sets.append((labels[keep], scores[keep], np.searchsorted(shared, ids[keep])))
        dropped.append(int((~keep).sum()))
    values = _replicates(metric_fn, sets, len(shared), n_resamples, seed)
    a, b = (float(metric_fn(y, s, np.arange(len(y)))(np.ones((len(y), 1)))[0]) for y, s, _ in sets)
    what = _bootstrap_name(clusters_a, paired=True)
    return {"metric": name,
            "a": _percentile(a, values[:, 0], level, what, n_resamples, len(shared)),
            "b": _percentile(b, values[:, 1], level, what, n_resamples, len(shared)),
            "difference": _percentile(a - b, values[:, 0] - values[:, 1], level, what, n_resamples, len(shared)),
            "rows_dropped_a": dropped[0], "rows_dropped_b": dropped[1]}


def subset_bootstrap_difference(labels: Any, scores: Any, clusters: Any | None, in_a: Any, in_b: Any,
                                metric: str | Callable[..., Any] = "auroc", n_resamples: int = 2000,
                                level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Interval of metric(rows in_a) − metric(rows in_b), resampling the patients of both subsets together.

    For two groups of one population that may or may not share patients (a device's studies against the
    pooled studies of every seen device, or two devices): each resample draws from every patient of either
    subset, so overlapping patients move together and disjoint groups are resampled independently.

    Returns:
        The difference's interval dict with ``metric``, ``n_patients``, ``undefined_resamples``.
    """
    name, metric_fn = _metric(metric)
    in_a, in_b = np.asarray(in_a, dtype=bool).ravel(), np.asarray(in_b, dtype=bool).ravel()
    raw = np.asarray(labels, dtype=float).ravel()
    keep = (in_a | in_b) & ~np.isnan(raw)
    ids = np.arange(len(raw)) if clusters is None else np.asarray(clusters).ravel()
    _, codes = np.unique(ids[keep], return_inverse=True)
    labels, scores = known_rows(raw[keep], np.asarray(scores, dtype=float).ravel()[keep])
    n_patients = int(codes.max()) + 1 if len(codes) else 0
    sets = [(labels[chosen[keep]], scores[chosen[keep]], codes[chosen[keep]]) for chosen in (in_a, in_b)]
    a, b = (float(metric_fn(y, s, np.arange(len(y)))(np.ones((len(y), 1)))[0]) for y, s, _ in sets)
    values = _replicates(metric_fn, sets, n_patients, n_resamples, seed)
    what = f"{_bootstrap_name(clusters)} of both groups together"
    return {"metric": name, **_percentile(a - b, values[:, 0] - values[:, 1], level, what, n_resamples,
                                          n_patients)}


# -- DeLong ----------------------------------------------------------------------------------

def _one_per_patient(clusters: Any | None, labels: Any) -> None:
    if clusters is None:
        return
    ids = np.asarray(clusters).ravel()[~np.isnan(np.asarray(labels, dtype=float).ravel())]
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"DeLong assumes one observation per patient, but {len(np.unique(ids))} patients have "
                         f"{len(ids)} rows: use bootstrap_ci, which resamples patients")


def _delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs ``(k,)`` and their covariance ``(k, k)`` for ``(k, n)`` scores: Sun & Xu (2014), midranks."""
    positive = labels == 1
    x, y = scores[:, positive], scores[:, ~positive]
    m, n = x.shape[1], y.shape[1]
    k = len(scores)
    if m == 0 or n == 0:
        return np.full(k, np.nan), np.full((k, k), np.nan)
    tx, ty = rankdata(x, axis=1), rankdata(y, axis=1)
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2 * n)
    if m < 2 or n < 2:  # a variance needs two of each class
        return aucs, np.full((k, k), np.nan)
    v_positive = (tz[:, :m] - tx) / n  # structural components V10 of DeLong 1988: share of negatives beaten
    v_negative = 1 - (tz[:, m:] - ty) / m  # V01: share of positives beating each negative
    cov = np.atleast_2d(np.cov(v_positive)) / m + np.atleast_2d(np.cov(v_negative)) / n
    return aucs, cov


DELONG = "DeLong (Sun & Xu 2014 algorithm), normal approximation"


def delong_ci(labels: Any, scores: Any, level: float = 0.95, clusters: Any | None = None) -> dict[str, Any]:
    """AUROC with DeLong's asymptotic interval (clipped to [0, 1]), for one observation per patient.

    Raises:
        ValueError: if ``clusters`` shows a patient with more than one row.
    """
    _one_per_patient(clusters, labels)
    labels, scores = known_rows(labels, scores)
    aucs, cov = _delong(labels, scores[None])
    se = float(np.sqrt(cov[0, 0]))
    z = two_sided_z(level)
    return interval(aucs[0], max(aucs[0] - z * se, 0.0), min(aucs[0] + z * se, 1.0), level,
                     f"{DELONG}, clipped to [0, 1]", se=se)


def delong_paired(labels: Any, scores_a: Any, scores_b: Any, level: float = 0.95,
                  clusters: Any | None = None) -> dict[str, Any]:
    """DeLong's test and interval for AUROC(a) − AUROC(b), two models on the same rows (one per patient).

    Returns:
        ``{"a", "b", "difference"}`` interval dicts; the difference also carries ``se``, ``z``, ``p_value``
        (two-sided) and ``correlation`` of the two AUROCs.
    """
    _one_per_patient(clusters, labels)
    labels, scores_a, scores_b = known_rows(labels, scores_a, scores_b)
    aucs, cov = _delong(labels, np.stack([scores_a, scores_b]))
    z = two_sided_z(level)
    out = {}
    for key, i in (("a", 0), ("b", 1)):
        se = float(np.sqrt(cov[i, i]))
        out[key] = interval(aucs[i], max(aucs[i] - z * se, 0.0), min(aucs[i] + z * se, 1.0), level,
                             f"{DELONG}, clipped to [0, 1]", se=se)
    diff = aucs[0] - aucs[1]
    se = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = diff / se
        correlation = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    out["difference"] = interval(diff, diff - z * se, diff + z * se, level, f"{DELONG} for correlated AUROCs",
                                  se=se, z=float(stat), p_value=float(2 * norm.sf(abs(stat))),
                                  correlation=float(correlation))
    return out


# -- proportions and operating points ---------------------------------------------------------

def wilson_ci(successes: int, n: int, level: float = 0.95) -> dict[str, Any]:
    """Wilson score interval of a proportion (Wilson 1927); NaN when ``n`` is 0."""
    if n == 0:
        return interval(np.nan, np.nan, np.nan, level, "Wilson score", successes=0, n=0)
    z, p = two_sided_z(level), successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return interval(p, max(centre - half, 0.0), min(centre + half, 1.0), level, "Wilson score",
                     successes=int(successes), n=int(n))


# sensitivity = TP / (TP + FN), specificity = TN / (TN + FP), PPV = TP / (TP + FP), NPV = TN / (TN + FN)
_PROPORTIONS = {"sensitivity": (0, 3), "specificity": (2, 1), "ppv": (0, 1), "npv": (2, 3)}


def operating_point(labels: Any, scores: Any, threshold: float, clusters: Any | None = None, level: float = 0.95,
                    n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Sensitivity, specificity, PPV and NPV at ``score >= threshold``, with counts and intervals.

    Intervals are Wilson's when each patient has one row (or ``clusters`` is None); when a patient has several
    rows they come from the patient bootstrap (percentile), as Wilson's would assume independent rows.
    """
    raw, codes, n_patients = _patient_codes(clusters, labels)
    labels, scores = known_rows(raw, scores)
    called = scores >= threshold
    cell = np.select([called & (labels == 1), called & (labels == 0), ~called & (labels == 0)], [0, 1, 2], 3)
    counts = np.bincount(cell, minlength=4)  # TP, FP, TN, FN
    result: dict[str, Any] = {"threshold": float(threshold), "rule": "positive when score >= threshold",
                              **{k: int(v) for k, v in zip(("tp", "fp", "tn", "fn"), counts, strict=True)}}
    if n_patients == len(codes):
        for name, (hit, miss) in _PROPORTIONS.items():
            result[name] = wilson_ci(counts[hit], counts[hit] + counts[miss], level)
        return result
    per_patient = np.zeros((n_patients, 4))
    np.add.at(per_patient, (codes, cell), 1)
    resampled = np.concatenate([_draw_counts(d, n_patients).T @ per_patient
                                for d in patient_resamples(n_patients, n_resamples, seed)])
    for name, (hit, miss) in _PROPORTIONS.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            values = resampled[:, hit] / (resampled[:, hit] + resampled[:, miss])
            estimate = counts[hit] / (counts[hit] + counts[miss]) if counts[hit] + counts[miss] else np.nan
        result[name] = _percentile(estimate, values, level, _bootstrap_name(clusters), n_resamples, n_patients)
    return result


def roc_curve(labels: Any, scores: Any) -> dict[str, list[float]]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1); empty without both classes."""
    labels, scores = known_rows(labels, scores)
    if labels.sum() == 0 or labels.sum() == len(labels):
        return {"fpr": [], "tpr": []}
    _, sensitivity, specificity = _roc_points(labels, scores)
    return {"fpr": [0.0, *(1 - specificity).tolist()], "tpr": [0.0, *sensitivity.tolist()]}


def pr_curve(labels: Any, scores: Any) -> dict[str, list[float]]:
    """Recall and precision at every distinct threshold (highest first), starting at recall 0, precision 1."""
    labels, scores = known_rows(labels, scores)
    if labels.sum() == 0:
        return {"recall": [], "precision": []}
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[s[1:] != s[:-1], True]
    true_pos, called = np.cumsum(y)[last], (np.arange(len(y)) + 1)[last]
    return {"recall": [0.0, *(true_pos / y.sum()).tolist()], "precision": [1.0, *(true_pos / called).tolist()]}


def _roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) and sensitivity, specificity of ``score >= threshold`` at each."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[s[1:] != s[:-1], True]  # last row of each distinct score
    true_pos, false_pos = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    return s[last], true_pos / n_pos, 1 - false_pos / n_neg


def _threshold(rule: str, labels: np.ndarray, thresholds: np.ndarray, sensitivity: np.ndarray,
               specificity: np.ndarray, i: int | None, **extra: Any) -> dict[str, Any]:
    if i is None:
        return {"threshold": np.nan, "rule": rule, "sensitivity": np.nan, "specificity": np.nan, **extra}
    return {"threshold": float(thresholds[i]), "rule": rule, "sensitivity": float(sensitivity[i]),
            "specificity": float(specificity[i]), "n_positive": int(labels.sum()),
            "n_negative": int(len(labels) - labels.sum()), **extra}


def threshold_for_sensitivity(labels: Any, scores: Any, target: float = 0.90) -> dict[str, Any]:
    """The highest threshold whose sensitivity (``score >= threshold``) reaches ``target``.

    Fit it on a development split and apply it to test with ``operating_point``; the sensitivity and
    specificity returned are the development split's.
    """
    labels, scores = known_rows(labels, scores)
    rule = f"highest threshold with sensitivity >= {target:g} on development data"
    if labels.sum() == 0 or labels.sum() == len(labels):
        return _threshold(rule, labels, scores, scores, scores, None)
    thresholds, sens, spec = _roc_points(labels, scores)
    reached = np.flatnonzero(sens >= target - 1e-12)  # tolerance: 0.9 × 10 positives is 9, not 9.000…01
    return _threshold(rule, labels, thresholds, sens, spec, int(reached[0]))


def youden_threshold(labels: Any, scores: Any) -> dict[str, Any]:
    """The threshold maximising Youden's J = sensitivity + specificity − 1 (the highest one among ties).

    Fit it on a development split and apply it to test with ``operating_point``.
    """
    labels, scores = known_rows(labels, scores)
    rule = "maximum Youden index (sensitivity + specificity - 1) on development data"
    if labels.sum() == 0 or labels.sum() == len(labels):
        return _threshold(rule, labels, scores, scores, scores, None, youden_index=np.nan)
    thresholds, sens, spec = _roc_points(labels, scores)
    i = int(np.argmax(sens + spec - 1))
    return _threshold(rule, labels, thresholds, sens, spec, i, youden_index=float(sens[i] + spec[i] - 1))
