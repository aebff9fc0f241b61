"""What the validation report shows besides the numbers of ``results.json``: figures drawn from the stored
predictions, the failure cases, the participant flow, the cohort tables, the checklists and the limitations.

Everything here is a function of the run folder's artifacts, so a rebuilt report draws the same page.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfm.atomic import sha256_file, write_atomic
from medfm.cohort.describe import description_tables
from medfm.evaluation import figures, stats
from medfm.evaluation.checklists import checklist_rows, load_checklists
from medfm.evaluation.flow import flow_diagram, flow_stages
from medfm.evaluation.plan import ZeroShotPlan
from medfm.evaluation.report import FAILURES
from medfm.heads.cases import thumbnail_image
from medfm.keys import Field

SMALL = 10  # positives (or negatives) below which an interval is too wide to support a claim
SPLIT_ROLES = {"train": "pretraining (no labels)", "val": "development: heads fitted, thresholds chosen",
               "test": "test (held-out patients)", "external": "external validation (never trained on)"}


def report_context(results: dict[str, Any], plan: ZeroShotPlan, predictions: pd.DataFrame,
                   run_dir: Path) -> dict[str, Any]:
    """Everything the template needs beyond ``results.json`` itself."""
    head, point = report_head(plan), report_operating_point(plan)
    known = predictions[predictions["label"].notna() & predictions["probability"].notna()]
    failures = failure_cases(known, results["validation"], plan)
    for per_task in failures.values():
        for case in per_task["false_positives"] + per_task["false_negatives"]:
            case["thumbnail"] = _data_uri(run_dir / FAILURES / f"{case['case']}.png")
    return {
        "report_head": head, "report_point": point,
        "tasks": [{"key": t.key, "finding": t.finding, "modality": str(t.modality), "label": t.label}
                  for t in plan.tasks],
        "figures": {
            "roc": roc_figures(known, plan, results["validation"]),
            "pr": pr_figures(known, plan, results["validation"]),
            "calibration": calibration_figures(results["validation"], plan, head),
            "decision": decision_figures(results["validation"], plan, head),
            "cross_source": cross_source_figures(results["validation"].get("cross_source") or {}),
            "forest": forest_figures(results["validation"], plan, head),
        },
        "failures": failures,
        "flow_svg": flow_diagram(flow_stages(results["flow"], SPLIT_ROLES)) if results.get("flow") else None,
        "characteristics": description_tables(results["cohort_characteristics"])
        if results.get("cohort_characteristics") else [],
        "checklists": [{"name": c.name, "citation": c.citation, "rows": checklist_rows(c)} for c in load_checklists()],
        "limitations": limitations(results, plan, head),
        "methods": interval_methods(results["validation"]),
        "plan_status": plan_status(results),
        "split_roles": SPLIT_ROLES,
    }


def interval_methods(validation: dict[str, Any]) -> dict[str, str]:
    """The distinct methods behind each table's intervals, so every table can name them."""
    found: dict[str, set[str]] = {"discrimination": set(), "operating_points": set(), "subgroups": set()}
    for per_split in validation["heads"].values():
        for per_task in per_split.values():
            for analysis in per_task.values():
                for key in ("auroc", "auprc", "brier"):
                    if analysis.get(key):
                        found["discrimination"].add(analysis[key]["method"])
                for point in analysis.get("operating_points", {}).values():
                    for key in ("sensitivity", "specificity", "ppv", "npv"):
                        if point.get("test") and point["test"][key].get("method"):
                            found["operating_points"].add(point["test"][key]["method"])
                for groups in analysis.get("subgroups", {}).values():
                    found["subgroups"].update(g["auroc"]["method"] for g in groups.values() if g.get("auroc"))
    return {kind: "; ".join(sorted(methods)) or "none" for kind, methods in found.items()}


def report_head(plan: ZeroShotPlan) -> str:
    """The head the per-task figures and failure cases show: the first primary endpoint's, else the first head."""
    return plan.primary[0].head if plan.primary else plan.heads[0]


