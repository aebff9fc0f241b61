"""The analyses of a validation plan, computed from ``predictions.parquet`` alone.

Nothing here reads a model or an image: a report rebuilt from the stored predictions and
the plan gives the same numbers. Only the zero-shot head exists so far; endpoints on
other heads are listed as not evaluated, never silently dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medfm.evaluation import calibration, stats
from medfm.evaluation.plan import Criterion, Endpoint, OperatingPoint, ZeroShotPlan

BUILT_HEADS = ("zero_shot",)
NET_BENEFIT_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv")


def analyse(predictions: pd.DataFrame, plan: ZeroShotPlan) -> dict[str, Any]:
    """Per task: discrimination, calibration, operating points, subgroups; then endpoints and acceptance.

    Operating points are chosen on the plan's development split and applied unchanged to
    its test split; every other figure is the test split's.
    """
    known = predictions[predictions["label"].notna()]
    tasks = {}
    for task in plan.tasks:
        rows = known[known["task"] == task.key]
        test, development = rows[rows["split"] == plan.split], rows[rows["split"] == plan.development_split]
        tasks[task.key] = analyse_task(test, development, plan)
    endpoints = [{"role": role, **_endpoint_result(e, tasks)} for role, e in _declared(plan)]
    acceptance = [_verdict(c, tasks) for c in plan.acceptance]
    verdicts = [a["verdict"] for a in acceptance]
    return {
        "plan": {"name": plan.name, "version": plan.version, "split": plan.split,
                 "development_split": plan.development_split},
        "statistics": plan.statistics.model_dump(mode="json"),
        "tasks": tasks, "endpoints": endpoints, "acceptance": acceptance,
        "passed": None if not verdicts else all(v == "pass" for v in verdicts),
    }


def analyse_task(test: pd.DataFrame, development: pd.DataFrame, plan: ZeroShotPlan) -> dict[str, Any]:
    """Every analysis of one task's test rows (known labels), operating points from its development rows."""
    labels, probs, patients = _columns(test)
    settings = plan.statistics
    n_positive = int(labels.sum()) if len(labels) else 0
    return {
        "n": len(labels), "n_positive": n_positive, "n_negative": len(labels) - n_positive,
        "n_patients": int(pd.Series(patients).nunique()),
        "auroc": discrimination_interval("auroc", labels, probs, patients, plan),
        "auprc": _bootstrap("auprc", labels, probs, patients, plan),
        "brier": _bootstrap(calibration.brier, labels, probs, patients, plan),
        "calibration": {
            "ece": calibration.expected_calibration_error(labels, probs, settings.calibration_bins, settings.binning),
            "slope_intercept": calibration.calibration_slope_intercept(labels, probs, settings.level),
            "net_benefit": calibration.net_benefit(labels, probs, NET_BENEFIT_THRESHOLDS),
        },
        "operating_points": {p.name: _operating_point(p, test, development, plan) for p in plan.operating_points},
        "subgroups": subgroups(test, plan),
    }


def discrimination_interval(metric: str, labels, probs, patients, plan: ZeroShotPlan) -> dict[str, Any]:
    """AUROC by the plan's method: DeLong when asked (one row per patient), else the patient bootstrap."""
    if plan.statistics.ci == "delong" and metric == "auroc":
        return {"metric": "auroc", **stats.delong_ci(labels, probs, plan.statistics.level, clusters=patients)}
    return _bootstrap(metric, labels, probs, patients, plan)


def subgroups(test: pd.DataFrame, plan: ZeroShotPlan) -> dict[str, dict[str, Any]]:
    """AUROC with its interval per value of each subgroup column, and per age band."""
    out: dict[str, dict[str, Any]] = {}
    groups = {column: test[column].astype(str) for column in plan.subgroups.by if column in test.columns}
    if "age" in test.columns and plan.subgroups.age_bands:
        bands = plan.subgroups.age_bands
        names = [f"{a:g}-{b:g}" for a, b in zip(bands, bands[1:], strict=False)]
        groups["age"] = pd.cut(test["age"].astype(float), bands, right=False, labels=names).astype(str)
    for column, values in groups.items():
        out[column] = {}
        for value in sorted(set(values) - {"nan", "None"}):
            labels, probs, patients = _columns(test[values == value])
            out[column][value] = {"n": len(labels), "n_positive": int(labels.sum()),
                                  "auroc": discrimination_interval("auroc", labels, probs, patients, plan)}
    return out


# -- operating points --------------------------------------------------------------------------------


