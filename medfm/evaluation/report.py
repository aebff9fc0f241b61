"""Render a run's results as a self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from medfm.atomic import write_text_atomic


def render_html_report(results: dict[str, Any], path: Path) -> Path:
    """Write ``results`` as HTML (no external assets), atomically."""
    env = Environment(loader=PackageLoader("medfm.evaluation", "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["fmt"] = lambda v, digits=3: "n/a" if v is None or v != v else f"{v:.{digits}f}"
    html = env.get_template("report.html").render(r=results)
    return write_text_atomic(path, html)