def report_operating_point(plan: ZeroShotPlan) -> str | None:
    """The operating point failure cases are judged at: the first endpoint's that names one, else the first."""
    for endpoint in [*plan.primary, *plan.secondary]:
        if endpoint.operating_point:
            return endpoint.operating_point
    return plan.operating_points[0].name if plan.operating_points else None


# -- failure analysis ---------------------------------------------------------------------------------


def failure_cases(known: pd.DataFrame, validation: dict[str, Any], plan: ZeroShotPlan) -> dict[str, dict[str, Any]]:
    """The most confident errors per task on the test split, for the report head at the report operating point.

    False positives are negatives ranked by probability, highest first; false negatives positives ranked
    lowest first; ``plan.failure_cases`` of each. Without an operating point the threshold is 0.5. Each case
    is named by its ``case`` pseudonym, never by a study or patient id.
    """
    head, point = report_head(plan), report_operating_point(plan)
    out: dict[str, dict[str, Any]] = {}
    for task in plan.tasks:
        analysis = validation["heads"][head][plan.split][task.key]
        threshold = 0.5
        if point is not None and "operating_points" in analysis:
            threshold = analysis["operating_points"][point]["chosen_on_development"]["threshold"]
        if threshold is None or not np.isfinite(threshold):
            continue
        rows = known[(known["task"] == task.key) & (known["head"] == head) & (known["split"] == plan.split)]
        called = rows["probability"] >= threshold
        wrong_pos = rows[called & (rows["label"] == 0)].sort_values(["probability", "case"], ascending=[False, True])
        wrong_neg = rows[~called & (rows["label"] == 1)].sort_values(["probability", "case"], ascending=[True, True])
        out[task.key] = {"operating_point": point or "probability 0.5", "threshold": float(threshold),
                         "false_positives": _cases(wrong_pos.head(plan.failure_cases)),
                         "false_negatives": _cases(wrong_neg.head(plan.failure_cases)),
                         "n_false_positives": len(wrong_pos), "n_false_negatives": len(wrong_neg)}
    return out


def write_failure_thumbnails(out: Path, predictions: pd.DataFrame, validation: dict[str, Any], plan: ZeroShotPlan,
                             samples: dict[str, list[dict[str, Any]]], study_ids: dict[str, str]) -> None:
    """A PNG of the model's input for each failure case the report will show, named by the case pseudonym.

    Written while the run still holds its samples (``study_ids``: study pseudonym → study id); a rebuilt
    report finds them in ``failures/``.
    """
    known = predictions[predictions["label"].notna() & predictions["probability"].notna()]
    wanted = {c["case"] for per_task in failure_cases(known, validation, plan).values()
              for c in per_task["false_positives"] + per_task["false_negatives"]}
    rows = known[known["case"].isin(wanted)].drop_duplicates("case")
    by_study = {s[Field.META]["study_id"]: s for s in samples.get(plan.split, [])}
    (out / FAILURES).mkdir(exist_ok=True)
    for case, study, modality in rows[["case", "study", "modality"]].itertuples(index=False):
        sample = by_study.get(study_ids.get(study))
        if sample is not None and modality in sample:
            image = thumbnail_image(sample[modality])
            write_atomic(out / FAILURES / f"{case}.png", lambda tmp, i=image: i.save(tmp, format="PNG"),
                         durable=False)


def _cases(rows: pd.DataFrame) -> list[dict[str, Any]]:
    columns = ["case", "study", "modality", "device", "site", "sex", "modalities", "label", "probability"]
    cases = []
    for record in rows.to_dict("records"):
        case = {c: record.get(c) for c in columns}
        case["age_band"] = _age_band(record.get("age"))
        cases.append(case)
    return cases


