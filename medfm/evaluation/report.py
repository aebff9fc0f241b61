"""The validation report: ``report.html`` and ``report.pdf`` of a run, from its stored artifacts alone.

A run folder holds ``results.json``, ``plan.yaml`` (the plan as run), ``predictions.parquet``,
``cross_source.parquet``, ``case_search.parquet`` and ``failures/*.png``. :func:`render_report` draws every
figure from the stored predictions and prints the page to PDF; :func:`rebuild_report` first recomputes every
analysis from those files and refuses to write a report whose numbers differ from ``results.json``.

Every number the page shows from ``results.json`` is wrapped in ``<span data-key="/json/pointer"
data-digits="3">``, so a test (or a reviewer) can check each against the file.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from markupsafe import Markup, escape

from medfm import __version__
from medfm.atomic import sha256_file, write_text_atomic
from medfm.config import load_config
from medfm.errors import MedfmError
from medfm.evaluation.plan import ZeroShotPlan

RESULTS = "results.json"
PLAN_COPY = "plan.yaml"
PREDICTIONS = "predictions.parquet"
CROSS_SOURCE = "cross_source.parquet"
CASE_SEARCH = "case_search.parquet"
FAILURES = "failures"
HTML, PDF = "report.html", "report.pdf"


class ReportError(MedfmError):
    """A run folder cannot give a report: an artifact is missing or altered, or recomputed numbers differ."""


class Tracked:
    """A value of ``results.json`` with its JSON pointer, so the template can show where each number came from."""

    __slots__ = ("_v", "_p")

    def __init__(self, value: Any, pointer: str = ""):
        self._v, self._p = value, pointer

    def __getitem__(self, key: Any) -> Tracked:
        return Tracked(self._v[key], f"{self._p}/{str(key).replace('~', '~0').replace('/', '~1')}")

    def __getattr__(self, key: str) -> Tracked:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self[key]
        except (KeyError, IndexError, TypeError):
            raise AttributeError(key) from None

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except (KeyError, IndexError, TypeError):
            return default

    def items(self):
        return [(k, self[k]) for k in self._v]

    def keys(self):
        return list(self._v)

    def __iter__(self):
        if isinstance(self._v, dict):
            return iter(self._v)
        return (self[i] for i in range(len(self._v)))

    def __len__(self) -> int:
        return len(self._v)

    def __bool__(self) -> bool:
        return bool(self._v)

    def __eq__(self, other: Any) -> bool:
        return self._v == (other._v if isinstance(other, Tracked) else other)

    def __hash__(self) -> int:
        return hash(self._p)

    def __str__(self) -> str:
        return str(self._v)

    @property
    def raw(self) -> Any:
        """The plain value (for a test in the template, never to print a number)."""
        return self._v


def number(value: Any, digits: int = 3) -> Markup:
    """A number of ``results.json`` as ``<span data-key=... data-digits=...>``; ``n/a`` when missing or NaN."""
    raw, pointer = (value._v, value._p) if isinstance(value, Tracked) else (value, None)
    if isinstance(raw, Undefined):
        raw = None
    text = "n/a" if raw is None or raw != raw else f"{raw:.{digits}f}"
    if pointer is None:
        return Markup(escape(text))
    return Markup(f'<span class="num" data-key="{escape(pointer)}" data-digits="{digits}">{escape(text)}</span>')


def interval(value: Any, digits: int = 3) -> Markup:
    """An interval dict as ``estimate [low, high]`` (each number tracked); ``n/a`` without an estimate."""
    if value is None or (isinstance(value, Tracked) and value.raw is None):
        return Markup("n/a")
    text = number(value["estimate"], digits)
    if value.get("low") is not None and value["low"].raw is not None:
        text += Markup(" [") + number(value["low"], digits) + Markup(", ") + number(value["high"], digits) \
            + Markup("]")
    return text


def render_report(run_dir: str | Path, results: dict[str, Any], pdf: bool = True,
                  rebuilt: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.html`` (and ``report.pdf``) of a run folder, atomically.

    Args:
        run_dir: the run folder with its stored artifacts.
        results: the run's ``results.json`` content.
        pdf: also print the page to PDF with headless Chromium.
        rebuilt: when the report is regenerated, what was checked (shown in the provenance section).

    Returns:
        ``{"html": path, "pdf": path}`` (no ``pdf`` when not asked for).
    """
    from medfm.evaluation.report_sections import report_context

    run_dir = Path(run_dir)
    plan = load_run_plan(run_dir)
    predictions = _read_table(run_dir / PREDICTIONS)
    context = report_context(results, plan, predictions, run_dir)
    env = Environment(loader=PackageLoader("medfm.evaluation", "templates"), autoescape=select_autoescape(["html"]))
    env.filters.update(num=number, ci=interval)
    html = env.get_template("validation_report.html").render(
        r=Tracked(results), plan=plan, rebuilt=rebuilt, **context)
    written = {"html": write_text_atomic(run_dir / HTML, html)}
    if pdf:
        from medfm.evaluation.pdf import render_pdf

        written["pdf"] = render_pdf(written["html"], run_dir / PDF)
    return written


