"""Discrimination metrics used across medfm (the validation statistics are in :mod:`medfm.evaluation.stats`)."""

from __future__ import annotations

import numpy as np

from medfm.evaluation import stats


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the Mann–Whitney statistic (ties count ½).

    Rows with a NaN label (unknown) are ignored. Returns NaN when only one class is present.
    """
    return float(stats.auroc(labels, scores))
