"""Per-study predictions of every head a validation plan names: what every later figure and interval is computed from.

:func:`plan_predictions` embeds the development, test and external splits once and scores each task with

- ``zero_shot``: the prompt ensembles, no fitting;
- each fitted head (``linear_probe``, ``knn``): fitted on the development split's known labels and applied
  unchanged to the evaluated splits; the development rows get out-of-fold scores from patient-grouped folds,
  so an operating point chosen on them is not chosen on scores the head was fitted to;
- the cross-source rows: each fitted head refitted on the development studies of one source (a device or a
  site) and applied to every evaluated study, for the cross-device / cross-site matrix.

No raw identifier leaves this module: ``patient`` and ``case`` are keyed hashes with a salt drawn per run and
never stored, so they group a patient's studies (for the cluster bootstrap) and name a case in a report
without identifying anyone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from medfm.cohort import CohortConfig
from medfm.evaluation.plan import ZeroShotPlan
from medfm.heads.cases import patient_key
from medfm.heads.embedding import embed_samples
from medfm.heads.probe import out_of_fold_scores
from medfm.heads.zeroshot import ZeroShotClassifier
from medfm.keys import IMAGE_MODALITIES, Field, Modality

# What a prediction row carries about its study besides ids and label: the sources a validation report
# breaks results down by. Never a name or a raw patient id.
STUDY_META = ("site", "sex", "age", "study_date")
SOURCE_COLUMNS = ("device", "site")

Embedded = dict[str, tuple[torch.Tensor, list[int]]]


@dataclass
class PlanPredictions:
    """What :func:`plan_predictions` returns; each table is written beside ``results.json``.

    Attributes:
        predictions: one row per study, task and head (``predictions.parquet``).
        cross_source: one row per study, task, head and fitting source (``cross_source.parquet``).
        fits: per fitted head and task, what it was fitted on and whether the fit converged.
    """

    predictions: pd.DataFrame
    cross_source: pd.DataFrame
    fits: dict[str, dict[str, Any]] = field(default_factory=dict)


def plan_predictions(classifier: ZeroShotClassifier, plan: ZeroShotPlan, prompt_sets, samples: dict[str, list],
                     salt: str, embedded: dict[str, Embedded] | None = None) -> PlanPredictions:
    """Score every task of ``plan`` with every head on the development, test and external splits.

    Args:
        classifier: the fitted zero-shot classifier (its model embeds the samples).
        plan: the validation plan.
        prompt_sets: the plan's prompt sets by finding.
        samples: preprocessed samples per split name; must hold the plan's development and evaluated splits.
        salt: the key of the ``patient`` and ``case`` pseudonyms (drawn per run, not stored).
        embedded: embeddings already computed, per split and input key (filled in as more are computed).

    Returns:
        The predictions, the cross-source predictions and the fit records.
    """
    embedded = {} if embedded is None else embedded

    def embeddings(split: str, modality: Modality) -> tuple[np.ndarray, list[int]]:
        cache = embedded.setdefault(split, {})
        if modality not in cache:
            cache[modality] = embed_samples(classifier.model, samples[split], modality)
        x, index = cache[modality]
        return x, index

    splits = [s for s in dict.fromkeys([plan.development_split, *plan.evaluated_splits]) if s in samples]
    frames, cross, fits = [], [], {}
    for task in plan.tasks:
        column = classifier.findings_.index(prompt_sets[task.finding].finding)
        per_split = {}
        for split in splits:
            x, index = embeddings(split, task.modality)
            if not index:
                continue
            rows = study_rows(samples[split], index, task.modality, split, salt)
            rows["task"], rows["finding"] = task.key, task.finding
            rows["label"] = [samples[split][i][Field.LABEL][task.label] for i in index]
            per_split[split] = (x, rows)
            logits = classifier.decision_function(x)[:, column].astype(np.float64)
            frames.append(_scored(rows, "zero_shot", logits))
        for head in plan.fitted_heads:
            fitted, fit = _fit_and_score(head, per_split, plan)
            fits.setdefault(head, {})[task.key] = fit
            frames += fitted
            if head in plan.cross_source_heads:
                cross += _cross_source_rows(head, per_split, plan)
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    cross_source = pd.concat(cross, ignore_index=True) if cross else pd.DataFrame()
    return PlanPredictions(predictions, cross_source, fits)


def with_decisions(predictions: pd.DataFrame, validation: dict[str, Any], plan: ZeroShotPlan) -> pd.DataFrame:
    """``predictions`` with a ``decision_<point>`` column per operating point: 1 when ``probability`` reaches
    the threshold chosen for its head and task on the development split, 0 below, NaN without a threshold."""
    out = predictions.copy()
    for point in plan.operating_points:
        thresholds = {}
        for head, per_split in validation["heads"].items():
            for task, analysis in per_split.get(plan.split, {}).items():
                chosen = analysis.get("operating_points", {}).get(point.name, {}).get("chosen_on_development", {})
                thresholds[(head, task)] = chosen.get("threshold")
        threshold = np.array([thresholds.get(key) for key in zip(out["head"], out["task"], strict=True)], dtype=float)
        decided = (out["probability"].to_numpy(dtype=float) >= threshold).astype(float)
        out[f"decision_{point.name}"] = np.where(np.isnan(threshold) | out["probability"].isna(), np.nan, decided)
    return out


def study_key(salt: str, study_id: str) -> str:
    """The pseudonym a prediction row names its study by (a study id can be an accession number)."""
    return patient_key(salt, f"study\0{study_id}")


def linkage(samples: dict[str, list[dict[str, Any]]], salt: str) -> pd.DataFrame:
    """Study pseudonym → study id, for the data owner's private copy: the only way back from a report's cases."""
    ids = sorted({s[Field.META]["study_id"] for split in samples.values() for s in split})
    return pd.DataFrame({"study": [study_key(salt, i) for i in ids], "study_id": ids})


def study_rows(samples: list[dict[str, Any]], index: list[int], modality: Modality, split: str,
               salt: str) -> pd.DataFrame:
    """Identifier-free description of the studies ``index`` of ``samples`` as read for ``modality``.

    ``study``, ``patient`` and ``case`` (the study as read for this modality) are keyed hashes. ``device``
    is the acquisition device of that modality; ``modalities`` the image modalities the study has (its
    availability pattern, e.g. ``cxr+ecg``).
    """
    meta = [samples[i][Field.META] for i in index]
    return pd.DataFrame({
        "split": split, "study": [study_key(salt, m["study_id"]) for m in meta],
        "patient": [patient_key(salt, m["patient_id"]) for m in meta],
        "case": [patient_key(salt, f"{m['study_id']}\0{modality}") for m in meta],
        "task": None, "finding": None, "modality": str(modality),
        "device": [_plain_text(m.get(f"{modality}_device")) for m in meta],
        **{name: [m.get(name) for m in meta] for name in STUDY_META},
        "modalities": ["+".join(m for m in IMAGE_MODALITIES if m in samples[i]) for i in index],
        "label": np.nan,
    })


def training_sources(train: pd.DataFrame, config: CohortConfig, plan: ZeroShotPlan) -> dict[str, dict[str, list[str]]]:
    """Per source column (``device``, ``site``) and task modality, the values among the pretraining studies.

    Read from the manifest rows of the train split that have the modality: the studies the pipeline
    pretrains on. Sources of an external split are therefore never among them.
    """
    out: dict[str, dict[str, list[str]]] = {}
    for by in plan.cross_source.by:
        for modality in dict.fromkeys(t.modality for t in plan.tasks):
            column = f"{modality}_device" if by == "device" else by
            present = pd.Series(False, index=train.index)
            for path_column in config.columns_of(modality) if modality in config.modalities else []:
                present |= train[path_column].notna()
            values = train.loc[present, column].dropna().astype(str) if column in train else pd.Series([], dtype=str)
            out.setdefault(by, {})[str(modality)] = sorted(values.unique())
    return out


def _scored(rows: pd.DataFrame, head: str, scores: np.ndarray) -> pd.DataFrame:
    """``rows`` with the head's name, its score (a logit) and the probability (its logistic)."""
    return rows.assign(head=head, score=scores, probability=_logistic(scores))


