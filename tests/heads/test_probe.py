"""Linear probe and kNN heads against scikit-learn and brute-force references; out-of-fold scoring."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import medfm.heads.probe as probe
from medfm.heads.probe import KNNClassifier, LinearProbe, out_of_fold_scores
from medfm.registry import HEADS


def _problem(n=200, d=10, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=d) + rng.normal(size=d)
    logit = signal * (X - X.mean(0)) @ rng.normal(size=d) / np.sqrt(d)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


def _unit(rng, n, d):
    X = rng.normal(size=(n, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


# ---------------------------------------------------------------- LinearProbe


@pytest.mark.parametrize("C", [0.05, 3.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_linear_probe_matches_sklearn(C, weighted):
    X, y = _problem()
    w = np.random.default_rng(1).uniform(0.2, 3.0, size=len(y)) if weighted else None
    ours = LinearProbe(C=C, standardize=False).fit(X, y, sample_weight=w)
    ref = LogisticRegression(C=C, l1_ratio=0.0, tol=1e-10, max_iter=10000).fit(X, y, sample_weight=w)
    assert ours.converged_
    np.testing.assert_allclose(ours.coef_, ref.coef_[0], atol=1e-5)
    assert ours.intercept_ == pytest.approx(ref.intercept_[0], abs=1e-5)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    np.testing.assert_array_equal(ours.classes_, [0, 1])
    assert ours.n_features_in_ == X.shape[1] and ours.n_iter_ > 0


def test_standardize_folds_back_to_raw_features():
    X, y = _problem(seed=2)
    X[:, 3] = 7.0  # a constant column must not break the z-scoring
    w = np.random.default_rng(3).uniform(0.5, 2.0, size=len(y))
    mean = np.average(X, axis=0, weights=w)
    std = np.sqrt(np.average((X - mean) ** 2, axis=0, weights=w))
    std[3] = 1.0
    manual = LinearProbe(C=0.5, standardize=False).fit((X - mean) / std, y, sample_weight=w)
    folded = LinearProbe(C=0.5, standardize=True).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(folded.decision_function(X), manual.decision_function((X - mean) / std), atol=1e-7)
    np.testing.assert_array_equal(folded.predict(X), manual.predict((X - mean) / std))


@pytest.mark.parametrize("C", [1.0, 1e12])
def test_separable_data_never_raises(C):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    head = LinearProbe(C=C, standardize=False, max_iter=50).fit(X, y)
    assert isinstance(head.converged_, bool)
    proba = head.predict_proba(X)
    assert np.isfinite(proba).all() and np.isfinite(head.decision_function(X)).all()
    if C > 1:  # nearly unpenalised: the separating direction is found
        np.testing.assert_array_equal(head.predict(X), y)


def test_predict_outputs_shapes_and_dtypes():
    X, y = _problem(n=60, d=4)
    head = LinearProbe().fit(X.tolist(), y.tolist())
    assert head.decision_function(X).dtype == np.float64 and head.decision_function(X).shape == (60,)
    proba = head.predict_proba(X)
    assert proba.shape == (60, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(head.predict(X), (proba[:, 1] >= 0.5).astype(int))


@pytest.mark.parametrize("head_cls", [LinearProbe, KNNClassifier])
def test_fit_errors(head_cls):
    X, y = _problem(n=12, d=3)
    with pytest.raises(ValueError, match="needs both classes: got 12 negatives and 0 positives"):
        head_cls().fit(X, np.zeros(12))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        head_cls().fit(X, np.where(y == 1, 2, 0))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        head_cls().fit(X, np.where(np.arange(12) == 0, np.nan, y))
    X_nan = X.copy()
    X_nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        head_cls().fit(X_nan, y)
    with pytest.raises(ValueError, match="12 rows but y has 11"):
        head_cls().fit(X, y[:11])


@pytest.mark.parametrize("head_cls", [LinearProbe, KNNClassifier])
def test_predict_errors(head_cls):
    X, y = _problem(n=30, d=3, seed=5)
    with pytest.raises(RuntimeError, match="not fitted: call fit first"):
        head_cls().predict_proba(X)
    head = head_cls().fit(X, y)
    with pytest.raises(ValueError, match="X has 4 features, but .* expects 3"):
        head.decision_function(np.ones((2, 4)))


# ---------------------------------------------------------------- KNNClassifier


def _knn_reference(T, y, Q, k, prior_weight):
    prevalence = y.mean()
    k = min(k, len(T))
    out = []
    for q in Q:
        sims = [float(np.dot(q, t)) for t in T]
        nearest = sorted(range(len(T)), key=lambda j: (-sims[j], j))[:k]
        out.append((y[nearest].sum() + prior_weight * prevalence) / (k + prior_weight))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 100])
def test_knn_matches_brute_force_with_ties(k, monkeypatch):
    monkeypatch.setattr(probe, "_QUERY_BLOCK", 4)  # exercise the blocking with a small block
    rng = np.random.default_rng(6)
    T = _unit(rng, 40, 8)
    y = (rng.uniform(size=40) < 0.3).astype(int)
    T[[5, 10, 17]] = T[3]  # exact duplicates: ties broken by training-row order
    y[[3, 5, 10, 17]] = [1, 0, 0, 1]
    Q = np.vstack([T[3], T[3] * 2.5, _unit(rng, 9, 8), T[[0, 17]]])
    head = KNNClassifier(k=k, prior_weight=1.5).fit(T * 3.0, y)  # norms do not matter for cosine
    expected = _knn_reference(T, y, Q / np.linalg.norm(Q, axis=1, keepdims=True), k, 1.5)
    proba = head.predict_proba(Q)
    np.testing.assert_allclose(proba[:, 1], expected, atol=1e-12)
    assert head.k_ == min(k, 40)
    assert ((proba > 0) & (proba < 1)).all()
    np.testing.assert_allclose(head.decision_function(Q), np.log(expected / (1 - expected)), atol=1e-9)
    np.testing.assert_array_equal(head.predict(Q), (expected >= 0.5).astype(int))


def test_knn_tie_goes_to_earlier_row():
    T = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    head = KNNClassifier(k=1, prior_weight=1.0).fit(T, [1, 0, 0])
    p = head.predict_proba([[1.0, 0.0]])[0, 1]
    assert p == pytest.approx((1 + 1 / 3) / 2)
    head = KNNClassifier(k=1, prior_weight=1.0).fit(T, [0, 1, 0])
    assert head.predict_proba([[1.0, 0.0]])[0, 1] == pytest.approx((0 + 1 / 3) / 2)


def test_knn_rejects_bad_parameters_and_zero_vectors():
    T = np.array([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="prior_weight"):
        KNNClassifier(prior_weight=0.0).fit(T, [0, 1])
    with pytest.raises(ValueError, match="k must be"):
        KNNClassifier(k=0).fit(T, [0, 1])
    with pytest.raises(ValueError, match="all-zero rows"):
        KNNClassifier().fit(T, [0, 1]).predict_proba([[0.0, 0.0]])


def test_registry_lookups():
    assert HEADS.get("knn") is KNNClassifier
    assert HEADS.get("linear_probe") is LinearProbe


def test_hyperparameters_only_stored_in_init():
    head = LinearProbe(C=-1.0, max_iter=0)
    assert head.C == -1.0 and not hasattr(head, "coef_")
    with pytest.raises(ValueError, match="C > 0"):
        head.fit(np.eye(2), [0, 1])


# ---------------------------------------------------------------- out_of_fold_scores


class _RecordingHead:
    """Stub head: column 0 of X is the row id; records what it was fitted on and what it scored."""

    def __init__(self, log):
        self.log = log

    def fit(self, X, y):
        self.fitted = X[:, 0].astype(int)
        self.log.append(self)
        return self

    def decision_function(self, X):
        self.scored = X[:, 0].astype(int)
        return X[:, 0] * 0.0 + len(self.log)


def _grouped(n_patients=30, rows_per_patient=3, seed=7):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i:03d}" for i in range(n_patients)], rows_per_patient)
    n = len(groups)
    X = np.column_stack([np.arange(n), rng.normal(size=(n, 2))])
    y = (rng.uniform(size=n) < 0.4).astype(float)
    return X, y, groups


def test_out_of_fold_never_scores_a_patient_with_its_own_head():
    X, y, groups = _grouped()
    y[[4, 50]] = np.nan
    log = []
    scores = out_of_fold_scores(lambda: _RecordingHead(log), X, y, groups, n_folds=4, seed=3)
    assert len(log) == 4 and np.isfinite(scores).all() and scores.dtype == np.float64
    scored_all = np.concatenate([h.scored for h in log])
    np.testing.assert_array_equal(np.sort(scored_all), np.arange(len(X)))  # every row scored exactly once
    for h in log:
        assert not set(groups[h.fitted]) & set(groups[h.scored])
        assert not {4, 50} & set(h.fitted.tolist())  # unlabelled rows are never fitted on
        expected_fit = np.setdiff1d(np.arange(len(X)), np.concatenate([h.scored, [4, 50]]))
        np.testing.assert_array_equal(np.sort(h.fitted), expected_fit)


def test_out_of_fold_is_deterministic_and_seed_dependent():
    X, y, groups = _grouped()
    def folds(seed):
        log = []
        return out_of_fold_scores(lambda: _RecordingHead(log), X, y, groups, n_folds=5, seed=seed)

    np.testing.assert_array_equal(folds(11), folds(11))
    assert not np.array_equal(folds(11), folds(12))
    X, y, groups = _problem(n=80, d=5)[0], _problem(n=80, d=5)[1], np.arange(80) // 2
    a = out_of_fold_scores(LinearProbe, X, y, groups, seed=1)
    np.testing.assert_array_equal(a, out_of_fold_scores(LinearProbe, X, y, groups, seed=1))


def test_more_folds_than_groups_uses_one_group_per_fold():
    X, y, groups = _grouped(n_patients=4)
    y[:] = np.tile([0.0, 1.0, 0.0], 4)
    log = []
    out_of_fold_scores(lambda: _RecordingHead(log), X, y, groups, n_folds=10)
    assert len(log) == 4
    assert all(len(set(groups[h.scored])) == 1 for h in log)


def test_fold_without_both_classes_in_training_part_is_nan():
    X = np.random.default_rng(8).normal(size=(9, 3))
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=float)
    groups = np.array(["a"] * 3 + ["b"] * 3 + ["c"] * 3)
    scores = out_of_fold_scores(LinearProbe, X, y, groups, n_folds=3)
    assert np.isnan(scores[:3]).all()  # fitting part of patient a's fold is b + c: negatives only
    assert np.isfinite(scores[3:]).all()


def test_out_of_fold_auroc_is_honest():
    X, y = _problem(n=240, d=8, seed=9, signal=4.0)
    groups = np.arange(240) // 3
    oof = out_of_fold_scores(lambda: LinearProbe(C=1.0), X, y, groups)
    assert roc_auc_score(y, oof) > 0.8

    rng = np.random.default_rng(10)
    X_noise = rng.normal(size=(120, 60))
    y_noise = rng.integers(0, 2, size=120)
    groups = np.arange(120) // 2
    in_sample = LinearProbe(C=1.0).fit(X_noise, y_noise).decision_function(X_noise)
    oof = out_of_fold_scores(lambda: LinearProbe(C=1.0), X_noise, y_noise, groups)
    assert roc_auc_score(y_noise, in_sample) > 0.9  # in-sample scores are optimistic
    assert abs(roc_auc_score(y_noise, oof) - 0.5) < 0.15


def test_out_of_fold_errors():
    X, y, groups = _grouped(n_patients=5)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        out_of_fold_scores(LinearProbe, X, np.full(len(y), 3.0), groups)
    with pytest.raises(ValueError, match="groups"):
        out_of_fold_scores(LinearProbe, X, y, groups[:-1])
    with pytest.raises(ValueError, match="n_folds"):
        out_of_fold_scores(LinearProbe, X, y, groups, n_folds=1)
    with pytest.raises(ValueError, match="NaN"):
        out_of_fold_scores(LinearProbe, X, y, np.where(np.arange(len(y)) == 0, np.nan, 1.0))