def _age_band(age: Any) -> str:
    """Ten-year bands, 90 and over pooled: an exact age is an identifier in a small cohort (HIPAA pools 90+)."""
    if age is None or pd.isna(age):
        return "unknown"
    decade = min(int(float(age)) // 10 * 10, 90)
    return "90+" if decade == 90 else f"{decade}-{decade + 9}"


def _data_uri(path: Path) -> str | None:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode() if path.is_file() else None


# -- figures ------------------------------------------------------------------------------------------


def _by_modality(plan: ZeroShotPlan) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for task in plan.tasks:
        grouped.setdefault(str(task.modality), []).append(task)
    return grouped


def roc_figures(known: pd.DataFrame, plan: ZeroShotPlan, validation: dict[str, Any]) -> list[tuple[str, str]]:
    """One ROC figure per modality on the test split: every task of it, every head."""
    out = []
    for modality, tasks in _by_modality(plan).items():
        curves = []
        for task in tasks:
            for head in plan.heads:
                rows = _rows(known, task.key, head, plan.split)
                curve = stats.roc_curve(rows["label"], rows["probability"])
                if curve["fpr"]:
                    auroc = validation["heads"][head][plan.split][task.key].get("auroc") or {}
                    curves.append({"label": f"{task.finding} · {head}", **curve, "auroc": auroc.get("estimate")})
        if curves:
            out.append((modality, figures.roc_curves(curves, title=f"ROC curves, {modality}, {plan.split} split")))
    return out


def pr_figures(known: pd.DataFrame, plan: ZeroShotPlan, validation: dict[str, Any]) -> list[tuple[str, str]]:
    """One precision-recall figure per modality on the test split: every task of it, every head."""
    out = []
    for modality, tasks in _by_modality(plan).items():
        curves = []
        for task in tasks:
            for head in plan.heads:
                rows = _rows(known, task.key, head, plan.split)
                curve = stats.pr_curve(rows["label"], rows["probability"])
                if curve["recall"] and rows["label"].nunique() == 2:
                    auprc = validation["heads"][head][plan.split][task.key].get("auprc") or {}
                    curves.append({"label": f"{task.finding} · {head}", **curve,
                                   "average_precision": auprc.get("estimate"),
                                   "prevalence": float(rows["label"].mean())})
        if curves:
            out.append((modality, figures.pr_curves(curves, title=f"Precision–recall, {modality}, {plan.split} split")))
    return out


def calibration_figures(validation: dict[str, Any], plan: ZeroShotPlan, head: str) -> dict[str, str]:
    """A reliability diagram per task (report head, test split), from the stored per-bin table."""
    out = {}
    for task in plan.tasks:
        analysis = validation["heads"][head][plan.split][task.key]
        ece = analysis.get("calibration", {}).get("ece")
        if ece and any(b["count"] for b in ece["bins"]):
            out[task.key] = figures.reliability_diagram(ece["bins"], ece["ece"], ece["binning"],
                                                        title=f"Calibration, {task.key}")
    return out


def decision_figures(validation: dict[str, Any], plan: ZeroShotPlan, head: str) -> dict[str, str]:
    """A decision curve per task: each head's net benefit against treating everyone and no one."""
    out = {}
    for task in plan.tasks:
        models, reference = {}, None
        for name in plan.heads:
            benefit = validation["heads"][name][plan.split][task.key].get("calibration", {}).get("net_benefit")
            if benefit and benefit["n"]:
                models[name], reference = benefit["model"], benefit
        if models:
            out[task.key] = figures.decision_curve(reference["thresholds"], models, reference["treat_all"],
                                                   title=f"Decision curve, {task.key}")
    return out


def cross_source_figures(matrices: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """A heat map per source column and task: AUROC with its interval, and the drop against the reference."""
    out: dict[str, dict[str, str]] = {}
    for by, per_task in matrices.items():
        for task, matrix in per_task.items():
            columns = [c["source"] + ("" if c["seen_in_pretraining"] else " †") for c in matrix["columns"]]
            values, notes = [], []
            for row in matrix["rows"]:
                values.append([(c["auroc"] or {}).get("estimate") for c in row["cells"]])
                notes.append([_cell_text(c) for c in row["cells"]])
            out.setdefault(by, {})[task] = figures.heat_map(
                [r["label"] for r in matrix["rows"]], columns, values, notes, title=f"AUROC by {by}, {task}",
                limits=(0.5, 1.0))
    return out


def _cell_text(cell: dict[str, Any]) -> str | None:
    auroc = cell.get("auroc")
    if not auroc or auroc.get("estimate") is None:
        return None
    text = f"{auroc['estimate']:.2f} [{auroc['low']:.2f}, {auroc['high']:.2f}]"
    drop = cell.get("drop")
    if drop and drop.get("estimate") is not None:
        text += f"\nΔ {drop['estimate']:+.2f}"
    return text


def forest_figures(validation: dict[str, Any], plan: ZeroShotPlan, head: str) -> dict[str, str]:
    """A forest plot per task: AUROC in every subgroup, against the task's overall AUROC."""
    out = {}
    for task in plan.tasks:
        analysis = validation["heads"][head][plan.split][task.key]
        items = []
        for column, groups in analysis.get("subgroups", {}).items():
            for value, group in groups.items():
                auroc = group.get("auroc") or {}
                items.append({"label": f"{column}: {value}", "estimate": auroc.get("estimate"),
                              "low": auroc.get("low"), "high": auroc.get("high"), "n": group["n"]})
        if items:
            overall = (analysis.get("auroc") or {}).get("estimate")
            out[task.key] = figures.forest_plot(items, overall, "AUROC (95% CI)", title=f"Subgroups, {task.key}")
    return out


def _rows(known: pd.DataFrame, task: str, head: str, split: str) -> pd.DataFrame:
    return known[(known["task"] == task) & (known["head"] == head) & (known["split"] == split)]


# -- data section -------------------------------------------------------------------------------------


def plan_status(results: dict[str, Any]) -> dict[str, Any]:
    """Whether the plan file at its original path still has the hash the run recorded."""
    recorded = results["plan"]["sha256"]
    path = Path(results["plan"].get("path", ""))
    current = sha256_file(path) if path.is_file() else None
    return {"path": str(path), "recorded": recorded, "current": current,
            "changed": current is not None and current != recorded, "missing": current is None}


def limitations(results: dict[str, Any], plan: ZeroShotPlan, head: str) -> list[str]:
    """Facts of this run a reader must weigh, stated from its own numbers."""
    out = []
    if results.get("cohort", {}).get("synthetic"):
        out.append("The cohort is synthetic (medfm's demo synthesizer): these figures show what the software "
                   "measures, not how the model would perform on patients.")
    heads = results["validation"]["heads"]
    small = [f"{key} ({a.get('n_positive', 0)} positives, {a.get('n_negative', 0)} negatives)"
             for key, a in heads[head][plan.split].items()
             if min(a.get("n_positive", 0), a.get("n_negative", 0)) < SMALL]
    if small:
        out.append(f"Fewer than {SMALL} studies of a class in the {plan.split} split, so wide intervals: "
                   + "; ".join(small) + ".")
    development = results.get("cohort", {}).get("splits", {}).get(plan.development_split, {})
    if development:
        out.append(f"Operating points and fitted heads come from the {plan.development_split} split alone "
                   f"({development.get('patients')} patients): thresholds may not transfer exactly.")
    unfit = [f"{h} on {t} ({f.get('note')})" for h, per_task in results.get("validation_inputs", {}).get(
        "fits", {}).items() for t, f in per_task.items() if not f.get("fitted")]
    if unfit:
        out.append("Not fitted, so not evaluated: " + "; ".join(unfit) + ".")
    open_criteria = [a for a in results["validation"]["acceptance"] if a["verdict"] == "undetermined"]
    if open_criteria:
        out.append(f"{len(open_criteria)} acceptance criteria could not be decided (no interval).")
    if not plan.external:
        out.append("No external split: every evaluated patient comes from the sites and devices of training.")
    out.append("Subgroups are exploratory and not powered for comparison; a subgroup without both classes has "
               "no AUROC.")
    out.append("One training run: the spread over training seeds is not part of these intervals.")
    return out