def _fit_and_score(head_name: str, per_split: dict[str, tuple[np.ndarray, pd.DataFrame]],
                   plan: ZeroShotPlan) -> tuple[list[pd.DataFrame], dict[str, Any]]:
    """A head fitted on the development split's known labels: out-of-fold scores there, plain scores elsewhere."""
    if plan.development_split not in per_split:
        return [], {"split": plan.development_split, "n": 0, "n_positive": 0, "n_patients": 0, "fitted": False,
                    "note": f"no {plan.development_split} studies"}
    x_dev, dev = per_split[plan.development_split]
    known = dev["label"].notna().to_numpy()
    labels = dev["label"].to_numpy(dtype=float)
    n_positive, n_known = int(np.nansum(labels)), int(known.sum())
    fit = {"split": plan.development_split, "n": n_known, "n_positive": n_positive,
           "n_patients": int(dev.loc[known, "patient"].nunique())}
    if n_positive == 0 or n_positive == n_known:
        return [], {**fit, "fitted": False, "note": f"the {plan.development_split} split lacks a class"}
    head = plan.create_head(head_name).fit(_numpy(x_dev)[known], labels[known])
    # Folds from patients in order of appearance, not from their salted pseudonyms: the same folds every run.
    groups = pd.factorize(dev["patient"])[0]
    out_of_fold = out_of_fold_scores(lambda: plan.create_head(head_name), _numpy(x_dev), labels, groups,
                                     plan.development_folds, plan.statistics.seed)
    frames = [_scored(dev, head_name, out_of_fold)]
    for split, (x, rows) in per_split.items():
        if split != plan.development_split:
            frames.append(_scored(rows, head_name, head.decision_function(_numpy(x))))
    return frames, {**fit, "fitted": True, "converged": bool(getattr(head, "converged_", True)),
                    "development_scores": f"out-of-fold, {plan.development_folds} patient-grouped folds"}


def _cross_source_rows(head_name: str, per_split: dict[str, tuple[np.ndarray, pd.DataFrame]],
                       plan: ZeroShotPlan) -> list[pd.DataFrame]:
    """The head refitted on the development studies of each source, applied to every evaluated study."""
    if plan.development_split not in per_split:
        return []
    x_dev, dev = per_split[plan.development_split]
    labels = dev["label"].to_numpy(dtype=float)
    frames = []
    for by in plan.cross_source.by:
        if by not in dev.columns:
            continue
        for source in sorted(dev[by].dropna().astype(str).unique()):
            chosen = (dev[by].astype(str) == source).to_numpy() & ~np.isnan(labels)
            positives = int(labels[chosen].sum())
            if min(positives, int(chosen.sum()) - positives) < plan.cross_source.min_class_count:
                continue
            head = plan.create_head(head_name).fit(_numpy(x_dev)[chosen], labels[chosen])
            for split in plan.evaluated_splits:
                if split in per_split:
                    x, rows = per_split[split]
                    scored = _scored(rows, head_name, head.decision_function(_numpy(x)))
                    frames.append(scored.assign(by=by, fitted_on=source, source=rows[by].astype("string")))
    return frames


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def _logistic(scores: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64)))


def _plain_text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
