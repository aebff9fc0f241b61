"""Render a run's results as a self-contained HTML page."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape


def render_html_report(results: dict[str, Any], path: Path) -> Path:
    """Write ``results`` as HTML (no external assets), atomically."""
    env = Environment(loader=PackageLoader("medfm.evaluation", "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["fmt"] = lambda v, digits=3: "n/a" if v is None or v != v else f"{v:.{digits}f}"
    html = env.get_template("report.html").render(r=results)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path
