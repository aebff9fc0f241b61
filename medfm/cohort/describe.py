"""Cohort characteristics ("Table 1"): overall, per split, per site and per device.

Counting rules, so the numbers can be checked by hand:

- **Patients / studies**: distinct patient ids / rows of the group.
- **Age** (column ``age``): per patient, the age at their first listed study in the group;
  median [Q1, Q3] over patients with a known age.
- **Sex** (column ``sex``): per patient, the value at their first listed study; counts and
  % of the group's patients, a missing value counted as ``unknown``.
- **Labels**: per study; positive = value 1, unknown = NaN, anything else negative;
  prevalence = positive / known.
- **Modalities**: per study; available when any of the modality's columns is non-empty.

A patient seen at two sites (or on two devices) counts in both groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from medfm.atomic import write_json_atomic, write_text_atomic
from medfm.cohort.manifest import CohortConfig

AGE_COLUMN = "age"
SEX_COLUMN = "sex"
SITE_COLUMN = "site"
OVERALL = "overall"


def describe_cohort(table: pd.DataFrame, config: CohortConfig, split: pd.Series | None = None) -> dict[str, Any]:
    """Characteristics of a cohort, overall and per group.

    Args:
        table: the cohort's manifest table (after inclusion rules).
        config: the cohort config: patient/study columns, labels, modalities, metadata.
        split: split names aligned with ``table``'s index (e.g. from ``assign_splits``);
            adds a ``split`` grouping.

    Returns:
        ``{"cohort": name, "groupings": {grouping: {group: stats}}}`` where grouping is
        ``overall`` (one group, ``all``), ``split``, ``site`` and each ``*_device``
        column of ``config.metadata`` present in the table; ``stats`` as in
        :func:`group_characteristics`. JSON-serialisable.
    """
    groupings: dict[str, dict[str, dict[str, Any]]] = {OVERALL: {"all": group_characteristics(table, config)}}
    by: dict[str, pd.Series] = {}
    if split is not None:
        by["split"] = split.reindex(table.index)
    for column in config.metadata:
        if column in table.columns and (column == SITE_COLUMN or column.endswith("_device")):
            by[column] = table[column]
    for name, values in by.items():
        values = values.astype("string").fillna("unknown")
        groupings[name] = {str(value): group_characteristics(rows, config)
                           for value, rows in table.groupby(values, sort=True)}
    return {"cohort": config.name, "groupings": groupings}


def group_characteristics(rows: pd.DataFrame, config: CohortConfig) -> dict[str, Any]:
    """Patients, studies, age, sex, label prevalence and modality availability of ``rows``."""
    patients = rows.drop_duplicates(config.patient_column)  # each patient's first listed study
    n_patients = len(patients)
    stats: dict[str, Any] = {"patients": n_patients, "studies": len(rows)}
    if AGE_COLUMN in rows.columns:
        age = pd.to_numeric(patients[AGE_COLUMN], errors="coerce").dropna()
        stats["age"] = {"n": len(age), "median": _num(age.median()), "q1": _num(age.quantile(0.25)),
                        "q3": _num(age.quantile(0.75))}
    if SEX_COLUMN in rows.columns:
        sex = patients[SEX_COLUMN].astype("string").fillna("unknown").value_counts().sort_index()
        stats["sex"] = {str(k): {"n": int(v), "pct": _pct(v, n_patients)} for k, v in sex.items()}
    stats["labels"] = {}
    for label in config.labels:
        values = pd.to_numeric(rows[label], errors="coerce")
        known, positive = int(values.notna().sum()), int((values == 1).sum())
        stats["labels"][label] = {"positive": positive, "known": known, "pct": _pct(positive, known)}
    stats["modalities"] = {}
    for modality in config.modalities:
        columns = config.columns_of(modality)
        present = pd.Series(False, index=rows.index)
        for column in columns:
            present |= rows[column].notna() & (rows[column].astype("string").str.strip() != "").fillna(False)
        stats["modalities"][str(modality)] = {"n": int(present.sum()), "pct": _pct(present.sum(), len(rows))}
    return stats


def write_description(desc: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``cohort_description.json`` and ``cohort_description.md`` atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"json": write_json_atomic(out_dir / "cohort_description.json", desc),
            "markdown": write_text_atomic(out_dir / "cohort_description.md", description_markdown(desc))}


def description_markdown(desc: dict[str, Any]) -> str:
    """One markdown table per grouping (split, site, each device), each with the overall column first."""
    parts = [f"# Cohort {desc['cohort']}\n"]
    for title, header, body in description_tables(desc):
        parts.append(f"## {title}\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        parts.extend("| " + " | ".join(row) + " |" for row in body)
        parts.append("")
    return "\n".join(parts)


def format_description(desc: dict[str, Any]) -> str:
    """The same tables as plain text with aligned columns, for a terminal."""
    parts = [f"Cohort {desc['cohort']}"]
    for title, header, body in description_tables(desc):
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        parts += ["", title, _text_row(header, widths), "  ".join("-" * w for w in widths),
                  *(_text_row(row, widths) for row in body)]
    return "\n".join(parts) + "\n"


def _text_row(row: list[str], widths: list[int]) -> str:
    cells = zip(row, widths, strict=True)
    return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(cells))


def description_tables(desc: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` per grouping, overall column first: what every rendering prints."""
    groupings = desc["groupings"]
    overall = groupings[OVERALL]["all"]
    names = [g for g in groupings if g != OVERALL] or [OVERALL]
    tables = []
    for name in names:
        groups = {"Overall": overall} | ({} if name == OVERALL else groupings[name])
        title = "Overall" if name == OVERALL else f"By {name}"
        header = ["Characteristic", *groups]
        tables.append((title, header, _rows(list(groups.values()), overall)))
    return tables


def _rows(groups: list[dict[str, Any]], overall: dict[str, Any]) -> list[list[str]]:
    rows = [["Patients", *(str(g["patients"]) for g in groups)], ["Studies", *(str(g["studies"]) for g in groups)]]
    if "age" in overall:
        rows.append(["Age, median [IQR]", *(_age(g.get("age")) for g in groups)])
    if "sex" in overall:
        for sex in overall["sex"]:
            rows.append([f"Sex {sex}, n (%)", *(_n_pct(g["sex"].get(sex)) for g in groups)])
    for label in overall["labels"]:
        rows.append([f"{label}, n/known (%)", *(_prevalence(g["labels"][label]) for g in groups)])
    for modality in overall["modalities"]:
        rows.append([f"{modality} available, n (%)", *(_n_pct(g["modalities"][modality]) for g in groups)])
    return rows


def _age(age: dict[str, Any] | None) -> str:
    if not age or age["n"] == 0:
        return "-"
    return f"{_fmt(age['median'])} [{_fmt(age['q1'])}, {_fmt(age['q3'])}]"


def _n_pct(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "0 (0.0%)"
    return f"{cell['n']} ({_fmt_pct(cell['pct'])})"


def _prevalence(cell: dict[str, Any]) -> str:
    return f"{cell['positive']}/{cell['known']} ({_fmt_pct(cell['pct'])})"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _fmt_pct(pct: float | None) -> str:
    return "-" if pct is None else f"{pct:.1f}%"


def _pct(n: float, total: float) -> float | None:
    return round(100.0 * float(n) / total, 1) if total else None


def _num(value: float) -> float | None:
    return None if pd.isna(value) else float(value)
