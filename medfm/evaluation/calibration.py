"""Calibration and clinical usefulness of predicted probabilities: Brier score, expected calibration error with
its reliability table, calibration slope and intercept, and net benefit (decision curve).

Rows whose label is NaN (unknown) are ignored, as in ``stats``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, logit

from medfm.evaluation.stats import interval, known_rows, two_sided_z

CLIP = 1e-12  # probabilities of exactly 0 or 1 have no logit


def _probabilities(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = known_rows(labels, probs)
    if ((probs < 0) | (probs > 1)).any() or np.isnan(probs).any():
        raise ValueError("probabilities must lie in [0, 1]")
    return labels, probs


def brier(labels: Any, probs: Any, weights: Any | None = None) -> float | np.ndarray:
    """Mean squared difference between probability and label (scikit-learn's ``brier_score_loss``).

    Args:
        labels: 0/1 per row, NaN for unknown (ignored).
        probs: predicted probability of the positive class.
        weights: None, ``(n,)`` weights, or ``(B, n)`` multiplicities of B bootstrap resamples.

    Returns:
        A float, or ``(B,)`` values for a weight matrix; NaN without rows.
    """
    raw = np.asarray(labels, dtype=float).ravel()
    labels, probs = _probabilities(raw, probs)
    if weights is None:
        return float(np.mean((probs - labels) ** 2)) if len(labels) else float("nan")
    weights = np.asarray(weights, dtype=float)[..., ~np.isnan(raw)]
    with np.errstate(invalid="ignore", divide="ignore"):
        value = weights @ (probs - labels) ** 2 / weights.sum(axis=-1)
    return float(value) if weights.ndim == 1 else value


def expected_calibration_error(labels: Any, probs: Any, bins: int = 10, strategy: str = "uniform") -> dict[str, Any]:
    """ECE = Σ_bins (count / n) · |mean predicted − observed rate|, with the per-bin table of a reliability diagram.

    Args:
        labels: 0/1 per row, NaN for unknown (ignored).
        probs: predicted probability of the positive class.
        bins: number of bins.
        strategy: ``"uniform"`` (equal-width bins on [0, 1]) or ``"quantile"`` (equal-count bins on the
            predictions; tied edges merge, so fewer bins may result).

    Returns:
        ``{"ece", "binning", "n", "bins": [{"low", "high", "count", "mean_predicted", "observed"}]}``;
        every bin is left-closed and right-open, the last one closed; empty bins have NaN means.
    """
    labels, probs = _probabilities(labels, probs)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
        binning = f"{bins} equal-width bins on [0, 1]"
    elif strategy == "quantile":
        edges = np.unique(np.quantile(probs, np.linspace(0, 1, bins + 1))) if len(probs) else np.array([0.0, 1.0])
        binning = f"{len(edges) - 1} equal-count (quantile) bins of the predictions (asked for {bins})"
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    which = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, len(edges) - 2)
    table, ece = [], 0.0
    for b in range(len(edges) - 1):
        inside = which == b
        count = int(inside.sum())
        predicted = float(probs[inside].mean()) if count else float("nan")
        observed = float(labels[inside].mean()) if count else float("nan")
        if count:
            ece += count / len(probs) * abs(predicted - observed)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                      "mean_predicted": predicted, "observed": observed})
    return {"ece": ece if len(probs) else float("nan"), "binning": binning, "n": len(probs), "bins": table}


def _logistic_fit(y: np.ndarray, design: np.ndarray, offset: np.ndarray,
                  max_iter: int = 100, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, bool]:
    """Maximum-likelihood logistic regression by Newton's method: coefficients, covariance, converged."""
    beta = np.zeros(design.shape[1])
    for _ in range(max_iter):
        mu = expit(offset + design @ beta)
        hessian = design.T @ (design * (mu * (1 - mu))[:, None])
        step = np.linalg.lstsq(hessian, design.T @ (y - mu), rcond=None)[0]
        beta = beta + step
        if not np.isfinite(beta).all():
            break
        if np.abs(step).max() < tol:
            mu = expit(offset + design @ beta)
            hessian = design.T @ (design * (mu * (1 - mu))[:, None])
            return beta, np.linalg.pinv(hessian), True
    return np.full(design.shape[1], np.nan), np.full((design.shape[1],) * 2, np.nan), False


def calibration_slope_intercept(labels: Any, probs: Any, level: float = 0.95) -> dict[str, Any]:
    """Calibration slope and calibration-in-the-large, each with a Wald interval.

    The slope is ``b`` in ``logit P(y=1) = a + b · logit(p)``; the intercept is ``a`` in
    ``logit P(y=1) = a + logit(p)`` (slope fixed at 1). A calibrated model has slope 1 and intercept 0; an
    overconfident one a slope below 1. Probabilities are clipped to [1e-12, 1 − 1e-12] before the logit.

    Returns:
        ``{"slope", "intercept", "converged", "n"}``; slope and intercept are interval dicts, NaN when a class
        is absent or the fit does not converge (e.g. perfectly separated data).
    """
    labels, probs = _probabilities(labels, probs)
    method = "logistic regression on logit(p) (maximum likelihood, Newton), Wald interval"
    z = two_sided_z(level)

    def wald(estimate: float, variance: float, what: str) -> dict[str, Any]:
        se = float(np.sqrt(variance))
        return interval(estimate, estimate - z * se, estimate + z * se, level, f"{method}; {what}", se=se)

    x = logit(np.clip(probs, CLIP, 1 - CLIP))
    if labels.sum() == 0 or labels.sum() == len(labels):
        beta, cov, converged = np.full(2, np.nan), np.full((2, 2), np.nan), False
        offset_beta, offset_cov = np.full(1, np.nan), np.full((1, 1), np.nan)
    else:
        beta, cov, converged = _logistic_fit(labels, np.column_stack([np.ones_like(x), x]), np.zeros_like(x))
        offset_beta, offset_cov, offset_converged = _logistic_fit(labels, np.ones((len(x), 1)), x)
        converged = converged and offset_converged
    return {"slope": wald(beta[1], cov[1, 1], "slope of logit(p)"),
            "intercept": wald(offset_beta[0], offset_cov[0, 0], "intercept with logit(p) as offset (slope 1)"),
            "converged": bool(converged), "n": len(labels)}


def net_benefit(labels: Any, probs: Any, thresholds: Any) -> dict[str, Any]:
    """Decision curve: net benefit of treating when ``p >= t``, of treating all, and of treating none.

    Net benefit at threshold probability ``t`` is ``TP/n − FP/n · t / (1 − t)`` (Vickers & Elkin 2006); treating
    all gives ``prevalence − (1 − prevalence) · t / (1 − t)``, treating none 0.

    Raises:
        ValueError: if a threshold is outside (0, 1).
    """
    labels, probs = _probabilities(labels, probs)
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=float))
    if ((thresholds <= 0) | (thresholds >= 1)).any():
        raise ValueError("threshold probabilities must lie strictly between 0 and 1")
    n = len(labels)
    odds = thresholds / (1 - thresholds)
    treated = probs[None, :] >= thresholds[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        true_pos = (treated & (labels == 1)).sum(axis=1) / n
        false_pos = (treated & (labels == 0)).sum(axis=1) / n
        prevalence = labels.mean() if n else np.nan
    return {"thresholds": thresholds.tolist(), "model": (true_pos - false_pos * odds).tolist(),
            "treat_all": (prevalence - (1 - prevalence) * odds).tolist(), "treat_none": [0.0] * len(thresholds),
            "n": n, "prevalence": float(prevalence), "rule": "treat when p >= threshold"}
