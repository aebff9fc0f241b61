"""Report figures drawn with matplotlib and returned as SVG text.

SVG text rather than files: inline in ``report.html`` it keeps the report one
self-contained file (written atomically by :mod:`medfm.evaluation.report`) and
prints as vectors in the PDF.

Every figure is drawn on its own :class:`matplotlib.figure.Figure` (no pyplot, so no
global figure state and no GUI backend) and is deterministic: DejaVu Sans (bundled
with matplotlib) drawn as paths, a fixed ``svg.hashsalt``, no date in the metadata.
Drawing the same data twice gives the same bytes. Each SVG carries a ``<title>``,
an ``aria-label`` and a ``<desc>`` that states the numbers, for screen readers.
Its ids are prefixed with a digest of its content, so several figures inlined in one
page never share an id unless they are identical.

Each data item is drawn as its own SVG group whose id ends in ``-<kind>-<index>``
(``curve``, ``prevalence``, ``bin``, ``count``, ``cell``, ``empty``, ``item``), which
lets tests and readers of the file find them.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
from collections.abc import Callable, Sequence
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import matplotlib as mpl
import numpy as np
from cycler import cycler
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import blended_transform_factory

from medfm.errors import MedfmError

# Okabe & Ito (2008), distinguishable with every common colour-vision deficiency.
# Yellow last: it is the hardest to see on white.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
# Past the palette, line styles keep curves apart.
LINESTYLES = ["-", "--", "-.", ":"]
INK = "#1d2330"
MUTED = "#667085"
GRID = "#e6e9ef"
EMPTY_CELL = "#f4f6f9"
SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "RdBu"     # ColorBrewer marks it colour-blind safe

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "text.color": INK,
    "axes.labelcolor": INK,
    "axes.edgecolor": MUTED,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": GRID,
    "grid.linewidth": 0.5,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "lines.linewidth": 1.4,
    "axes.prop_cycle": cycler(color=PALETTE),
    # Glyphs as paths: the figure looks the same in every browser and PDF, whatever fonts it has.
    "svg.fonttype": "path",
    # Fixed salt: clip-path and marker ids are hashes of it and the content, so stable across runs.
    "svg.hashsalt": "medfm-report",
}

_ID_REFERENCE = re.compile(r'(\bid="|href="#|url\(#)([^")]+)')


def _styled(draw: Callable[..., str]) -> Callable[..., str]:
    """Run a drawing function under :data:`STYLE`; matplotlib reads rcParams as each artist is made."""
    @functools.wraps(draw)
    def styled(*args: Any, **kwargs: Any) -> str:
        with mpl.rc_context(STYLE):
            return draw(*args, **kwargs)
    return styled


@_styled
def roc_curves(curves: Sequence[dict[str, Any]], title: str = "ROC curves") -> str:
    """ROC curves of several tasks (or models) on one square plot, with the chance diagonal.

    Args:
        curves: one dict per curve: ``label``, ``fpr`` and ``tpr`` (equal-length
            sequences), ``auroc`` (float or None).
        title: the figure's title, also its accessible name.

    Returns:
        The SVG document as text (no XML prolog, so it can be inlined in HTML).

    Raises:
        MedfmError: no curves, or a curve whose coordinates do not pair up.
    """
    _require(curves, "roc_curves", "curves")
    fig, ax = _square_axes()
    ax.plot([0, 1], [0, 1], color=MUTED, linewidth=0.8, linestyle=":", label="chance")
    lines = []
    for i, curve in enumerate(curves):
        fpr, tpr = _paired(curve, "fpr", "tpr", "roc_curves")
        label = f"{curve['label']} (AUROC {_fmt(curve.get('auroc'))})"
        ax.plot(fpr, tpr, label=label, gid=f"curve-{i}", **_line_style(i))
        lines.append(label)
    ax.set_xlabel("1 − specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _to_svg(fig, title, "ROC curves. " + "; ".join(lines) + ".")


@_styled
def pr_curves(curves: Sequence[dict[str, Any]], title: str = "Precision–recall curves") -> str:
    """Precision–recall curves, each with its prevalence (the precision of a random score) dotted.

    Args:
        curves: one dict per curve: ``label``, ``recall`` and ``precision``
            (equal-length sequences), ``average_precision`` (float or None),
            ``prevalence`` (the share of positives, float).
        title: the figure's title, also its accessible name.

    Returns:
        The SVG document as text.

    Raises:
        MedfmError: no curves, or a curve whose coordinates do not pair up.
    """
    _require(curves, "pr_curves", "curves")
    fig, ax = _square_axes()
    lines = []
    for i, curve in enumerate(curves):
        recall, precision = _paired(curve, "recall", "precision", "pr_curves")
        prevalence = curve["prevalence"]
        label = f"{curve['label']} (AP {_fmt(curve.get('average_precision'))}, prevalence {_fmt(prevalence)})"
        style = _line_style(i)
        ax.plot(recall, precision, label=label, gid=f"curve-{i}", **style)
        ax.plot([0, 1], [prevalence, prevalence], color=style["color"], linewidth=0.8, linestyle=":",
                gid=f"prevalence-{i}")
        lines.append(label)
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (positive predictive value)")
    ax.set_title(title)
    ax.legend(loc="lower left")
    return _to_svg(fig, title, "Precision–recall curves; dotted lines give each prevalence. " + "; ".join(lines) + ".")


@_styled
def reliability_diagram(bins: Sequence[dict[str, Any]], ece: float | None, binning: str,
                        title: str = "Calibration") -> str:
    """Observed frequency against mean predicted probability per bin, and the count per bin below.

    Args:
        bins: one dict per bin: ``mean_predicted``, ``observed`` (share of positives),
            ``count``; optionally ``low`` and ``high`` (the bin's edges), which draw the
            counts as bars over the bin instead of stems at its mean. Empty bins
            (``count`` 0) are left out.
        ece: the expected calibration error, printed on the plot (None: "n/a").
        binning: how the bins were made, printed as is (e.g. "10 equal-mass bins").
        title: the figure's title, also its accessible name.

    Returns:
        The SVG document as text.

    Raises:
        MedfmError: no non-empty bin.
    """
    filled = [b for b in bins if b["count"]]
    _require(filled, "reliability_diagram", "bins with count > 0")
    fig = _figure(3.6, 3.9)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color=MUTED, linewidth=0.8, linestyle=":", label="perfect calibration")
    x = [b["mean_predicted"] for b in filled]
    y = [b["observed"] for b in filled]
    top.plot(x, y, color=PALETTE[0], linewidth=1.0, label="observed")
    for i, b in enumerate(filled):
        top.plot([b["mean_predicted"]], [b["observed"]], marker="o", markersize=3.5, color=PALETTE[0],
                 linestyle="none", clip_on=False, gid=f"bin-{i}")
        if "low" in b and "high" in b:
            bottom.add_patch(Rectangle((b["low"], 0), b["high"] - b["low"], b["count"], facecolor=PALETTE[5],
                                       edgecolor="white", linewidth=0.5, gid=f"count-{i}"))
        else:
            bottom.plot([b["mean_predicted"]] * 2, [0, b["count"]], color=PALETTE[5], linewidth=1.6,
                        solid_capstyle="butt", gid=f"count-{i}")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency", title=title)
    top.text(0.03, 0.97, f"ECE {_fmt(ece)}\n{binning}", transform=top.transAxes, va="top", ha="left",
             fontsize=7, color=INK)
    top.legend(loc="lower right")
    bottom.set_ylim(0, max(b["count"] for b in filled) * 1.1)
    bottom.set(xlabel="mean predicted probability", ylabel="count")
    bottom.grid(False, axis="x")
    summary = "; ".join(f"predicted {_fmt(b['mean_predicted'])}, observed {_fmt(b['observed'])}, n={b['count']}"
                        for b in filled)
    return _to_svg(fig, title, f"Reliability diagram, ECE {_fmt(ece)}, {binning}. Bins: {summary}.")


@_styled
def heat_map(rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float | None]],
             annotations: Sequence[Sequence[str | None]] | None = None, title: str = "",
             value_label: str = "AUROC", center: float | None = None,
             limits: tuple[float, float] | None = None) -> str:
    """A matrix of values (e.g. AUROC per training site × test device) as coloured, annotated cells.

    Args:
        rows: row labels, top to bottom.
        columns: column labels, left to right.
        values: ``len(rows)`` lists of ``len(columns)`` numbers; None (or NaN) for a
            cell without a result, drawn blank and marked "n/a".
        annotations: the text of each cell (e.g. "0.91 [0.86, 0.95]"), same shape as
            ``values``; None (the argument or a cell) prints the value to 3 decimals.
        title: the figure's title, also its accessible name.
        value_label: what the colour scale measures, shown on the colour bar.
        center: draw a diverging scale centred on this value (e.g. 0 for the change
            from a reference device); None for a sequential scale.
        limits: the value range of the colour scale; by default the data's range
            (with ``center``: symmetric around it).

    Returns:
        The SVG document as text.

    Raises:
        MedfmError: no rows or columns, or ``values`` / ``annotations`` of another shape.
    """
    _require(rows, "heat_map", "rows")
    _require(columns, "heat_map", "columns")
    _check_shape(values, len(rows), len(columns), "values")
    if annotations is not None:
        _check_shape(annotations, len(rows), len(columns), "annotations")
    grid = np.array([[math.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    norm = _heat_norm(grid, center, limits)
    cmap = mpl.colormaps[SEQUENTIAL_CMAP if center is None else DIVERGING_CMAP]

    texts = [[(annotations[r][c] if annotations is not None and annotations[r][c] is not None
               else _fmt(grid[r, c])) for c in range(len(columns))] for r in range(len(rows))]
    # Inches from characters at 7 pt: a cell fits its longest annotation and, unless they are turned, column label.
    longest_text = max(len(t) for row in texts for t in row)
    longest_column = max(len(str(c)) for c in columns)
    cell_w = max(0.55, 0.055 * longest_text + 0.1)
    turn_columns = 0.055 * longest_column + 0.1 > max(cell_w, 1.2)
    if not turn_columns:
        cell_w = max(cell_w, 0.055 * longest_column + 0.1)
    label_w = 0.06 * max(len(str(r)) for r in rows) + 0.3
    column_h = 0.045 * longest_column if turn_columns else 0.2
    fig = _figure(min(label_w + cell_w * len(columns) + 1.2, 7.0), 0.34 * len(rows) + 1.1 + column_h)
    ax = fig.add_subplot()
    descriptions = []
    for r in range(len(rows)):
        for c in range(len(columns)):
            v = grid[r, c]
            empty = math.isnan(v)
            color = EMPTY_CELL if empty else cmap(norm(v))
            ax.add_patch(Rectangle((c, r), 1, 1, facecolor=color, edgecolor="white", linewidth=1.0,
                                   hatch="///" if empty else None, gid=f"{'empty' if empty else 'cell'}-{r}-{c}"))
            text = "n/a" if empty else texts[r][c]
            ax.text(c + 0.5, r + 0.5, text, ha="center", va="center", fontsize=7,
                    color=MUTED if empty else _ink_on(color))
            descriptions.append(f"{rows[r]} × {columns[c]}: {text}")
    ax.set_xlim(0, len(columns))
    ax.set_ylim(len(rows), 0)
    ax.set_xticks(np.arange(len(columns)) + 0.5, [str(c) for c in columns])
    ax.set_yticks(np.arange(len(rows)) + 0.5, [str(r) for r in rows])
    ax.xaxis.tick_top()
    if turn_columns:
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("left")
    ax.tick_params(length=0)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    # 64 steps drawn as vectors: no bitmap inside the SVG, a quarter of the paths of the full map.
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap.resampled(64)), ax=ax, shrink=0.8, pad=0.02, aspect=25)
    bar.set_label(value_label)
    bar.outline.set_visible(False)
    bar.solids.set_rasterized(False)
    return _to_svg(fig, title or "Heat map", f"Heat map of {value_label}. " + "; ".join(descriptions) + ".")


@_styled
def forest_plot(items: Sequence[dict[str, Any]], reference: float | None, xlabel: str,
                title: str = "Subgroups") -> str:
    """Estimates with confidence intervals, one row per subgroup, against a reference line.

    Args:
        items: one dict per row, top to bottom: ``label``, ``estimate``, ``low``,
            ``high`` (each float or None), ``n`` (subgroup size). A row without an
            estimate prints "n/a"; one without an interval shows the point only.
        reference: x of the vertical reference line (e.g. the overall AUROC); None for none.
        xlabel: what the estimates are (e.g. "AUROC (95% CI)").
        title: the figure's title, also its accessible name.

    Returns:
        The SVG document as text.

    Raises:
        MedfmError: no items.
    """
    _require(items, "forest_plot", "items")
    fig = _figure(5.6, 0.28 * len(items) + 1.1)
    ax = fig.add_subplot()
    right = blended_transform_factory(ax.transAxes, ax.transData)
    descriptions = []
    for i, item in enumerate(items):
        estimate, low, high = (_number(item.get(k)) for k in ("estimate", "low", "high"))
        text = "n/a" if estimate is None else _fmt(estimate)
        if estimate is not None and low is not None and high is not None:
            text += f" [{_fmt(low)}, {_fmt(high)}]"
            ax.plot([low, high], [i, i], color=INK, linewidth=1.0, solid_capstyle="butt", gid=f"item-{i}-ci")
        if estimate is not None:
            ax.plot([estimate], [i], marker="s", markersize=4, color=PALETTE[0], linestyle="none", gid=f"item-{i}")
        ax.text(1.03, i, text, transform=right, ha="left", va="center", fontsize=7)
        descriptions.append(f"{item['label']} (n={item['n']}): {text}")
    if reference is not None:
        ax.axvline(reference, color=MUTED, linewidth=0.8, linestyle="--", gid="reference")
        ax.text(reference, -0.55, f"reference {_fmt(reference)}", ha="center", va="bottom", fontsize=7, color=MUTED)
    ax.margins(x=0.08)
    ax.set_yticks(range(len(items)), [f"{item['label']} (n={item['n']})" for item in items])
    ax.set_ylim(len(items) - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)
    ax.grid(False, axis="y")
    ax.spines["left"].set_visible(False)
    ax.set_xlabel(xlabel)
    ax.set_title(title, pad=14 if reference is not None else 6)     # room for the reference's label
    reference_text = "" if reference is None else f" Reference line at {_fmt(reference)}."
    return _to_svg(fig, title, f"Forest plot of {xlabel}.{reference_text} " + "; ".join(descriptions) + ".")


@_styled
def decision_curve(thresholds: Sequence[float], models: dict[str, Sequence[float]], treat_all: Sequence[float],
                   title: str = "Decision curve") -> str:
    """Net benefit against threshold probability for each model, treating everyone, and treating no one.

    Args:
        thresholds: threshold probabilities (x).
        models: net benefit per threshold, by model label.
        treat_all: net benefit of treating everyone at each threshold (treating no one is 0).
        title: the figure's title, also its accessible name.

    Returns:
        The SVG document as text.
    """
    _require(thresholds, "decision_curve", "thresholds")
    fig = _figure(3.9, 3.0)
    ax = fig.add_subplot()
    x = np.asarray(thresholds, dtype=float)
    ax.plot(x, np.zeros_like(x), color=MUTED, linewidth=0.8, linestyle=":", label="treat none")
    ax.plot(x, np.asarray(treat_all, dtype=float), color=MUTED, linewidth=0.8, linestyle="--", label="treat all")
    lines = []
    for i, (label, benefit) in enumerate(models.items()):
        y = np.asarray(benefit, dtype=float)
        ax.plot(x, y, marker="o", markersize=2.5, label=label, gid=f"curve-{i}", **_line_style(i))
        lines.append(f"{label}: " + ", ".join(f"{_fmt(t, 2)} {_fmt(v)}" for t, v in zip(x, y, strict=True)))
    values = np.concatenate([np.asarray(v, dtype=float) for v in models.values()] + [np.zeros(1)])
    top = max(float(np.nanmax(values)) if np.isfinite(values).any() else 0.0, 0.01)
    ax.set_ylim(-0.1 * top - 0.01, top * 1.15)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.set_title(title)
    ax.legend(loc="upper right")
    return _to_svg(fig, title, "Decision curve, net benefit by threshold. " + "; ".join(lines) + ".")


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _square_axes():
    fig = _figure(3.9, 3.9)
    ax = fig.add_subplot()
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.set_aspect("equal", adjustable="box")
    return fig, ax


def _to_svg(fig: Figure, title: str, description: str) -> str:
    """The figure as SVG text, made deterministic, accessible and safe to inline beside others."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Title": title, "Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]          # drop the XML prolog and doctype: not allowed inline in HTML
    prefix = "f" + hashlib.sha256(svg.encode("utf-8")).hexdigest()[:10]
    svg = _ID_REFERENCE.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)
    # matplotlib's default style is a '*' rule; scoped to this figure it cannot touch the page around it.
    svg = svg.replace('<style type="text/css">*{', f'<style type="text/css">#{prefix} *{{', 1)
    svg = svg.replace("<svg ", f'<svg id="{prefix}" role="img" aria-label={quoteattr(title)} ', 1)
    svg = svg.replace("</title>", f"</title>\n <desc>{escape(description)}</desc>", 1)
    return svg


