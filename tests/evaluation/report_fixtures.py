"""A run folder made without a model: predictions drawn at random, then every artifact the report reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from medfm.atomic import sha256_file
from medfm.evaluation.plan import load_plan
from medfm.evaluation.report import json_safe
from medfm.evaluation.report_sections import failure_cases
from medfm.evaluation.validation import analyse

from ..conftest import REPO

PLAN = {
    "name": "report-test", "version": "1", "intended_use": "Flag <drusen> & cardiomegaly for review (test).",
    "split": "test", "development_split": "val", "external": ["external"],
    "heads": ["zero_shot", "linear_probe"],
    "tasks": [{"finding": "cardiomegaly", "modality": "cxr", "label": "cardiomegaly",
               "prompts": str(REPO / "configs/prompts/cardiomegaly.yaml")},
              {"finding": "drusen", "modality": "oct", "label": "drusen",
               "prompts": str(REPO / "configs/prompts/drusen.yaml")}],
    "operating_points": [{"name": "sens90", "rule": "sensitivity", "target": 0.9},
                         {"name": "youden", "rule": "youden"}],
    "primary": [{"task": "cardiomegaly/cxr", "metric": "auroc"}],
    "secondary": [{"task": "cardiomegaly/cxr", "metric": "specificity", "operating_point": "sens90"},
                  {"task": "drusen/oct", "metric": "auroc", "head": "linear_probe"}],
    "subgroups": {"by": ["sex", "site", "device", "modalities"], "age_bands": [0, 50, 70, 200]},
    "statistics": {"resamples": 300},
    "acceptance": [{"endpoint": {"task": "cardiomegaly/cxr", "metric": "auroc"}, "bound": "lower", "at_least": 0.6},
                   {"endpoint": {"task": "drusen/oct", "metric": "auroc", "head": "linear_probe"},
                    "bound": "lower", "at_least": 0.99}],
    "cross_source": {"by": ["device", "site"], "heads": ["zero_shot", "linear_probe"]},
    "failure_cases": 2,
}
DEVICES = {"cxr": ["Alpha DX", "Beta CR"], "oct": ["Gamma OCT", "Delta OCT"]}
UNSEEN = {"cxr": "Zeta DX", "oct": "Delta OCT"}


def _key(text: str) -> str:
    """A stand-in for a keyed-hash pseudonym: 20 hex characters."""
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _rows(rng: np.random.Generator, patients: int = 150) -> pd.DataFrame:
    rows = []
    for p in range(patients):
        split = ("val", "test", "test", "external")[p % 4]
        site, sex, age = f"site_{'ab'[p % 2]}", "FM"[p // 2 % 2], 25 + p % 70
        for task, modality in (("cardiomegaly/cxr", "cxr"), ("drusen/oct", "oct")):
            if modality == "oct" and p % 5 == 0:
                continue  # not every patient has an OCT: availability patterns differ
            device = UNSEEN[modality] if split == "external" else DEVICES[modality][p % 2]
            label = float(rng.random() < 0.4)
            shift = 0.5 if device == UNSEEN[modality] else 1.3  # the unseen device separates worse
            for head, noise in (("zero_shot", 1.0), ("linear_probe", 0.8)):
                score = rng.normal(shift * label, noise)
                rows.append({"split": split, "study": _key(f"study {p}"), "patient": f"pk{p:04d}",
                             "case": f"c{p:04d}{modality}", "task": task, "finding": task.split("/")[0],
                             "modality": modality, "device": device, "site": site, "sex": sex, "age": age,
                             "study_date": "2024-01-01", "modalities": "cxr" if p % 5 == 0 else "cxr+oct",
                             "label": label, "head": head, "score": score, "probability": 1 / (1 + np.exp(-score))})
    return pd.DataFrame(rows)


def _cross_source(predictions: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    frames = []
    evaluated = predictions[(predictions["head"] == "linear_probe") & predictions["split"].isin(["test", "external"])]
    for by in ("device", "site"):
        development = predictions[predictions["split"] == "val"]
        for task, rows in evaluated.groupby("task"):
            for source in sorted(development.loc[development["task"] == task, by].unique()):
                score = rows["score"].to_numpy() + rng.normal(0, 0.5, len(rows))
                frames.append(rows.assign(score=score, probability=1 / (1 + np.exp(-score)), by=by, fitted_on=source,
                                          source=rows[by].astype("string")))
    return pd.concat(frames, ignore_index=True)


def make_run(folder: Path, seed: int = 0) -> dict:
    """Write a complete run folder into ``folder``; returns its results."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    original_plan = folder / "original_plan.yaml"
    original_plan.write_text(yaml.safe_dump(PLAN))
    (folder / "plan.yaml").write_bytes(original_plan.read_bytes())
    plan = load_plan(folder / "plan.yaml")[0]
    predictions = _rows(rng)
    cross = _cross_source(predictions, rng)
    queries = pd.DataFrame({"modality": "cxr", "study": [_key(f"study {p}") for p in range(1, 150, 4)],
                            "patient": [f"pk{p:04d}" for p in range(1, 150, 4)], "findings": "",
                            "precision@10": rng.uniform(0.4, 1, 38), "chance": 0.5,
                            "average_precision": rng.uniform(0.3, 1, 38),
                            "precision@10.cardiomegaly": np.nan, "average_precision.cardiomegaly": np.nan})
    predictions.to_parquet(folder / "predictions.parquet", index=False)
    cross.to_parquet(folder / "cross_source.parquet", index=False)
    queries.to_parquet(folder / "case_search.parquet", index=False)
    sources = {"device": {"cxr": DEVICES["cxr"], "oct": DEVICES["oct"]}, "site": {"cxr": ["site_a", "site_b"],
                                                                               "oct": ["site_a", "site_b"]}}
    validation = analyse(predictions, plan, cross, sources, queries)
    for per_task in failure_cases(predictions, validation, plan).values():
        for case in per_task["false_positives"] + per_task["false_negatives"]:
            (folder / "failures").mkdir(exist_ok=True)
            pixels = rng.integers(0, 255, (48, 48), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "failures" / f"{case['case']}.png")
    splits = {s: {"patients": int(g["patient"].nunique()), "studies": int(g["study"].nunique())}
              for s, g in predictions.groupby("split")}
    results = {
        "pipeline": "report-test", "medfm_version": "0.1.0", "created": "2026-12-06T12:00:00+00:00",
        "run_dir": str(folder),
        "plan": {"name": plan.name, "version": plan.version, "split": "test", "path": str(original_plan),
                 "sha256": sha256_file(folder / "plan.yaml")},
        "cohort": {"name": "synthetic-test", "patients": 150, "studies": 150, "sites": ["site_a", "site_b"],
                   "splits": {"train": {"patients": 300, "studies": 420}, **splits}, "quarantined": 0,
                   "synthetic": True},
        "split_spec": "strategy patient, seed 0",
        "flow": {"manifest": {"patients": 460, "studies": 590},
                 "rules": [{"name": "adults", "rule": "age >= 18", "excluded_patients": 10, "excluded_studies": 20}],
                 "included": {"patients": 450, "studies": 570},
                 "splits": [{"name": "train", "patients": 300, "studies": 420, "quarantined_studies": 1,
                             "analysed": {"cxr": 419}},
                            *({"name": s, **c, "quarantined_studies": 0, "analysed": {"cxr": c["studies"]}}
                              for s, c in splits.items())]},
        "cohort_characteristics": {"cohort": "synthetic-test", "groupings": {"overall": {"all": {
            "patients": 450, "studies": 570, "labels": {"cardiomegaly": {"positive": 200, "known": 570, "pct": 35.1}},
            "modalities": {"cxr": {"n": 570, "pct": 100.0}}}}}},
        "availability": {"test": {"cxr": 15, "cxr+oct": 60}, "external": {"cxr": 8, "cxr+oct": 30}},
        "availability_patterns": ["cxr", "cxr+oct"],
        "model": {"name": "tiny", "embed_dim": 32, "parameters": 12345, "trainable_parameters": 2345,
                  "checkpoint_sha256": "ab" * 32,
                  "encoders": {"cxr": {"name": "vit2d", "parameters": 1000, "input": "shape [1, 64, 64]"}}},
        "pretrain": {"epochs": 2, "steps": 10, "history": [{"epoch": 1, "loss": 3.2, "temperature": 0.07},
                                                           {"epoch": 2, "loss": 2.9, "temperature": 0.06}]},
        "zero_shot_tasks": [{"finding": "cardiomegaly", "modality": "cxr", "auroc": 0.8, "prompt_set_version": "1",
                             "prompt_auroc": {"min": 0.7, "median": 0.75, "max": 0.81}}],
        "validation": validation,
        "validation_inputs": {"training_sources": sources, "fits": {"linear_probe": {
            "cardiomegaly/cxr": {"fitted": True, "n": 40, "n_positive": 15, "n_patients": 40, "converged": True,
                                 "development_scores": "out-of-fold, 5 patient-grouped folds"},
            "drusen/oct": {"fitted": False, "n": 30, "n_positive": 0, "n_patients": 30,
                           "note": "the val split lacks a class"}}}},
        "retrieval": {"cxr": {"image_to_report": {"n": 40, "recall@1": 0.1, "recall@5": 0.3, "recall@10": 0.5,
                                                  "chance@10": 0.25},
                              "report_to_image": {"n": 40, "recall@10": 0.45}}},
        "timing": {"total_s": 12.5},
        "inputs": {"pipeline.yaml": "cd" * 32},
        "provenance": {"medfm_version": "0.1.0", "python": "3.11.7", "platform": "Linux x86_64",
                       "packages": {"numpy": "2.0"}, "git": {"commit": "0" * 40, "dirty": False},
                       "manifest_sha256": "ef" * 32, "seeds": {"split": 0, "train": 0, "statistics": 0}},
    }
    results = json.loads(json.dumps(json_safe(results), allow_nan=False))
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    return results
