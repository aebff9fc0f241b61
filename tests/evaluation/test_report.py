"""The validation report: numbers equal results.json, every figure is there, the PDF prints, a rebuild checks itself."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pypdfium2 as pdfium
import pytest

from medfm.cli import main
from medfm.evaluation.pdf import CHROMIUM
from medfm.evaluation.report import ReportError, rebuild_report, render_report

from .report_fixtures import make_run

MIN_INK = 0.005  # share of non-white pixels of a full page; a page with only a heading inks 0.15% (test_pdf.py)


class _Numbers(HTMLParser):
    """Collects every ``<span data-key>`` with its text, and every ``<figure>``'s content."""

    def __init__(self):
        super().__init__()
        self.numbers, self.figures, self._span, self._figure = [], [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "data-key" in attrs:
            self._span = [attrs["data-key"], int(attrs["data-digits"]), ""]
        if tag == "figure":
            self._figure = {"svg": 0, "img": 0, "title": 0}
        if self._figure is not None:
            if tag == "svg":
                self._figure["svg"] += 1
            if tag == "title":
                self._figure["title"] += 1
            if tag == "img" and attrs.get("src", "").startswith("data:image/png;base64,"):
                self._figure["img"] += 1

    def handle_data(self, data):
        if self._span is not None:
            self._span[2] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._span is not None:
            self.numbers.append(tuple(self._span))
            self._span = None
        if tag == "figure" and self._figure is not None:
            self.figures.append(self._figure)
            self._figure = None


def _resolve(document, pointer: str):
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    results = make_run(folder)
    render_report(folder, results)
    return folder


def _parsed(folder) -> _Numbers:
    parser = _Numbers()
    parser.feed((folder / "report.html").read_text())
    return parser


def test_every_number_in_the_html_equals_results_json(run):
    results = json.loads((run / "results.json").read_text())
    numbers = _parsed(run).numbers
    assert len(numbers) > 300
    for pointer, digits, text in numbers:
        value = _resolve(results, pointer)
        expected = "n/a" if value is None else f"{value:.{digits}f}"
        assert text == expected, pointer
    pointers = {p for p, _, _ in numbers}
    # the headline figures are among them: acceptance values, endpoints, every task's AUROC on both splits
    assert "/validation/acceptance/0/value" in pointers
    assert "/validation/endpoints/0/result/estimate" in pointers
    for split in ("test", "external"):
        assert f"/validation/heads/linear_probe/{split}/cardiomegaly~1cxr/auroc/low" in pointers
    assert any(p.startswith("/validation/cross_source/device/") and p.endswith("/drop/estimate") for p in pointers)
    assert any(p.startswith("/validation/case_search/cxr/mAP") for p in pointers)


def test_every_figure_exists_and_has_content(run):
    html = (run / "report.html").read_text()
    figures = _parsed(run).figures
    svg = [f for f in figures if f["svg"]]
    thumbnails = [f for f in figures if f["img"]]
    assert all(f["svg"] or f["img"] for f in figures)
    assert len(figures) == len(svg) + len(thumbnails)
    # 2 ROC + 2 PR, 2 reliability + 2 decision, 4 cross-source heat maps, 2 forest plots, the flow diagram
    assert len(svg) == 15 and all(f["title"] for f in svg)
    cases = html.count('class="case"')
    assert cases > 0 and html.count("data:image/png;base64,") == cases
    assert "thumbnail not stored" not in html


def test_no_identifier_reaches_the_report(run):
    html = (run / "report.html").read_text()
    predictions = pd.read_parquet(run / "predictions.parquet")
    assert not any(s in html for s in predictions["study"].unique())    # whole study keys stay in the parquet files
    assert not any(p in html for p in predictions["patient"].unique())  # and patient pseudonyms
    shown = set(re.findall(r"study ([0-9a-f]{10})\b", html))  # failure cases: a prefix the owner can look up
    assert shown and all(any(k.startswith(p) for k in predictions["study"]) for p in shown)


def test_the_pdf_prints_every_page_with_ink(run):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it")
    pdf = pdfium.PdfDocument(str(run / "report.pdf"))
    assert len(pdf) >= 8
    ink = [(np.asarray(pdf[i].render(scale=96 / 72).to_pil().convert("L")) < 200).mean() for i in range(len(pdf))]
    assert min(ink) > MIN_INK / 25, f"page {int(np.argmin(ink)) + 1} is blank"  # a few lines of text: 0.08%
    assert np.mean(np.array(ink) > MIN_INK) > 0.85  # sections flow: only a section's last page may be short


def test_rebuild_recomputes_the_same_numbers_and_writes_the_same_page(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = (copy / "report.html").read_text()
    done = rebuild_report(copy, pdf=False)
    assert done["numbers_compared"] > 500
    after = (copy / "report.html").read_text()
    assert "all equal to <code>results.json</code>" in after
    assert re.sub(r"<div class=\"banner pass screen\">.*?</div>", "", after, flags=re.S).count("data-key") \
        == before.count("data-key")
    assert main(["report", "rebuild", str(copy), "--no-pdf"]) == 0


def test_rebuild_refuses_predictions_that_no_longer_give_the_numbers(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    predictions = pd.read_parquet(copy / "predictions.parquet")
    predictions.loc[predictions.index[3], "probability"] = 0.999
    predictions.to_parquet(copy / "predictions.parquet", index=False)
    before = (copy / "report.html").read_bytes()
    with pytest.raises(ReportError, match="numbers differ when recomputed"):
        rebuild_report(copy, pdf=False)
    assert (copy / "report.html").read_bytes() == before
    assert main(["report", "rebuild", str(copy)]) == 2


def test_an_edited_stored_plan_is_refused_and_an_edited_original_is_shown(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    results = json.loads((copy / "results.json").read_text())
    original = copy / "original_plan.yaml"
    results["plan"]["path"] = str(original)
    (copy / "results.json").write_text(json.dumps(results))
    original.write_text(original.read_text().replace("at_least: 0.99", "at_least: 0.5"))
    rebuild_report(copy, pdf=False)
    assert "The plan file has changed since this run" in (copy / "report.html").read_text()

    (copy / "plan.yaml").write_text((copy / "plan.yaml").read_text() + "\n# edited\n")
    with pytest.raises(ReportError, match="edited after the run"):
        rebuild_report(copy, pdf=False)


def test_a_folder_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="no results.json"):
        rebuild_report(tmp_path)
