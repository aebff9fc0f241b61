"""HTML to PDF with the system Chromium: the pages exist, are A4, and are not blank."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from PIL import Image

from medfm.errors import MedfmError
from medfm.evaluation import figures
from medfm.evaluation.pdf import CHROMIUM, render_pdf

A4_POINTS = (595.3, 841.9)
# Measured at 96 dpi: each page here inks 1.2-1.8% of its pixels, a page with only its heading 0.15%,
# a blank page 0. The floor therefore also catches a figure or table that failed to print.
MIN_INK = 0.005

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>two pages</title>
<style>
 @page {{ size: A4; margin: 15mm; }}
 body {{ font: 12px/1.4 sans-serif; }}
 figure {{ break-inside: avoid; margin: 0; }}
 figure svg {{ max-width: 100%; height: auto; }}
 table {{ break-inside: avoid; border-collapse: collapse; }} td, th {{ border: 1px solid #888; padding: 4px 8px; }}
 .new-page {{ break-before: page; }}
</style></head>
<body>
<h1>Page one: a figure</h1>
<figure>{figure}<figcaption>ROC curves</figcaption></figure>
<h1 class="new-page">Page two: a table</h1>
<table><tr><th>site</th><th>device</th><th>AUROC</th></tr>
{rows}
</table>
</body></html>
"""


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (the Makefile's system-packages target "
                    "apt-installs chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def two_page_pdf(chromium, tmp_path_factory) -> Path:
    x = np.linspace(0, 1, 30)
    figure = figures.roc_curves([{"label": "effusion", "fpr": x, "tpr": x**0.35, "auroc": 0.86},
                                 {"label": "edema", "fpr": x, "tpr": x**0.7, "auroc": 0.66}])
    rows = "\n".join(f"<tr><td>site {s}</td><td>device {d}</td><td>0.{80 + 3 * s + d}</td></tr>"
                     for s in range(4) for d in range(3))
    folder = tmp_path_factory.mktemp("pdf")
    html = folder / "report.html"
    html.write_text(PAGE.format(figure=figure, rows=rows), encoding="utf-8")
    return render_pdf(html, folder / "report.pdf", chromium=chromium)


def page_images(pdf: Path, folder: Path) -> list[Image.Image]:
    """Each page as a PNG file in ``folder`` (96 dpi), read back as RGB."""
    document = pdfium.PdfDocument(pdf)
    try:
        paths = []
        for i in range(len(document)):
            path = folder / f"page-{i + 1}.png"
            document[i].render(scale=96 / 72).to_pil().convert("RGB").save(path)
            paths.append(path)
    finally:
        document.close()
    return [Image.open(path).convert("RGB") for path in paths]


def ink(image: Image.Image) -> float:
    """The share of pixels that are not (nearly) white."""
    pixels = np.asarray(image)
    return float((pixels.min(axis=2) < 235).mean())


def test_two_page_document_prints_as_two_a4_pages(two_page_pdf):
    assert two_page_pdf.read_bytes().startswith(b"%PDF-")
    document = pdfium.PdfDocument(two_page_pdf)
    try:
        assert len(document) == 2
        for page in document:
            assert page.get_size() == pytest.approx(A4_POINTS, abs=1.5)
        text = [document[i].get_textpage().get_text_range() for i in range(2)]
    finally:
        document.close()
    assert "Page one" in text[0] and "Page two" in text[1]
    assert "site 3" in text[1] and "0.89" in text[1], "the whole table is on page two"
    assert not list(two_page_pdf.parent.glob(".*.tmp")), "no temporary file left beside the PDF"


def test_pages_are_not_blank_and_the_figure_is_drawn(two_page_pdf, tmp_path):
    pages = page_images(two_page_pdf, tmp_path)
    assert [p.name for p in sorted(tmp_path.glob("page-*.png"))] == ["page-1.png", "page-2.png"]
    for number, image in enumerate(pages, start=1):
        assert ink(image) > MIN_INK, f"page {number} is blank ({ink(image):.4f} of its pixels inked)"
    # The figure's first curve is Okabe–Ito blue (#0072B2): it must show on page one and only there.
    blue = [int((np.abs(np.asarray(p).astype(int) - (0, 114, 178)).max(axis=2) < 40).sum()) for p in pages]
    assert blue[0] > 200 and blue[1] == 0, blue


def test_missing_html_is_named(tmp_path):
    with pytest.raises(MedfmError, match="absent.html: no HTML file"):
        render_pdf(tmp_path / "absent.html", tmp_path / "out.pdf")


def test_missing_chromium_says_how_to_install_it(tmp_path):
    html = tmp_path / "a.html"
    html.write_text("<p>x</p>")
    with pytest.raises(MedfmError, match="Chromium is not installed at .*nowhere.*`make test` installs it"):
        render_pdf(html, tmp_path / "a.pdf", chromium=tmp_path / "nowhere" / "chromium")


def fake_chromium(folder: Path, body: str) -> Path:
    script = folder / "chromium"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.mark.parametrize(("body", "reason"), [
    ("echo 'ERROR: cannot open display' >&2; exit 3", "exited with status 3 .*cannot open display"),
    ("exit 0", "wrote no PDF"),
    ('for a; do case "$a" in --print-to-pdf=*) echo not a pdf > "${a#--print-to-pdf=}";; esac; done',
     "not a PDF"),
])
def test_failed_print_leaves_the_old_pdf_and_no_temporary_file(tmp_path, body, reason):
    html = tmp_path / "a.html"
    html.write_text("<p>x</p>")
    old = tmp_path / "a.pdf"
    old.write_bytes(b"%PDF-old")
    with pytest.raises(MedfmError, match=f"a.pdf: .*{reason}"):
        render_pdf(html, old, chromium=fake_chromium(tmp_path, body))
    assert old.read_bytes() == b"%PDF-old"
    assert not list(tmp_path.glob(".*.tmp"))


def test_hung_chromium_is_killed_after_the_timeout(tmp_path):
    html = tmp_path / "a.html"
    html.write_text("<p>x</p>")
    # The child sleep stands for Chromium's renderer: killing the group must end it too, or communicate() would wait.
    script = fake_chromium(tmp_path, "sleep 60 & sleep 60")
    start = time.monotonic()
    with pytest.raises(MedfmError, match="did not finish printing within 1 s"):
        render_pdf(html, tmp_path / "a.pdf", chromium=script, timeout_s=1)
    assert time.monotonic() - start < 10
    assert not (tmp_path / "a.pdf").exists()