def _operating_point(point: OperatingPoint, test: pd.DataFrame, development: pd.DataFrame,
                     plan: ZeroShotPlan) -> dict[str, Any]:
    """The threshold chosen on development rows by the point's rule, and test performance at it."""
    dev_labels, dev_probs, _ = _columns(development)
    if point.rule == "fixed":
        chosen = {"threshold": float(point.target), "rule": f"fixed threshold {point.target:g}"}
    elif point.rule == "sensitivity":
        chosen = stats.threshold_for_sensitivity(dev_labels, dev_probs, point.target)
    elif point.rule == "youden":
        chosen = stats.youden_threshold(dev_labels, dev_probs)
    else:
        chosen = threshold_for_specificity(dev_labels, dev_probs, point.target)
    labels, probs, patients = _columns(test)
    if not np.isfinite(chosen["threshold"]):
        return {"chosen_on_development": chosen, "test": None,
                "note": f"no threshold: the {plan.development_split} split lacks a class for this task"}
    settings = plan.statistics
    tested = stats.operating_point(labels, probs, chosen["threshold"], clusters=patients, level=settings.level,
                                   n_resamples=settings.resamples, seed=settings.seed)
    return {"chosen_on_development": chosen, "test": tested}


def threshold_for_specificity(labels, probs, target: float) -> dict[str, Any]:
    """The lowest threshold whose specificity (``prob >= threshold`` called positive) reaches ``target``."""
    labels, probs = stats.known_rows(labels, probs)
    rule = f"lowest threshold with specificity >= {target:g} on development data"
    negatives, positives = np.sort(probs[labels == 0]), probs[labels == 1]
    if not len(negatives) or not len(positives):
        return {"threshold": float("nan"), "rule": rule}
    candidates = np.unique(probs)
    specificity = np.searchsorted(negatives, candidates, side="left") / len(negatives)  # share below threshold
    reached = np.flatnonzero(specificity >= target - 1e-12)
    threshold = float(candidates[reached[0]]) if len(reached) else float(np.nextafter(candidates[-1], np.inf))
    return {"threshold": threshold, "rule": rule,
            "specificity": float(np.mean(negatives < threshold)), "sensitivity": float(np.mean(positives >= threshold))}


# -- endpoints and acceptance ------------------------------------------------------------------------


def _declared(plan: ZeroShotPlan) -> list[tuple[str, Endpoint]]:
    return [("primary", e) for e in plan.primary] + [("secondary", e) for e in plan.secondary]


def _endpoint_result(endpoint: Endpoint, tasks: dict[str, Any]) -> dict[str, Any]:
    """An endpoint's interval from the task analyses, or why it was not evaluated."""
    described = endpoint.model_dump(mode="json")
    if endpoint.head not in BUILT_HEADS:
        return {**described, "result": None, "note": f"not evaluated: the {endpoint.head} head is not built yet"}
    task = tasks[endpoint.task]
    if endpoint.metric in THRESHOLD_METRICS:
        tested = task["operating_points"][endpoint.operating_point]["test"]
        result = None if tested is None else tested[endpoint.metric]
    elif endpoint.metric == "ece":
        ece = task["calibration"]["ece"]
        result = {"estimate": ece["ece"], "low": None, "high": None, "method": ece.get("binning")}
    else:
        result = task[endpoint.metric]
    return {**described, "result": result}


def _verdict(criterion: Criterion, tasks: dict[str, Any]) -> dict[str, Any]:
    """Pass, fail, or undetermined (no interval: a class missing, or the head not built)."""
    found = _endpoint_result(criterion.endpoint, tasks)
    result = found["result"] or {}
    key = {"lower": "low", "upper": "high", "estimate": "estimate"}[criterion.bound]
    value = result.get(key)
    limit = criterion.at_least if criterion.at_least is not None else criterion.at_most
    if value is None or not np.isfinite(value):
        verdict = "undetermined"
    elif criterion.at_least is not None:
        verdict = "pass" if value >= limit else "fail"
    else:
        verdict = "pass" if value <= limit else "fail"
    return {"criterion": criterion.model_dump(mode="json"), "value": value, "verdict": verdict,
            "method": result.get("method"), "note": found.get("note")}


# -- helpers ------------------------------------------------------------------------------------------


def _columns(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (rows["label"].to_numpy(dtype=float), rows["probability"].to_numpy(dtype=float),
            rows["patient"].to_numpy(dtype=str))


def _bootstrap(metric, labels, probs, patients, plan: ZeroShotPlan) -> dict[str, Any]:
    settings = plan.statistics
    return stats.bootstrap_ci(metric, labels, probs, clusters=patients, n_resamples=settings.resamples,
                              level=settings.level, seed=settings.seed)
