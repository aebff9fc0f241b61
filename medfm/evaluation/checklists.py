"""TRIPOD+AI and CLAIM 2024 items mapped to the validation report's sections (package data ``checklists.yaml``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from medfm.errors import ConfigError

REPORT_SECTIONS = ("summary", "intended-use", "data", "model", "methods", "results", "cross-source", "subgroups",
                   "retrieval", "failures", "limitations", "provenance")  # the report's section ids, in its order
_FIELDS = {"id", "section", "item", "report", "coverage", "note"}


@dataclass(frozen=True)
class ChecklistItem:
    """One guideline item and where the report answers it.

    Attributes:
        id: the guideline's number, e.g. "12c".
        section: the guideline's heading, e.g. "Methods: Analytical methods".
        item: a short paraphrase of what the item asks.
        report: ids from :data:`REPORT_SECTIONS` answering it; empty when coverage is "none".
        coverage: "full", "partial" or "none".
        note: what the report leaves out, or what the user must supply; "" when nothing.
    """

    id: str
    section: str
    item: str
    report: tuple[str, ...]
    coverage: str
    note: str = ""


@dataclass(frozen=True)
class Checklist:
    """A reporting guideline: its ``name``, one-line ``citation`` and ``items`` in the guideline's order."""

    name: str
    citation: str
    items: tuple[ChecklistItem, ...]


def load_checklists() -> list[Checklist]:
    """The packaged checklists (TRIPOD+AI, CLAIM 2024), checked as :func:`_load_checklists_file` checks them."""
    text = files("medfm.evaluation").joinpath("checklists.yaml").read_text(encoding="utf-8")
    return _load_checklists_file(Path("medfm/evaluation/checklists.yaml"), text)


def _load_checklists_file(path: str | Path, text: str | None = None) -> list[Checklist]:
    """Checklists from a YAML file laid out like the packaged one (``text``: its content, if already read).

    Raises:
        ConfigError: not YAML, a missing or extra field, an unknown report section id, a repeated item id,
            coverage its sections contradict, or a partial or "none" item without a note.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8") if text is None else text)
    except yaml.YAMLError as err:
        raise ConfigError(path, None, f"not valid YAML: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("checklists"), list):
        raise ConfigError(path, "checklists", "expected a list of checklists")
    out = []
    for i, raw in enumerate(doc["checklists"]):
        if not (isinstance(raw, dict) and {"name", "citation", "items"} <= raw.keys() and type(raw["items"]) is list):
            raise ConfigError(path, f"checklists[{i}]", "needs name, citation and a list of items")
        items = tuple(_item(r, path, f"{raw['name']}.items[{j}]") for j, r in enumerate(raw["items"]))
        if repeated := sorted(k for k, n in Counter(it.id for it in items).items() if n > 1):
            raise ConfigError(path, f"{raw['name']}.items", f"item id repeated: {', '.join(repeated)}")
        out.append(Checklist(str(raw["name"]), " ".join(str(raw["citation"]).split()), items))
    return out


def _item(raw: Any, path: Path, key: str) -> ChecklistItem:
    if not isinstance(raw, dict) or not _FIELDS - {"note"} <= raw.keys() or raw.keys() - _FIELDS:
        raise ConfigError(path, key, f"needs the fields {sorted(_FIELDS)} and no others (note optional)")
    key = f"{key} (id {raw['id']})"
    report, coverage, note = raw["report"] or [], raw["coverage"], " ".join(str(raw.get("note") or "").split())
    unknown = [s for s in report if s not in REPORT_SECTIONS] if isinstance(report, list) else [report]
    if unknown:
        raise ConfigError(path, f"{key}.report", f"unknown section id {unknown}; known: {', '.join(REPORT_SECTIONS)}")
    if coverage not in ("full", "partial", "none") or (coverage == "none") != (not report):
        raise ConfigError(path, key, f"coverage {coverage!r} with report {report}: use full/partial + sections or none")
    if coverage != "full" and not note:
        raise ConfigError(path, f"{key}.note", f"coverage {coverage} needs a note saying what is missing")
    return ChecklistItem(str(raw["id"]), str(raw["section"]), str(raw["item"]), tuple(report), coverage, note)


def checklist_rows(checklist: Checklist) -> list[dict[str, Any]]:
    """One dict per item for the template: id, section, item, report (section ids in report order), coverage, note."""
    return [{"id": it.id, "section": it.section, "item": it.item, "coverage": it.coverage, "note": it.note,
             "report": sorted(it.report, key=REPORT_SECTIONS.index)} for it in checklist.items]
