"""End-to-end recipes (``pipelines/*.yaml``): cohort → split → pretrain → zero-shot → report."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from medfm import __version__
from medfm.atomic import sha256_file, write_atomic, write_bytes_atomic, write_json_atomic
from medfm.cohort import Cohort, CohortConfig, assign_splits, check_near_duplicate_leakage, load_cohort
from medfm.cohort.describe import describe_cohort
from medfm.config import Config, load_config, resolve_path
from medfm.data.cache import PreprocessCache
from medfm.data.dataset import CohortDataset, materialize, write_quarantine
from medfm.errors import CheckpointError, ConfigError
from medfm.evaluation.plan import load_plan, plan_fingerprint
from medfm.evaluation.predictions import linkage, plan_predictions, study_key, training_sources, with_decisions
from medfm.evaluation.report import (
    CASE_SEARCH,
    CROSS_SOURCE,
    PLAN_COPY,
    PREDICTIONS,
    RESULTS,
    json_safe,
    render_report,
)
from medfm.evaluation.report_sections import write_failure_thumbnails
from medfm.evaluation.retrieval import case_search_queries, case_search_summary
from medfm.evaluation.run_record import availability, flow_counts, model_summary, provenance
from medfm.evaluation.validation import analyse
from medfm.evaluation.zero_shot import evaluate_retrieval, evaluate_zero_shot, zero_shot_classifier
from medfm.heads.cases import index_samples
from medfm.heads.embedding import embed_samples
from medfm.keys import Field, encoder_of, input_keys
from medfm.models import MultimodalModel, create_model, load_model_config
from medfm.train import TrainConfig, pretrain
from medfm.train.checkpoint import STATE_JSON, has_train_state
from medfm.train.distributed import DistContext, barrier, init_distributed, shutdown_distributed
from medfm.train.loop import SUMMARY_NAME

PRIVATE = "private"


class PipelineConfig(Config):
    """Schema of ``pipelines/*.yaml``; paths are relative to the pipeline file."""

    name: str
    output_dir: str
    cohort: str
    model: str
    train: str
    plan: str
    cache_dir: str | None = None  # preprocessed tensors; default <output_dir>/cache


@dataclass
class PreparedRun:
    """What every stage after the split needs: configs, the cohort with its split column, the output folder."""

    path: Path
    pipeline: PipelineConfig
    files: dict[str, Path]
    out: Path
    model_config: Any
    train_config: TrainConfig
    cohort: Cohort
    table: pd.DataFrame


def prepare_run(path: str | Path, console: Console, ctx: DistContext | None = None) -> PreparedRun:
    """Load the configs, synthesize the cohort if it is synthetic, split it and check leakage.

    Under torchrun rank 0 alone synthesizes and writes files; the other ranks wait for it
    and then read the same cohort, so every rank gets the same split.
    """
    ctx = ctx or DistContext()
    path = Path(path)
    pipeline = load_config(path, PipelineConfig)
    files = {key: resolve_path(path, key, getattr(pipeline, key)) for key in ("cohort", "model", "train", "plan")}
    out = resolve_path(path, "output_dir", pipeline.output_dir, must_exist=False).resolve()
    model_config = load_model_config(files["model"])
    train_config = load_config(files["train"], TrainConfig)
    cohort_config = load_cohort(files["cohort"], require_manifest=False)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        synthesize_if_needed(files["cohort"], cohort_config, console)
    barrier(ctx)
    cohort = load_cohort(files["cohort"])
    split = assign_splits(cohort.table, cohort_config.split, cohort_config.patient_column, cohort_config.labels)
    table = cohort.table.assign(split=split)
    if ctx.is_main:
        _write_csv(table[[cohort_config.study_column, cohort_config.patient_column, "split"]],
                   private_dir(out) / "splits.csv")
    if cohort_config.near_duplicates is not None:
        spec = cohort_config.near_duplicates
        check_near_duplicate_leakage(table, spec.column, cohort.root, max_distance=spec.max_distance,
                                     study_column=cohort_config.study_column)
    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    return PreparedRun(path, pipeline, files, out, model_config, train_config, cohort, table)


def read_split_samples(run: PreparedRun, model: MultimodalModel, names: list[str], console: Console,
                       ctx: DistContext | None = None) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Preprocessed samples of each named split (through the shared on-disk cache); writes the quarantine.

    Returns:
        Samples per split and the number of quarantined files per split.
    """
    ctx = ctx or DistContext()
    preprocess = {m: (lambda value, m=m: model.preprocess(m, value)) for m in model.modalities}
    specs = {m: model.input_spec(m) for m in model.modalities}
    cache_dir = run.out / "cache" if run.pipeline.cache_dir is None else resolve_path(
        run.path, "cache_dir", run.pipeline.cache_dir, must_exist=False)
    cache = PreprocessCache(cache_dir)
    samples, quarantine, counts = {}, [], {}
    for name in dict.fromkeys(names):
        rows = run.table.index[run.table["split"] == name].tolist()
        dataset = CohortDataset(run.cohort, rows, preprocess, on_error=run.train_config.on_error, cache=cache,
                                specs=specs)
        samples[name], skipped = materialize(dataset, description=f"reading {name} studies")
        quarantine += skipped
        counts[name] = len(skipped)
    if ctx.is_main:
        write_quarantine(quarantine, private_dir(run.out) / "quarantine.json")
        if quarantine:
            console.print(f"[yellow]{len(quarantine)} file(s) quarantined, see "
                          f"{private_dir(run.out) / 'quarantine.json'}")
    return samples, counts


def run_pipeline(path: str | Path, fresh: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run every stage of a pipeline; returns the results also written to ``results.json``.

    Args:
        path: the pipeline YAML.
        fresh: ignore a finished or interrupted checkpoint in the output folder and
            train from scratch (otherwise training resumes where it stopped).
    """
    console = console or Console()
    started = time.perf_counter()
    timing: dict[str, float] = {}
    tick = time.perf_counter()
    run = prepare_run(path, console)
    timing["synth_s"] = time.perf_counter() - tick
    plan, prompt_sets = load_plan(run.files["plan"])
    check_plan_splits(run, plan, run.files["plan"])

    model = create_model(run.model_config, seed=run.train_config.seed)
    tick = time.perf_counter()
    # Every split: training reads train, evaluation the plan's splits, the case index holds them all.
    splits = ["train", plan.split, *sorted(set(run.table["split"]) - {"train", plan.split})]
    samples, quarantined = read_split_samples(run, model, splits, console)
    timing["read_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    checkpoint = run.out / "checkpoint"
    resume = not fresh and _same_training(checkpoint, run.model_config, run.train_config)
    summary = pretrain(model, samples["train"], run.train_config, checkpoint, resume=resume)
    timing["pretrain_s"] = time.perf_counter() - tick
    return evaluate_plan(run, model, summary, plan, run.files["plan"], prompt_sets, samples, quarantined, run.out,
                         timing, started, console)


def validate_plan(plan_path: str | Path, pipeline: str | Path | None = None, out: str | Path | None = None,
                  console: Console | None = None) -> dict[str, Any]:
    """``medfm validate``: run a validation plan against a pipeline's trained model, without training.

    The pipeline gives the cohort (and its split) and the checkpoint (``<output_dir>/checkpoint``); a plan
    may name both itself (``pipeline:``) and pin the weights (``checkpoint_sha256:``). The run folder
    (default ``<output_dir>/validation-<plan name>``) gets the same artifacts and report as ``medfm run``.

    Raises:
        ConfigError: no pipeline given, or the cohort does not produce a split the plan names.
        CheckpointError: the pipeline's model was never trained, or its weights are not the plan's.
    """
    console = console or Console()
    started = time.perf_counter()
    timing: dict[str, float] = {}
    plan_path = Path(plan_path)
    plan, prompt_sets = load_plan(plan_path)
    if pipeline is None and plan.pipeline is None:
        raise ConfigError(plan_path, "pipeline", "no pipeline to validate: give --pipeline or the plan's pipeline key")
    pipeline = pipeline or resolve_path(plan_path, "pipeline", plan.pipeline)
    tick = time.perf_counter()
    run = prepare_run(pipeline, console)
    timing["synth_s"] = time.perf_counter() - tick
    check_plan_splits(run, plan, plan_path)
    checkpoint = run.out / "checkpoint"
    if not (checkpoint / "model.safetensors").is_file():
        raise CheckpointError(f"{checkpoint}: no trained model; run `medfm run {pipeline}` first")
    weights = sha256_file(checkpoint / "model.safetensors")
    if plan.checkpoint_sha256 is not None and plan.checkpoint_sha256 != weights:
        raise CheckpointError(f"{checkpoint / 'model.safetensors'}: SHA-256 {weights[:12]}… is not the "
                              f"{plan.checkpoint_sha256[:12]}… the plan {plan_path} names")
    model = MultimodalModel.from_pretrained(checkpoint)
    tick = time.perf_counter()
    splits = [plan.development_split, *plan.evaluated_splits]
    samples, quarantined = read_split_samples(run, model, splits, console)
    timing["read_s"] = time.perf_counter() - tick
    summary_file = checkpoint / SUMMARY_NAME
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    out = Path(out) if out is not None else run.out / f"validation-{plan.name}"
    out.mkdir(parents=True, exist_ok=True)
    return evaluate_plan(run, model, summary, plan, plan_path, prompt_sets, samples, quarantined, out, timing,
                         started, console)


def check_plan_splits(run: PreparedRun, plan, plan_path: Path) -> None:
    """Refuse a plan whose test or external split the cohort does not produce, before any work."""
    produced = set(run.table["split"])
    for key, names in (("split", [plan.split]), ("external", plan.external)):
        for name in names:
            if name not in produced:
                raise ConfigError(plan_path, key, f"split {name!r} is not produced by the cohort's split "
                                  f"spec (it makes {', '.join(sorted(produced))})")


def evaluate_plan(run: PreparedRun, model: MultimodalModel, summary: dict[str, Any], plan, plan_path: Path,
                  prompt_sets, samples: dict[str, list[dict[str, Any]]], quarantined: dict[str, int], out: Path,
                  timing: dict[str, float], started: float, console: Console) -> dict[str, Any]:
    """Every evaluation stage of a trained model: zero-shot and retrieval summaries, the plan's predictions and
    analyses, the case index and its validation, ``results.json`` and the report, all in ``out``."""
    checkpoint = run.out / "checkpoint"
    tick = time.perf_counter()
    test = samples[plan.split]
    # Once, for both evaluations: every modality and report (one per study, or each image's own).
    embedded = {k: embed_samples(model, test, k) for k in input_keys(test) if encoder_of(k) in model.modalities}
    classifier = zero_shot_classifier(model, plan, prompt_sets)
    tasks = evaluate_zero_shot(classifier, test, plan, prompt_sets, embedded)
    retrieval = evaluate_retrieval(embedded)
    # A key drawn per run and never stored: pseudonyms group a patient's studies and name a case, nothing more.
    salt = secrets.token_hex(16)
    made = plan_predictions(classifier, plan, prompt_sets, samples, salt, {plan.split: embedded})
    links = linkage(samples, salt)
    sources = training_sources(run.table[run.table["split"] == "train"], run.cohort.config, plan)
    timing["zero_shot_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    index = index_samples(out / "index", model, checkpoint, run.cohort, [s for v in samples.values() for s in v])
    test_studies = [s[Field.META]["study_id"] for s in test]
    queries = case_search_queries(index, test_studies)
    queries.insert(1, "study", [study_key(salt, s) for s in queries.pop("study_id")])
    case_search = case_search_summary(queries, index)
    timing["index_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    validation = analyse(made.predictions, plan, made.cross_source, sources, queries)
    predictions = with_decisions(made.predictions, validation, plan)
    for name, table in ((PREDICTIONS, predictions), (CROSS_SOURCE, made.cross_source), (CASE_SEARCH, queries)):
        write_atomic(out / name, lambda tmp, t=table: t.to_parquet(tmp, index=False))
    plan_copy = write_bytes_atomic(out / PLAN_COPY, Path(plan_path).read_bytes())
    write_failure_thumbnails(out, predictions, validation, plan, samples, dict(links.itertuples(index=False)))
    _write_csv(links, private_dir(out) / "linkage.csv")
    timing["validation_s"] = time.perf_counter() - tick

    zero_shot: dict[str, Any] = {}
    for task in tasks:
        zero_shot.setdefault(task["modality"], {})[task["finding"]] = task
    zero_shot["macro_auroc"] = float(np.nanmean([t["auroc"] for t in tasks]))
    config = run.cohort.config
    results = {
        "pipeline": run.pipeline.name,
        "medfm_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_dir": _shown(out),
        "plan": {"name": plan.name, "version": plan.version, "split": plan.split, "path": _shown(plan_path),
                 "sha256": plan_fingerprint(plan_copy)},
        "cohort": {**_cohort_summary(run.cohort, run.table, sum(quarantined.values())),
                   "synthetic": config.synth is not None},
        "split_spec": _split_rule(config.split),
        "flow": flow_counts(run.cohort, run.table, quarantined, samples),
        "cohort_characteristics": describe_cohort(run.table, config, run.table["split"]),
        "availability": availability(samples),
        "model": model_summary(model, checkpoint),
        "pretrain": summary,
        "checkpoint": str(checkpoint),
        "zero_shot": zero_shot,
        "zero_shot_tasks": tasks,
        "validation": validation,
        "validation_inputs": {"training_sources": sources, "fits": made.fits},
        "retrieval": retrieval,
        "case_search": case_search,
        "index": {"path": str(out / "index"), "cases": len(index), "kind": index.kind},
        "timing": timing,
        "inputs": {_shown(p): _sha256(p) for p in dict.fromkeys([run.path, *run.files.values(), Path(plan_path)])},
        "provenance": provenance(run.cohort.manifest_path, {
            "synthesis": config.synth.seed if config.synth else None, "split": config.split.seed,
            "train": run.train_config.seed, "statistics": plan.statistics.seed}),
    }
    results["availability_patterns"] = sorted({p for counts in results["availability"].values() for p in counts})
    timing["total_s"] = time.perf_counter() - started
    _write_json(results, out / RESULTS)
    tick = time.perf_counter()
    written = render_report(out, json.loads((out / RESULTS).read_text()))
    console.print(f"report written in {time.perf_counter() - tick:.1f} s")
    results["report_path"] = str(written["html"])
    results["report_pdf"] = str(written["pdf"])
    return results


def private_dir(out: Path) -> Path:
    """``<run>/private``: the files that name studies or patients (split list, quarantine, pseudonym linkage).

    Everything else a run writes is free of identifiers and can be shared; this folder stays with the data
    (created owner-only).
    """
    folder = Path(out) / PRIVATE
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _split_rule(spec) -> str:
    """The cohort's split rule in one line, for the report."""
    rule = f"strategy {spec.strategy}, seed {spec.seed}, fractions {spec.fractions}"
    external = getattr(spec, "external", None)
    if external is not None:
        rule += f"; patients with any study whose {external.column} is {', '.join(external.values)} form " \
                f"the {external.name!r} split"
    return rule


def pretrain_pipeline(path: str | Path, resume: bool = False, fresh: bool = False,
                      console: Console | None = None) -> dict[str, Any]:
    """Only the pretraining stage of a pipeline: one process, or every rank under torchrun.

    Writes the checkpoint into ``<output_dir>/checkpoint``. An existing training state
    is never silently reused or overwritten: ``resume`` continues it (it must come from
    the same model and training config), ``fresh`` starts over.

    Raises:
        CheckpointError: a state exists and neither flag was given, or it belongs to another config.
    """
    console = console or Console()
    ctx = init_distributed()
    try:
        run = prepare_run(path, console, ctx)
        checkpoint = run.out / "checkpoint"
        if has_train_state(checkpoint) and not fresh:
            if not resume:
                raise CheckpointError(f"{checkpoint}: holds an earlier run's training state; "
                                      "pass --resume to continue it or --fresh to start over")
            if not _same_training(checkpoint, run.model_config, run.train_config):
                raise CheckpointError(f"{checkpoint}: training state is from another model or training config; "
                                      "pass --fresh to start over")
        model = create_model(run.model_config, seed=run.train_config.seed)
        samples, _ = read_split_samples(run, model, ["train"], console, ctx)
        summary = pretrain(model, samples["train"], run.train_config, checkpoint, resume=resume and not fresh,
                           dist_ctx=ctx)
        return {**summary, "checkpoint": str(checkpoint), "rank": ctx.rank}
    finally:
        shutdown_distributed(ctx)


def synthesize_if_needed(cohort_path: Path, config: CohortConfig, console: Console) -> None:
    """Create a synthetic cohort's files unless the same ones already exist."""
    if config.synth is None:
        return
    from medfm.cohort.synth import synthesize_cohort

    manifest = resolve_path(cohort_path, "manifest", config.manifest, must_exist=False)
    stamp = manifest.parent / "synth.json"
    wanted = {"patients": config.synth.patients, "seed": config.synth.seed, "medfm_version": __version__}
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        console.print(f"cohort files already synthesized in {manifest.parent}")
        return
    written = synthesize_cohort(manifest.parent, n_patients=config.synth.patients, seed=config.synth.seed)
    if written.resolve() != manifest.resolve():
        raise ConfigError(cohort_path, "manifest", f"synthesizer wrote {written}, cohort names {manifest}")
    _write_json(wanted, stamp)


def _same_training(checkpoint: Path, model_config, train_config: TrainConfig) -> bool:
    """True if ``checkpoint`` holds state of a run with the same model and training config."""
    state = checkpoint / STATE_JSON
    if not state.is_file():
        return False
    record = json.loads(state.read_text())
    saved_model = json.loads((checkpoint / "config.json").read_text()).get("model")
    return (record["progress"].get("config") == train_config.model_dump(mode="json")
            and saved_model == model_config.resolved().model_dump(mode="json"))


def _cohort_summary(cohort: Cohort, table: pd.DataFrame, quarantined: int) -> dict[str, Any]:
    cfg = cohort.config
    return {
        "name": cfg.name,
        "patients": int(table[cfg.patient_column].nunique()),
        "studies": len(table),
        "sites": sorted(map(str, table["site"].unique())) if "site" in table else [],
        "splits": {name: {"patients": int(g[cfg.patient_column].nunique()), "studies": len(g)}
                   for name, g in sorted(table.groupby("split"), key=lambda item: _split_order(item[0]))},
        "quarantined": quarantined,
    }


def _split_order(name: str) -> tuple[int, str]:
    """train, val, test, then the others (external splits) by name: the order a reader follows the data."""
    return ({"train": 0, "val": 1, "test": 2}.get(name, 3), name)


def _shown(path: Path) -> str:
    """A path as a user would type it: relative to the working folder when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _write_json(data: Any, path: Path) -> None:
    write_json_atomic(path, json_safe(data), default=_json_default, allow_nan=False)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