def _line_style(i: int) -> dict[str, str]:
    return {"color": PALETTE[i % len(PALETTE)], "linestyle": LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]}


def _paired(curve: dict[str, Any], x_key: str, y_key: str, caller: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(curve[x_key], dtype=float)
    y = np.asarray(curve[y_key], dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise MedfmError(f"{caller}: curve {curve.get('label')!r}: {x_key} has shape {x.shape}, "
                         f"{y_key} {y.shape}; expected two equal-length, non-empty 1-D sequences")
    return x, y


def _heat_norm(grid: np.ndarray, center: float | None, limits: tuple[float, float] | None) -> Normalize:
    if limits is not None:
        return Normalize(*limits)
    finite = grid[np.isfinite(grid)]
    if finite.size == 0:
        return Normalize(0, 1)
    if center is None:
        low, high = float(finite.min()), float(finite.max())
        return Normalize(low, high if high > low else low + 1e-9)
    # Symmetric around the centre, so equal distances above and below get equally strong colours.
    half = float(np.abs(finite - center).max()) or 1e-9
    return Normalize(center - half, center + half)


def _ink_on(color) -> str:
    """Dark text on light cells, white on dark ones (WCAG relative luminance)."""
    r, g, b, _ = to_rgba(color)
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return INK if luminance > 0.25 else "white"


def _check_shape(matrix: Sequence[Sequence[Any]], n_rows: int, n_columns: int, name: str) -> None:
    shape = [len(row) for row in matrix]
    if shape != [n_columns] * n_rows:
        raise MedfmError(f"heat_map: {name} has row lengths {shape}; expected {n_rows} rows of {n_columns}")


def _require(items: Sequence[Any], caller: str, what: str) -> None:
    if len(items) == 0:
        raise MedfmError(f"{caller}: no {what} to draw")


def _number(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


def _fmt(value: Any, digits: int = 3) -> str:
    """As the report's ``fmt`` filter: "n/a" for a missing or NaN value."""
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"
