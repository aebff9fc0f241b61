"""Cluster-bootstrap confidence intervals of AUROC and AUPRC: vectorised against a loop over resamples.

Data: 100,000 predictions from 50,000 patients (two eyes each: both share the patient's label, their scores are
correlated), prevalence 0.2, fixed seed. ``medfm.evaluation.stats.bootstrap_ci`` draws 2,000 resamples of
patients and computes every resample's metric from per-patient weights in blocks of 64 resamples.

Baseline (same run): what one writes without vectorising, a Python loop that builds each resample's row
indices and calls scikit-learn's ``roc_auc_score`` (``average_precision_score`` for AUPRC) on the same
resamples (``stats.patient_resamples``), timed over the first ``BASELINE_RESAMPLES`` and extrapolated to
2,000. The loop's values are checked against the vectorised ones on those resamples.

Usage: ``python evaluation/bench/bench_stats.py`` (prints JSON), or through ``run.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from medfm.evaluation import stats

PATIENTS, EYES, PREVALENCE, RESAMPLES, BASELINE_RESAMPLES, SEED = 50_000, 2, 0.2, 2000, 40, 0


def two_eyed_cohort(patients: int = PATIENTS, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores and patient ids, rows ordered patient by patient (rows ``2p`` and ``2p + 1``)."""
    rng = np.random.default_rng(seed)
    patient_label = (rng.random(patients) < PREVALENCE).astype(float)
    patient_score = rng.normal(size=patients) + 1.2 * patient_label
    clusters = np.repeat(np.arange(patients), EYES)
    scores = patient_score[clusters] + 0.5 * rng.normal(size=len(clusters))
    return patient_label[clusters], scores, clusters


def _loop(metric: Any, labels: np.ndarray, scores: np.ndarray, n_resamples: int) -> tuple[np.ndarray, float]:
    """The first ``n_resamples`` resamples one at a time: values and seconds per resample."""
    values = []
    start = time.perf_counter()
    for block in stats.patient_resamples(PATIENTS, n_resamples, SEED):
        for drawn in block:
            rows = (EYES * drawn[:, None] + np.arange(EYES)).ravel()
            values.append(metric(labels[rows], scores[rows]))
    return np.array(values), (time.perf_counter() - start) / n_resamples


def _vectorised_first(metric: str, labels: np.ndarray, scores: np.ndarray, n_resamples: int) -> np.ndarray:
    """The vectorised values of the same first resamples, for the agreement check."""
    draws = np.concatenate(list(stats.patient_resamples(PATIENTS, n_resamples, SEED)))
    weights = np.stack([np.bincount(d, minlength=PATIENTS) for d in draws]).repeat(EYES, axis=1).astype(float)
    return getattr(stats, metric)(labels, scores, weights)


def run() -> dict[str, Any]:
    labels, scores, clusters = two_eyed_cohort()
    result: dict[str, Any] = {"name": "cluster-bootstrap CI", "rows": len(labels), "patients": PATIENTS,
                              "resamples": RESAMPLES, "baseline_resamples_timed": BASELINE_RESAMPLES,
                              "omp_threads": os.environ.get("OMP_NUM_THREADS"), "metrics": {}}
    for metric, sklearn_metric in (("auroc", roc_auc_score), ("auprc", average_precision_score)):
        start = time.perf_counter()
        ci = stats.bootstrap_ci(metric, labels, scores, clusters, n_resamples=RESAMPLES, seed=SEED)
        vectorised_s = time.perf_counter() - start
        loop_values, per_resample_s = _loop(sklearn_metric, labels, scores, BASELINE_RESAMPLES)
        agreement = float(np.abs(loop_values - _vectorised_first(metric, labels, scores, BASELINE_RESAMPLES)).max())
        result["metrics"][metric] = {
            "vectorised_s": vectorised_s, "baseline_s_per_resample": per_resample_s,
            "baseline_s_extrapolated": per_resample_s * RESAMPLES,
            "speedup": per_resample_s * RESAMPLES / vectorised_s, "max_abs_difference_vs_baseline": agreement,
            "interval": ci}
    return result


def rows(result: dict) -> list[str]:
    """Markdown rows (``| benchmark | baseline (same run) | measured | baseline | ratio |``) of ``run()``."""
    lines = []
    for metric, row in result["metrics"].items():
        name = "roc_auc_score" if metric == "auroc" else "average_precision_score"
        lines.append(
            f"| {metric.upper()} cluster bootstrap, {result['resamples']:,} resamples of {result['rows']:,} "
            f"predictions ({result['patients']:,} patients), `stats.bootstrap_ci` | a loop calling scikit-learn's "
            f"`{name}` per resample, timed on {result['baseline_resamples_timed']} and extrapolated (max "
            f"difference {row['max_abs_difference_vs_baseline']:.1e}) | {row['vectorised_s']:.1f} s "
            f"| {row['baseline_s_extrapolated']:.0f} s | {row['speedup']:.0f}x faster |")
    return lines


def main() -> int:
    print(json.dumps(run(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
