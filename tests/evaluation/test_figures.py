"""Report figures: valid SVG, one group per data item, identical bytes on a redraw, accessible names."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import matplotlib as mpl
import numpy as np
import pytest

from medfm.errors import MedfmError
from medfm.evaluation import figures

SVG = "{http://www.w3.org/2000/svg}"


def roc_input():
    x = np.linspace(0, 1, 25)
    return [{"label": "effusion", "fpr": x, "tpr": x**0.4, "auroc": 0.83},
            {"label": "cardiomegaly", "fpr": x.tolist(), "tpr": (x**0.6).tolist(), "auroc": 0.71},
            {"label": "edema", "fpr": x, "tpr": x**0.9, "auroc": None}]


def pr_input():
    recall = np.linspace(1, 0, 20)
    return [{"label": "effusion", "recall": recall, "precision": 0.2 + 0.8 * (1 - recall), "average_precision": 0.6,
             "prevalence": 0.2},
            {"label": "edema", "recall": recall, "precision": 0.1 + 0.5 * (1 - recall), "average_precision": 0.35,
             "prevalence": 0.1}]


def bins_input():
    bins = [{"mean_predicted": (i + 0.5) / 10, "observed": (i + 0.4) / 10, "count": 50 - 4 * i,
             "low": i / 10, "high": (i + 1) / 10} for i in range(10)]
    bins[7] = {"mean_predicted": None, "observed": None, "count": 0, "low": 0.7, "high": 0.8}
    return bins


HEAT_ROWS = ["site A", "site B", "site C"]
HEAT_COLUMNS = ["GE Revolution", "Siemens SOMATOM Force", "Philips IQon"]
HEAT_VALUES = [[0.91, 0.85, None], [0.80, 0.88, 0.70], [0.93, float("nan"), 0.60]]
HEAT_ANNOTATIONS = [[None if v is None or v != v else f"{v:.2f} [{v - 0.05:.2f}, {v + 0.04:.2f}]" for v in row]
                    for row in HEAT_VALUES]

FOREST_ITEMS = [{"label": "female", "estimate": 0.90, "low": 0.85, "high": 0.94, "n": 120},
                {"label": "male", "estimate": 0.86, "low": 0.80, "high": 0.90, "n": 130},
                {"label": "age ≥ 80", "estimate": None, "low": None, "high": None, "n": 3},
                {"label": "age < 40", "estimate": 0.70, "low": None, "high": None, "n": 12}]

# name -> (draw, the group kinds expected and how many of each)
CASES = {
    "roc": (lambda: figures.roc_curves(roc_input()), {"curve": 3}),
    "pr": (lambda: figures.pr_curves(pr_input()), {"curve": 2, "prevalence": 2}),
    "reliability": (lambda: figures.reliability_diagram(bins_input(), 0.041, "10 equal-width bins"),
                    {"bin": 9, "count": 9}),
    "reliability_stems": (lambda: figures.reliability_diagram(
        [{k: v for k, v in b.items() if k not in ("low", "high")} for b in bins_input()], None, "10 equal-mass bins"),
        {"bin": 9, "count": 9}),
    "heat_map": (lambda: figures.heat_map(HEAT_ROWS, HEAT_COLUMNS, HEAT_VALUES, HEAT_ANNOTATIONS,
                                          title="AUROC by site × device"), {"cell": 7, "empty": 2}),
    "heat_map_drop": (lambda: figures.heat_map(HEAT_ROWS, HEAT_COLUMNS, [[None if v is None else v - 0.85 for v in row]
                                                                         for row in HEAT_VALUES],
                                               title="Drop from reference", value_label="ΔAUROC", center=0.0),
                      {"cell": 7, "empty": 2}),
    "forest": (lambda: figures.forest_plot(FOREST_ITEMS, reference=0.88, xlabel="AUROC (95% CI)"), {"item": 3}),
}


def groups(svg: str, kind: str) -> list[str]:
    """Ids of the groups drawn for each data item of one kind (see the figures module docstring)."""
    return re.findall(rf'<g id="f[0-9a-f]{{10}}-({kind}-[0-9-]+)">', svg)


@pytest.fixture(scope="module")
def drawn():
    return {name: draw() for name, (draw, _) in CASES.items()}


@pytest.mark.parametrize("name", CASES)
def test_figure_is_valid_svg_with_a_title(drawn, name):
    root = ET.fromstring(drawn[name])
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img" and root.get("aria-label")
    # The accessible name is the first child; the description gives the numbers.
    assert root[0].tag == f"{SVG}title" and root[0].text == root.get("aria-label")
    assert root[1].tag == f"{SVG}desc" and re.search(r"\d\.\d\d", root[1].text)
    assert not drawn[name].startswith("<?xml"), "no prolog: the SVG is inlined in HTML"
    assert "<image" not in drawn[name], "vectors only, no embedded bitmap"


@pytest.mark.parametrize("name", CASES)
def test_figure_draws_one_group_per_item(drawn, name):
    _, expected = CASES[name]
    for kind, count in expected.items():
        assert len(groups(drawn[name], kind)) == count, kind


def test_heat_map_cells_are_where_the_values_are(drawn):
    svg = drawn["heat_map"]
    assert sorted(groups(svg, "empty")) == ["empty-0-2", "empty-2-1"]
    assert "cell-1-2" in groups(svg, "cell")
    assert "0.91 [0.86, 0.95]" in svg    # the description carries the annotations


@pytest.mark.parametrize("name", CASES)
def test_figure_is_byte_identical_when_drawn_again(drawn, name):
    draw, _ = CASES[name]
    assert draw() == drawn[name]


def test_figures_do_not_touch_global_matplotlib_state(drawn):
    before = dict(mpl.rcParams)
    figures.roc_curves(roc_input())
    assert dict(mpl.rcParams) == before


def test_ids_are_unique_within_and_across_figures(drawn):
    seen: set[str] = set()
    for svg in drawn.values():
        ids = re.findall(r'\bid="([^"]+)"', svg)
        assert len(ids) == len(set(ids))
        assert not seen & set(ids)
        seen |= set(ids)
        # Every reference points at an id of the same figure.
        refs = set(re.findall(r'(?:href="#|url\(#)([^")]+)', svg))
        assert refs <= set(ids)


def test_labels_from_data_are_escaped():
    hostile = [{"label": '<script>alert("x")</script> -- & "q"', "fpr": [0, 1], "tpr": [0, 1], "auroc": 0.5}]
    svg = figures.roc_curves(hostile, title='<b onload="x">ROC</b>')
    root = ET.fromstring(svg)
    assert root.get("aria-label") == '<b onload="x">ROC</b>'
    assert "<script" not in svg and "<b " not in svg


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(MedfmError, match="roc_curves: no curves"):
        figures.roc_curves([])
    with pytest.raises(MedfmError, match="'effusion': fpr has shape"):
        figures.roc_curves([{"label": "effusion", "fpr": [0, 0.5, 1], "tpr": [0, 1], "auroc": 0.5}])
    with pytest.raises(MedfmError, match="values has row lengths"):
        figures.heat_map(["a", "b"], ["x"], [[0.5]])
    with pytest.raises(MedfmError, match="no bins with count > 0"):
        figures.reliability_diagram([{"mean_predicted": None, "observed": None, "count": 0}], None, "10 bins")