def rebuild_report(run_dir: str | Path, pdf: bool = True) -> dict[str, Any]:
    """Recompute every analysis of a run from its stored artifacts, check it against ``results.json``, re-render.

    Raises:
        ReportError: an artifact is missing, ``plan.yaml`` is not the plan the run recorded, or a recomputed
            number differs from ``results.json`` (the first differences are listed; nothing is written).
    """
    from medfm.evaluation.validation import analyse

    run_dir = Path(run_dir)
    results = read_results(run_dir)
    plan = load_run_plan(run_dir, results)
    inputs = results.get("validation_inputs", {})
    recomputed = analyse(_read_table(run_dir / PREDICTIONS), plan, _read_table(run_dir / CROSS_SOURCE, True),
                         inputs.get("training_sources", {}), _read_table(run_dir / CASE_SEARCH, True))
    stored, fresh = results["validation"], json.loads(json.dumps(json_safe(recomputed)))
    differences = differing_numbers(stored, fresh)
    compared = count_numbers(stored)
    if differences:
        shown = "; ".join(f"{p}: stored {a!r}, recomputed {b!r}" for p, a, b in differences[:5])
        raise ReportError(f"{run_dir / RESULTS}: {len(differences)} of {compared} numbers differ when recomputed "
                          f"from the stored predictions ({shown}); report not rewritten")
    check = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "medfm_version": __version__,
             "numbers_compared": compared}
    written = render_report(run_dir, results, pdf=pdf, rebuilt=check)
    return {**check, **{k: str(v) for k, v in written.items()}}


def read_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise ReportError(f"{path}: no results.json: not a medfm run folder, or the run did not finish")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def load_run_plan(run_dir: Path, results: dict[str, Any] | None = None) -> ZeroShotPlan:
    """The plan a run used (its stored copy), checked against the hash the run recorded."""
    path = Path(run_dir) / PLAN_COPY
    if not path.is_file():
        raise ReportError(f"{path}: the run's copy of its validation plan is missing")
    results = results if results is not None else read_results(run_dir)
    recorded = results.get("plan", {}).get("sha256")
    if recorded != sha256_file(path):
        raise ReportError(f"{path}: its SHA-256 {sha256_file(path)[:12]}… is not the {str(recorded)[:12]}… the run "
                          "recorded: the stored plan was edited after the run")
    return load_config(path, ZeroShotPlan)


def json_safe(value: Any) -> Any:
    """NaN and infinities as null (JSON has none), numpy scalars as Python numbers, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def differing_numbers(a: Any, b: Any, pointer: str = "") -> list[tuple[str, Any, Any]]:
    """Every leaf where two JSON values differ, with its pointer (structure differences count as leaves)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += differing_numbers(a.get(key), b.get(key), f"{pointer}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differing_numbers(x, y, f"{pointer}/{i}")]
    return [] if a == b else [(pointer, a, b)]


def count_numbers(value: Any) -> int:
    if isinstance(value, dict):
        return sum(count_numbers(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_numbers(v) for v in value)
    return int(isinstance(value, int | float) and not isinstance(value, bool))


def _read_table(path: Path, optional: bool = False) -> pd.DataFrame | None:
    if not path.is_file():
        if optional:
            return None
        raise ReportError(f"{path}: missing; the report is drawn from it")
    return pd.read_parquet(path)
