"""A run's zero-shot and cross-modal retrieval summaries: per-task AUROC with every single prompt's, per device,
and image-to-own-report recall@k. The validation analyses proper are in :mod:`medfm.evaluation.validation`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medfm.evaluation.metrics import auroc
from medfm.evaluation.retrieval import cross_modal_retrieval
from medfm.heads.zeroshot import ZeroShotClassifier
from medfm.keys import IMAGE_MODALITIES, Field, Modality, report_of
from medfm.models import MultimodalModel


def zero_shot_classifier(model: MultimodalModel, plan, prompt_sets) -> ZeroShotClassifier:
    """The plan's findings as one classifier (prompt embeddings computed once)."""
    # One column per distinct finding: a finding read from two modalities (drusen on OCT
    # and on fundus photos) shares its prompt embeddings.
    unique = {prompt_sets[t.finding].finding: prompt_sets[t.finding] for t in plan.tasks}
    return ZeroShotClassifier(model, list(unique.values())).fit()


def evaluate_zero_shot(classifier: ZeroShotClassifier, samples: list[dict[str, Any]], plan, prompt_sets,
                       embedded: dict[str, tuple[torch.Tensor, list[int]]]) -> list[dict]:
    """Ensemble and single-prompt AUROC per task, overall and per acquisition device.

    ``embedded`` holds :func:`embed_samples` of ``samples`` for the modalities they have; a task whose
    modality no sample has (a small cohort's test split without CT) is listed with no AUROC.
    """
    tasks = []
    for task in plan.tasks:
        finding = prompt_sets[task.finding].finding
        x, index = embedded.get(task.modality, (None, []))
        if not index:
            tasks.append({"finding": task.finding, "modality": str(task.modality), "label": task.label,
                          "auroc": float("nan"), "n_positive": 0, "n_negative": 0,
                          "prompt_set_version": prompt_sets[task.finding].version,
                          "prompt_auroc": {**_spread(np.array([])), "per_prompt": {}}, "by_device": {}})
            continue
        labels = np.array([samples[i][Field.LABEL][task.label] for i in index])
        scores = classifier.decision_function(x)[:, classifier.findings_.index(finding)]
        single = {text: auroc(labels, s) for text, s in classifier.single_prompt_scores(x, finding).items()}
        values = np.array(list(single.values()))
        devices = np.array([str(samples[i][Field.META].get(f"{task.modality}_device")) for i in index])
        tasks.append({
            "finding": task.finding, "modality": str(task.modality), "label": task.label,
            "auroc": auroc(labels, scores),
            "n_positive": int((labels == 1).sum()), "n_negative": int((labels == 0).sum()),
            "prompt_set_version": prompt_sets[task.finding].version,
            "prompt_auroc": {**_spread(values), "per_prompt": single},
            "by_device": {d: {"n": int((devices == d).sum()), "auroc": auroc(labels[devices == d],
                                                                          scores[devices == d])}
                          for d in sorted(set(devices))},
        })
    return tasks


def _spread(values: np.ndarray) -> dict[str, float]:
    """Min, median and max of the defined values (NaN when none is: a split with one class)."""
    defined = values[np.isfinite(values)]
    if not defined.size:
        return {"min": float("nan"), "median": float("nan"), "max": float("nan")}
    return {"min": float(defined.min()), "median": float(np.median(defined)), "max": float(defined.max())}


def evaluate_retrieval(embedded: dict[str, tuple[torch.Tensor, list[int]]]) -> dict[str, Any]:
    """Image→report and report→image recall@1/5/10 per image modality, over the studies with both.

    ``embedded`` maps each input key to :func:`embed_samples`' embeddings and sample indices.
    An image is matched with its own report (``report.<image>``) where the cohort gives
    one, else with the study's report. The gallery is every such study of the split; only
    the study's own report (or image) counts as found, so another study of the same
    patient is a miss.
    """
    out = {}
    for modality in IMAGE_MODALITIES:
        report_key = report_of(modality) if report_of(modality) in embedded else Modality.REPORT
        if modality not in embedded or report_key not in embedded:
            continue
        images, index = embedded[modality]
        reports, report_index = embedded[report_key]
        report_row = {sample: row for row, sample in enumerate(report_index)}
        rows = [(row, report_row[sample]) for row, sample in enumerate(index) if sample in report_row]
        if len(rows) < 2:
            continue
        image_rows, paired_reports = map(list, zip(*rows, strict=True))
        out[str(modality)] = cross_modal_retrieval(images[image_rows], reports[paired_reports])
    return out
