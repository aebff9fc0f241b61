import numpy as np
import pytest

from medfm.evaluation.metrics import auroc


def test_perfect_reversed_and_tied():
    y = np.array([0, 0, 1, 1])
    assert auroc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auroc(y, np.ones(4)) == 0.5


def test_hand_computed_with_a_tie():
    # positives 0.4, 0.8 vs negatives 0.1, 0.4, 0.5: 0.4 wins 1 + ties 0.5, 0.8 wins 3 → 4.5 of 6 pairs
    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.4, 0.8, 0.1, 0.4, 0.5])
    assert auroc(y, s) == pytest.approx(4.5 / 6)


def test_unknown_labels_are_ignored_and_one_class_is_nan():
    assert auroc(np.array([1, 0, np.nan]), np.array([1.0, 0.0, 5.0])) == 1.0
    assert np.isnan(auroc(np.array([1, 1]), np.array([0.2, 0.3])))
