import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import brier_score_loss

from medfm.evaluation import calibration, stats


def simulated(n: int, seed: int, stretch: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities; the model reports them with logits stretched by ``stretch``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=n)
    labels = (rng.random(n) < expit(logits)).astype(float)
    return labels, expit(stretch * logits)


def test_brier_equals_scikit_learn_and_bootstraps_by_patient():
    labels, probs = simulated(500, 0)
    assert calibration.brier(labels, probs) == pytest.approx(brier_score_loss(labels, probs), abs=1e-15)
    assert calibration.brier(np.r_[labels, np.nan], np.r_[probs, 0.5]) == calibration.brier(labels, probs)
    weights = np.random.default_rng(0).integers(0, 3, (4, 500)).astype(float)
    for w, value in zip(weights, calibration.brier(labels, probs, weights), strict=True):
        rows = np.repeat(np.arange(500), w.astype(int))
        assert value == pytest.approx(brier_score_loss(labels[rows], probs[rows]), abs=1e-15)
    result = stats.bootstrap_ci(calibration.brier, labels, probs, np.arange(500) // 2, n_resamples=200)
    assert result["metric"] == "brier" and result["low"] < result["estimate"] < result["high"]


def test_expected_calibration_error_hand_computed():
    labels = np.array([0, 0, 1, 1, 1, np.nan])
    probs = np.array([0.05, 0.15, 0.55, 0.65, 0.95, 0.5])
    result = calibration.expected_calibration_error(labels, probs, bins=2)
    # [0, 0.5): mean 0.1, observed 0, 2 rows; [0.5, 1]: mean 0.7167, observed 1, 3 rows
    assert result["ece"] == pytest.approx(2 / 5 * 0.1 + 3 / 5 * (1 - 2.15 / 3))
    assert [b["count"] for b in result["bins"]] == [2, 3]
    assert result["bins"][1] == pytest.approx({"low": 0.5, "high": 1.0, "count": 3, "mean_predicted": 2.15 / 3,
                                               "observed": 1.0})
    assert result["binning"] == "2 equal-width bins on [0, 1]" and result["n"] == 5
    quantile = calibration.expected_calibration_error(labels, probs, bins=5, strategy="quantile")
    assert [b["count"] for b in quantile["bins"]] == [1] * 5 and "quantile" in quantile["binning"]
    assert quantile["ece"] == pytest.approx(np.mean(np.abs(probs[:5] - labels[:5])))
    json.dumps(result)
    with pytest.raises(ValueError, match="strategy"):
        calibration.expected_calibration_error(labels, probs, strategy="kmeans")


def test_calibration_slope_and_intercept():
    labels, probs = simulated(20_000, 1)
    calibrated = calibration.calibration_slope_intercept(labels, probs)
    assert calibrated["converged"]
    assert calibrated["slope"]["low"] < 1 < calibrated["slope"]["high"]
    assert calibrated["intercept"]["low"] < 0 < calibrated["intercept"]["high"]
    overconfident = calibration.calibration_slope_intercept(*simulated(20_000, 1, stretch=2.0))
    assert overconfident["slope"]["estimate"] == pytest.approx(0.5, abs=0.05)
    assert overconfident["slope"]["high"] < 1
    underestimating = calibration.calibration_slope_intercept(labels, expit(np.log(probs / (1 - probs)) - 1))
    assert underestimating["intercept"]["estimate"] == pytest.approx(1.0, abs=0.1)  # calibration-in-the-large
    assert "Wald" in calibrated["slope"]["method"]
    assert np.isnan(calibration.calibration_slope_intercept(np.ones(4), np.full(4, 0.3))["slope"]["estimate"])


def test_net_benefit_hand_computed():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    probs = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.25, 0.1, 0.1, 0.05, 0.05])
    result = calibration.net_benefit(labels, probs, [0.2, 0.5])
    # t = 0.2: treat p ≥ 0.2 → TP 3, FP 3: 3/10 − 3/10 · 0.25 = 0.225; treat all: 0.3 − 0.7 · 0.25 = 0.125
    # t = 0.5: TP 2, FP 1: 0.2 − 0.1 · 1 = 0.1; treat all: 0.3 − 0.7 = −0.4
    assert result["model"] == pytest.approx([0.225, 0.1])
    assert result["treat_all"] == pytest.approx([0.125, -0.4])
    assert result["treat_none"] == [0.0, 0.0] and result["prevalence"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="between 0 and 1"):
        calibration.net_benefit(labels, probs, [0.0])
