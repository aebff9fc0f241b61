"""Cross-device and cross-site matrices: where a head was fitted (or the model pretrained) against where it is tested.

One matrix per source column (``device``, ``site``) and task. Columns are the sources of the evaluated studies
(the test split and the external splits). Rows:

- ``zero_shot``: the pretrained model, no fitting; its in-distribution reference pools the evaluated studies
  from sources seen in pretraining, so an unseen device's cell shows the drop on acquisition conditions the
  model never saw;
- each fitted head, fitted on every development study; reference: the sources it was fitted on;
- each fitted head refitted on one source's development studies; reference: that source's own column (the
  in-distribution cell on held-out patients).

Each cell is the AUROC with its interval by the plan's method; its drop against the row's reference comes from
a bootstrap that resamples the patients of both together (:func:`stats.subset_bootstrap_difference`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medfm.evaluation import stats
from medfm.evaluation.plan import ZeroShotPlan

ZERO_SHOT = "zero_shot"


def cross_source_matrices(known: pd.DataFrame, cross: pd.DataFrame, plan: ZeroShotPlan,
                          training_sources: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, Any]]:
    """``{by: {task: {"columns": [...], "rows": [...]}}}`` from predictions with known labels.

    Args:
        known: the plan's predictions (known labels only), with ``device`` and ``site`` columns.
        cross: the cross-source predictions (``by``, ``fitted_on``, ``source`` columns), known labels only.
        plan: the validation plan (its ``cross_source`` section, statistics, splits).
        training_sources: per source column and modality, the values seen in pretraining.
    """
    out: dict[str, dict[str, Any]] = {}
    evaluated = known[known["split"].isin(plan.evaluated_splits)] if len(known) else known
    for by in plan.cross_source.by:
        if by not in evaluated.columns:
            continue
        for task in plan.tasks:
            rows = evaluated[evaluated["task"] == task.key]
            rows = rows[rows[by].notna()]
            if not len(rows):
                continue
            seen = training_sources.get(by, {}).get(str(task.modality), [])
            sources = sorted(rows[by].astype(str).unique())
            matrix_rows = []
            for head in plan.cross_source_heads:
                of_head = rows[rows["head"] == head]
                if head == ZERO_SHOT:
                    matrix_rows.append(_row("pretrained model (zero-shot)", head, None, of_head, by, sources,
                                            seen, "sources seen in pretraining", plan))
                    continue
                development = known[(known["task"] == task.key) & (known["head"] == head)
                                    & (known["split"] == plan.development_split)]
                fitted = sorted(development[by].dropna().astype(str).unique()) if by in development else []
                matrix_rows.append(_row(f"{head} fitted on every source", head, "all", of_head, by, sources,
                                        fitted, "sources it was fitted on", plan))
                refits = cross[(cross["by"] == by) & (cross["task"] == task.key) & (cross["head"] == head)] \
                    if len(cross) else cross
                for source in sorted(refits["fitted_on"].unique()) if len(refits) else []:
                    one = refits[refits["fitted_on"] == source]
                    matrix_rows.append(_row(f"{head} fitted on {source}", head, source, one, "source", sources,
                                            [source], "its own source", plan))
            out.setdefault(by, {})[task.key] = {
                "columns": [{"source": s, "seen_in_pretraining": s in seen,
                             "splits": sorted(rows.loc[rows[by].astype(str) == s, "split"].unique())}
                            for s in sources],
                "rows": matrix_rows,
            }
    return out


def _row(label: str, head: str, fitted_on: str | None, rows: pd.DataFrame, column: str, sources: list[str],
         reference: list[str], reference_label: str, plan: ZeroShotPlan) -> dict[str, Any]:
    """One matrix row: a cell per source, the pooled in-distribution reference, each cell's drop against it."""
    settings = plan.statistics
    source = rows[column].astype(str).to_numpy() if len(rows) else np.array([], dtype=str)
    labels = rows["label"].to_numpy(dtype=float)
    probs = rows["probability"].to_numpy(dtype=float)
    patients = rows["patient"].to_numpy(dtype=str)
    in_reference = np.isin(source, reference)
    reference_cell = _cell(labels[in_reference], probs[in_reference], patients[in_reference], plan)
    cells = []
    for value in sources:
        chosen = source == value
        cell = _cell(labels[chosen], probs[chosen], patients[chosen], plan)
        same = bool(in_reference[chosen].all()) and int(in_reference.sum()) == int(chosen.sum())
        if cell["auroc"] is not None and reference_cell["auroc"] is not None and not same and chosen.any():
            cell["drop"] = stats.subset_bootstrap_difference(
                labels, probs, patients, chosen, in_reference, n_resamples=settings.resamples,
                level=settings.level, seed=settings.seed)
        cell["in_distribution"] = bool(value in reference)
        cells.append(cell)
    return {"label": label, "head": head, "fitted_on": fitted_on, "reference": reference,
            "reference_label": reference_label, "reference_cell": reference_cell, "cells": cells}


def _cell(labels: np.ndarray, probs: np.ndarray, patients: np.ndarray, plan: ZeroShotPlan) -> dict[str, Any]:
    """AUROC with its interval (None without both classes), and the counts behind it."""
    from medfm.evaluation.validation import discrimination_interval

    n_positive = int(np.nansum(labels))
    cell: dict[str, Any] = {"n": len(labels), "n_positive": n_positive,
                            "n_patients": int(len(np.unique(patients)))}
    if n_positive == 0 or n_positive == len(labels):
        return {**cell, "auroc": None}
    return {**cell, "auroc": discrimination_interval("auroc", labels, probs, patients, plan)}
