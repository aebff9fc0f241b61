"""The analyses of a validation plan, computed from the stored predictions alone.

Nothing here reads a model or an image: a report rebuilt from ``predictions.parquet`` (and
``cross_source.parquet``, ``case_search.parquet``) and the plan gives the same numbers. Every head the plan
names is analysed on the test split and on each external split; operating points are chosen on the
development split's scores (out-of-fold for a fitted head) and applied unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medfm.evaluation import calibration, stats
from medfm.evaluation.cross_source import cross_source_matrices
from medfm.evaluation.plan import Criterion, Endpoint, OperatingPoint, ZeroShotPlan
from medfm.evaluation.retrieval import case_search_validation

NET_BENEFIT_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv")
BASELINE_HEAD = "zero_shot"  # what the fitted heads are compared with


def analyse(predictions: pd.DataFrame, plan: ZeroShotPlan, cross_source: pd.DataFrame | None = None,
            training_sources: dict[str, dict[str, list[str]]] | None = None,
            case_search: pd.DataFrame | None = None) -> dict[str, Any]:
    """Every analysis of the plan: per head, split and task; head comparisons; cross-source; case search.

    Args:
        predictions: one row per study, task and head (:mod:`medfm.evaluation.predictions`).
        plan: the validation plan.
        cross_source: heads refitted per source, for the cross-source matrix (None: zero-shot rows only).
        training_sources: per source column and modality, the values seen in pretraining.
        case_search: one row per similar-case query (:func:`medfm.evaluation.retrieval.case_search_queries`).

    Returns:
        ``{"plan", "statistics", "heads": {head: {split: {task: analysis}}}, "comparisons", "cross_source",
        "case_search", "endpoints", "acceptance", "passed"}``, JSON-serialisable apart from NaN.
    """
    known = _known(_ordinal_patients(predictions))
    heads: dict[str, dict[str, dict[str, Any]]] = {}
    for head in plan.heads:
        of_head = known[known["head"] == head] if len(known) else known
        for split in plan.evaluated_splits:
            per_task = heads.setdefault(head, {}).setdefault(split, {})
            for task in plan.tasks:
                rows = of_head[of_head["task"] == task.key] if len(of_head) else of_head
                test, development = _split(rows, split), _split(rows, plan.development_split)
                per_task[task.key] = analyse_task(test, development, plan) if len(test) else {
                    "n": 0, "note": f"no {head} predictions on the {split} split"}
    endpoints = [{"role": role, **_endpoint_result(e, heads, plan)} for role, e in _declared(plan)]
    acceptance = [_verdict(c, heads, plan) for c in plan.acceptance]
    verdicts = [a["verdict"] for a in acceptance]
    settings = plan.statistics
    return {
        "plan": {"name": plan.name, "version": plan.version, "split": plan.split,
                 "development_split": plan.development_split, "external": plan.external},
        "statistics": settings.model_dump(mode="json"),
        "heads": heads,
        "comparisons": compare_heads(known, plan),
        "cross_source": cross_source_matrices(known, _known(_ordinal_patients(cross_source)), plan,
                                              training_sources or {}),
        "case_search": None if case_search is None else case_search_validation(
            _ordinal_patients(case_search), n_resamples=settings.resamples, level=settings.level, seed=settings.seed),
        "endpoints": endpoints, "acceptance": acceptance,
        "passed": None if not verdicts else all(v == "pass" for v in verdicts),
    }


def compare_heads(known: pd.DataFrame, plan: ZeroShotPlan) -> dict[str, dict[str, dict[str, Any]]]:
    """AUROC of each fitted head minus zero-shot's on the same studies, per split and task (paired bootstrap)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if BASELINE_HEAD not in plan.heads or not len(known):
        return out
    settings = plan.statistics
    for split in plan.evaluated_splits:
        for task in plan.tasks:
            rows = _split(known[known["task"] == task.key], split)
            base = rows[rows["head"] == BASELINE_HEAD].set_index("study")
            for head in plan.fitted_heads:
                other = rows[rows["head"] == head].set_index("study")
                shared = other.index.intersection(base.index)
                if not len(shared):
                    continue
                a, b = other.loc[shared], base.loc[shared]
                out.setdefault(split, {}).setdefault(task.key, {})[f"{head} - {BASELINE_HEAD}"] = \
                    stats.paired_bootstrap_difference(
                        a["label"].to_numpy(dtype=float), a["probability"].to_numpy(dtype=float),
                        b["probability"].to_numpy(dtype=float), clusters=a["patient"].to_numpy(dtype=str),
                        n_resamples=settings.resamples, level=settings.level, seed=settings.seed)
    return out


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


def _endpoint_result(endpoint: Endpoint, heads: dict[str, Any], plan: ZeroShotPlan) -> dict[str, Any]:
    """An endpoint's interval (on the plan's test split) from the task analyses, or why there is none."""
    described = endpoint.model_dump(mode="json")
    task = heads[endpoint.head][plan.split][endpoint.task]
    if "note" in task:
        return {**described, "result": None, "note": task["note"]}
    if endpoint.metric in THRESHOLD_METRICS:
        point = task["operating_points"][endpoint.operating_point]
        result = None if point["test"] is None else point["test"][endpoint.metric]
        return {**described, "result": result, **({"note": point["note"]} if "note" in point else {})}
    if endpoint.metric == "ece":
        ece = task["calibration"]["ece"]
        return {**described, "result": {"estimate": ece["ece"], "low": None, "high": None,
                                        "method": ece.get("binning")}}
    return {**described, "result": task[endpoint.metric]}


def _verdict(criterion: Criterion, heads: dict[str, Any], plan: ZeroShotPlan) -> dict[str, Any]:
    """Pass, fail, or undetermined (no interval: a class missing, or the head could not be fitted)."""
    found = _endpoint_result(criterion.endpoint, heads, plan)
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


def _ordinal_patients(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """Patient pseudonyms replaced by their order of first appearance.

    The bootstrap numbers patients in sorted order of their ids; a pseudonym's salt is drawn per run, so
    sorting pseudonyms would draw different resamples from the same predictions in every run. Rows come in
    manifest order, so ordinals make the intervals a function of the data and the seed alone.
    """
    if table is None or not len(table) or "patient" not in table:
        return table
    return table.assign(patient=[f"{code:08d}" for code in pd.factorize(table["patient"])[0]])


def _known(predictions: pd.DataFrame | None) -> pd.DataFrame:
    """Rows with a known label and a score (an out-of-fold score is NaN where its fold lacked a class)."""
    if predictions is None or not len(predictions):
        return pd.DataFrame(columns=["split", "task", "head", "label", "probability", "patient", "study"])
    return predictions[predictions["label"].notna() & predictions["probability"].notna()]


def _split(rows: pd.DataFrame, split: str) -> pd.DataFrame:
    return rows[rows["split"] == split]


def _columns(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (rows["label"].to_numpy(dtype=float), rows["probability"].to_numpy(dtype=float),
            rows["patient"].to_numpy(dtype=str))


def _bootstrap(metric, labels, probs, patients, plan: ZeroShotPlan) -> dict[str, Any]:
    settings = plan.statistics
    return stats.bootstrap_ci(metric, labels, probs, clusters=patients, n_resamples=settings.resamples,
                              level=settings.level, seed=settings.seed)
