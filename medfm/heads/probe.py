"""Supervised heads on frozen embeddings, following the scikit-learn estimator API.

``LinearProbe`` is binary L2-regularised logistic regression (the objective of
scikit-learn's ``LogisticRegression``), fitted in float64 with L-BFGS-B.
``KNNClassifier`` scores a study by the labels of its k most cosine-similar
training studies, shrunk towards the training prevalence.
``out_of_fold_scores`` gives each development study a score from a head that never
saw that study's patient, so thresholds chosen on the development split are not
chosen on in-sample scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from medfm.registry import HEADS

_QUERY_BLOCK = 4096  # query rows per similarity matrix product in KNNClassifier


def _features(X, name: str = "X") -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features); got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def _binary_labels(y, n_rows: int, allow_nan: bool = False) -> np.ndarray:
    try:
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("labels must be 0 or 1") from None
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D; got shape {y.shape}")
    if len(y) != n_rows:
        raise ValueError(f"X has {n_rows} rows but y has {len(y)} labels")
    known = y[~np.isnan(y)] if allow_nan else y
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1" + ("" if allow_nan else " (NaN is not allowed)"))
    return y


def _check_both_classes(y: np.ndarray) -> None:
    n_neg, n_pos = int(np.sum(y == 0)), int(np.sum(y == 1))
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"needs both classes: got {n_neg} negatives and {n_pos} positives")


def _check_query(est: Any, X) -> np.ndarray:
    if not hasattr(est, "n_features_in_"):
        raise RuntimeError(f"{type(est).__name__} is not fitted: call fit first")
    X = _features(X)
    if X.shape[1] != est.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {type(est).__name__} expects {est.n_features_in_}")
    return X


def _logistic_objective(theta: np.ndarray, Z: np.ndarray, y: np.ndarray, w: np.ndarray, C: float):
    """sum_i w_i * logloss_i + ||b||^2 / (2C) and its gradient; theta = [b, intercept]."""
    b, c = theta[:-1], theta[-1]
    z = Z @ b + c
    loss = np.sum(w * (np.logaddexp(0.0, z) - y * z)) + (b @ b) / (2.0 * C)
    r = w * (expit(z) - y)
    grad = np.empty_like(theta)
    grad[:-1] = Z.T @ r + b / C
    grad[-1] = r.sum()
    return loss, grad


@HEADS.register("linear_probe")
class LinearProbe:
    """Binary L2-regularised logistic regression on embeddings.

    Args:
        C: inverse regularisation strength, as in scikit-learn (larger = weaker penalty).
        standardize: z-score features with the training mean/std before fitting.
        max_iter: L-BFGS-B iteration limit.
        tol: L-BFGS-B projected-gradient tolerance.

    Attributes (after ``fit``):
        coef_: ``(d,)`` weights on raw X. intercept_: float. classes_: ``[0, 1]``.
        n_features_in_, n_iter_: ints. converged_: False if the optimiser stopped early.
    """

    def __init__(self, C: float = 1.0, standardize: bool = True, max_iter: int = 1000, tol: float = 1e-8):
        self.C = C
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y, sample_weight=None) -> LinearProbe:
        """Fit on ``X (n, d)`` and 0/1 labels ``y (n,)``, optionally weighting rows.

        Returns:
            self. Non-convergence does not raise: it sets ``converged_ = False``.

        Raises:
            ValueError: bad labels, one class only, NaN/inf in X, mismatched lengths,
                negative or non-finite weights, or non-positive C / tol / max_iter.
        """
        if not self.C > 0 or not self.tol > 0 or not self.max_iter >= 1:
            raise ValueError(f"need C > 0, tol > 0, max_iter >= 1; got C={self.C}, tol={self.tol}, "
                             f"max_iter={self.max_iter}")
        X = _features(X)
        y = _binary_labels(y, len(X))
        w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if w.shape != y.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"sample_weight must be {len(y)} finite non-negative values with a positive sum")
        _check_both_classes(y[w > 0])
        d = X.shape[1]
        mean, std = np.zeros(d), np.ones(d)
        # Projected embedding dimensions differ widely in scale; z-scoring makes C mean the same for every model.
        if self.standardize:
            mean = np.average(X, axis=0, weights=w)
            std = np.sqrt(np.average((X - mean) ** 2, axis=0, weights=w))
            std[np.ptp(X[w > 0], axis=0) == 0] = 1.0  # constant column: leave it unscaled
        Z = (X - mean) / std
        res = minimize(_logistic_objective, np.zeros(d + 1), args=(Z, y, w, float(self.C)), jac=True,
                       method="L-BFGS-B",
                       options={"maxiter": int(self.max_iter), "gtol": float(self.tol),
                                "ftol": 64 * np.finfo(np.float64).eps, "maxls": 50})
        self.coef_ = res.x[:-1] / std  # fold the z-scoring back so coef_ and intercept_ apply to raw X
        self.intercept_ = float(res.x[-1] - mean @ self.coef_)
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = d
        self.n_iter_ = int(res.nit)
        self.converged_ = bool(res.success)
        return self

    def decision_function(self, X) -> np.ndarray:
        """``(n,)`` float64 logits of the positive class."""
        X = _check_query(self, X)
        return X @ self.coef_ + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        """``(n, 2)`` probabilities of classes 0 and 1."""
        p = expit(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        """``(n,)`` 0/1 predictions at probability 0.5."""
        return (self.decision_function(X) >= 0.0).astype(int)


def _unit_rows(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("X has all-zero rows: cosine similarity is undefined for them")
    return X / norms


@HEADS.register("knn")
class KNNClassifier:
    """Cosine k-nearest-neighbour classifier with prevalence shrinkage.

    P(positive) = (positives among the k nearest + prior_weight * prevalence) / (k + prior_weight);
    ties in similarity go to the earlier training row.

    Args:
        k: number of neighbours (capped at the training-set size, recorded as ``k_``).
        prior_weight: pseudo-count of the training-prevalence prior; must be > 0.
    """

    def __init__(self, k: int = 15, prior_weight: float = 1.0):
        self.k = k
        self.prior_weight = prior_weight

    def fit(self, X, y) -> KNNClassifier:
        """Store L2-normalised training rows of ``X (n, d)`` and their 0/1 labels.

        Raises:
            ValueError: bad labels, one class only, NaN/inf or all-zero rows in X,
                mismatched lengths, k < 1, or prior_weight <= 0.
        """
        if int(self.k) != self.k or self.k < 1:
            raise ValueError(f"k must be a positive integer; got {self.k}")
        # A positive prior weight keeps probabilities strictly inside (0, 1), so logits and calibration are defined.
        if not self.prior_weight > 0:
            raise ValueError(f"prior_weight must be > 0; got {self.prior_weight}")
        X = _features(X)
        y = _binary_labels(y, len(X))
        _check_both_classes(y)
        self.train_vectors_ = _unit_rows(X)
        self.train_labels_ = y
        self.prevalence_ = float(y.mean())
        self.k_ = int(min(self.k, len(X)))
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[1]
        return self

    def _positive_neighbours(self, Q: np.ndarray) -> np.ndarray:
        """Number of positive labels among each query's k_ nearest rows (ties by row order)."""
        k = self.k_
        S = Q @ self.train_vectors_.T
        idx = np.argpartition(-S, k - 1, axis=1)[:, k - 1 : k]
        kth = np.take_along_axis(S, idx, axis=1)  # similarity of the k-th nearest row
        above, tied = S > kth, S == kth
        room = k - above.sum(axis=1, keepdims=True)  # places left for rows tied with the k-th: earliest rows win
        chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
        return chosen.astype(np.float64) @ self.train_labels_

    def predict_proba(self, X) -> np.ndarray:
        """``(n, 2)`` probabilities of classes 0 and 1, strictly inside (0, 1)."""
        Q = _unit_rows(_check_query(self, X))
        pos = np.empty(len(Q))
        for start in range(0, len(Q), _QUERY_BLOCK):
            pos[start : start + _QUERY_BLOCK] = self._positive_neighbours(Q[start : start + _QUERY_BLOCK])
        p = (pos + self.prior_weight * self.prevalence_) / (self.k_ + self.prior_weight)
        return np.column_stack([1.0 - p, p])

    def decision_function(self, X) -> np.ndarray:
        """``(n,)`` logit of the positive-class probability."""
        p = self.predict_proba(X)[:, 1]
        return np.log(p) - np.log1p(-p)

    def predict(self, X) -> np.ndarray:
        """``(n,)`` 0/1 predictions at probability 0.5."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def out_of_fold_scores(make_head: Callable[[], Any], X, y, groups, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Score every row with a head fitted on the other folds, folds made of whole patients.

    This gives development-split scores that were not fitted on themselves, so an
    operating point chosen on them is not chosen on in-sample scores. Distinct groups
    are shuffled with ``np.random.default_rng(seed)`` and dealt round-robin into
    ``min(n_folds, n_groups)`` folds. Rows with NaN labels are not fitted on but are
    scored. A fold whose training part lacks a class gets NaN scores (no error).

    Args:
        make_head: builds a fresh unfitted head with ``fit(X, y)`` and ``decision_function(X)``.
        X: ``(n, d)`` embeddings.
        y: ``(n,)`` labels 0, 1 or NaN (unknown).
        groups: ``(n,)`` patient ids; a patient's rows always fall in one fold.
        n_folds: number of folds (at least 2).
        seed: seed of the group shuffle.

    Returns:
        ``(n,)`` float64 out-of-fold decision scores.

    Raises:
        ValueError: bad labels, mismatched lengths, NaN group ids, fewer than 2 groups or n_folds < 2.
    """
    X = _features(X)
    y = _binary_labels(y, len(X), allow_nan=True)
    groups = np.asarray(groups)
    if groups.shape != (len(X),):
        raise ValueError(f"X has {len(X)} rows but groups has shape {groups.shape}")
    if groups.dtype.kind == "f" and np.isnan(groups).any():
        raise ValueError("groups contain NaN: every row needs a patient id")
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2; got {n_folds}")
    distinct, group_of_row = np.unique(groups, return_inverse=True)
    if len(distinct) < 2:
        raise ValueError(f"needs at least 2 groups to form folds; got {len(distinct)}")
    n_folds = min(n_folds, len(distinct))
    fold_of_group = np.empty(len(distinct), dtype=int)
    fold_of_group[np.random.default_rng(seed).permutation(len(distinct))] = np.arange(len(distinct)) % n_folds
    fold_of_row = fold_of_group[group_of_row]
    labelled = ~np.isnan(y)
    scores = np.full(len(X), np.nan)
    for fold in range(n_folds):
        scored = fold_of_row == fold
        train = ~scored & labelled
        if not ((y[train] == 0).any() and (y[train] == 1).any()):
            continue  # training part lacks a class: this fold's scores stay NaN
        head = make_head().fit(X[train], y[train].astype(int))
        scores[scored] = np.asarray(head.decision_function(X[scored]), dtype=np.float64)
    return scores
