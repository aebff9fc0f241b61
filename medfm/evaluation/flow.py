"""Participant flow diagram (CONSORT; TRIPOD+AI item 20a) as self-contained SVG text.

From the source population down, each stage is a box in a main column; what was
excluded on the way to the next stage sits in a side box to the right, joined to the
vertical arrow; the last stage may fan out into the partitions side by side, each with
its own lines (quarantined files, studies analysed) beneath its counts.

Hand-written SVG rather than matplotlib: the layout is boxes of wrapped text, and the
text stays text (selectable, searchable in the PDF). Text is wrapped with an estimate
of each glyph's width, taken from DejaVu Sans (the font asked for first, and wider than
the fallbacks Arial and Helvetica) with a safety margin, so no line overflows its box.
The output is deterministic and its ids are prefixed with a digest of the input, so
several diagrams inlined in one page never share an id unless they are identical.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from medfm.errors import MedfmError
from medfm.evaluation.figures import GRID, INK, MUTED

if TYPE_CHECKING:

    pass

FONT_FAMILY = "'DejaVu Sans', Arial, Helvetica, sans-serif"
FONT_SIZE = 12.0        # labels and counts
SMALL_SIZE = 11.0       # exclusion lines
LINE_HEIGHT = 1.3       # in font sizes
PAD = 8.0               # inside a box
MARGIN = 12.0           # around the figure
MAIN_WIDTH = 280.0
SIDE_WIDTH = 250.0
SIDE_GAP = 36.0         # main column to side box
SIDE_CLEARANCE = 10.0   # side box to the stages above and below it
BRANCH_ROW = 760.0      # the partitions share about this width, each box 150 to 220 wide
BRANCH_GAP = 14.0
ARROW = 26.0            # shortest vertical arrow
BULLET = "\u2022"
MAX_BRANCHES = 6

# Advance widths of DejaVu Sans (regular, bold), in ems rounded up to 0.05, per glyph.
# Any glyph not listed counts as 1 em (1.1 bold); combining marks as 0.
_REGULAR = {0.3: "ijl'IJ", 0.35: ",. /:;\\|f", 0.4: "-t()[]!", 0.45: "r", 0.5: '"*_`\u2013', 0.55: "sz?",
            0.6: "cLkFvxy\u2022P", 0.65: "oYaeTbhnpuE{0123456789dgqS$}K", 0.7: "AVZBXCR", 0.75: "UHN",
            0.8: "DG&OQ", 0.85: "w#<>^~\u2265\u2264\u00d7+=\u00b1", 0.9: "M"}
_BOLD = {0.35: "'ijl ", 0.4: "IJ/\\|,.:;", 0.45: "-f", 0.5: "![]t()r\u2013_`", 0.55: '*"', 0.6: "zc?s",
         0.65: "\u2022Lvxy", 0.7: "kaeoEFT0123456789$", 0.75: "bdghnpqu{SY}CPZ", 0.8: "BAKRVXU",
         0.85: "DGHN#<>^\u2265\u2264\u00d7OQ+=~\u00b1", 0.9: "&", 0.95: "w", 1.0: "M\u2014%@\u2026", 1.05: "m"}
_ADVANCE = {False: {c: w for w, cs in _REGULAR.items() for c in cs},
            True: {c: w for w, cs in _BOLD.items() for c in cs}}
_SAFETY = 1.05  # rendering differences (hinting, kerning off) never push a line past its box


class FlowDiagramError(MedfmError, ValueError):
    """The stages cannot be drawn as a flow diagram: the message names the stage and the reason."""


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Estimated width in px of ``text`` at font ``size`` (an upper bound for DejaVu Sans, Arial, Helvetica)."""
    table, other = _ADVANCE[bold], 1.1 if bold else 1.0
    ems = sum(0.0 if unicodedata.combining(c) else table.get(c, other) for c in text)
    return ems * size * _SAFETY


def wrap_text(text: str, width: float, size: float, bold: bool = False) -> list[str]:
    """Break ``text`` into lines no wider than ``width``: at spaces, or inside a word too long for a line.

    A newline in ``text`` always starts a new line.
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, size, bold) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:  # a word wider than the box: break it where it reaches the edge
                if line and text_width(line + char, size, bold) > width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


@dataclass(frozen=True)
class _Box:
    label: str
    count: str
    excluded: tuple[str, ...]


@dataclass(frozen=True)
class _Text:
    x: float
    y: float  # baseline
    text: str
    size: float
    bold: bool = False
    anchor: str = "start"
    color: str = INK


def flow_diagram(stages: Sequence[Mapping[str, Any]], title: str = "Participant flow") -> str:
    """Draw a CONSORT-style participant flow as SVG text.

    Args:
        stages: top to bottom. Each is ``{"label": str, "count": str, "excluded": [str, ...]}``:
            a box in the main column showing label and count; ``excluded`` (optional) are the
            lines removed on the way to the next stage, drawn in a side box to the right
            joined to the arrow (under the last stage they are listed inside its box). The
            last stage may instead be ``{"branches": [{"label", "count", "excluded"}, ...]}``:
            2 to 6 partitions side by side, left to right, each with its ``excluded`` lines
            listed beneath its counts inside the box.
        title: the figure's ``<title>`` and ``aria-label``.

    Returns:
        ``<svg>`` element text (no XML prolog), to inline in HTML.

    Raises:
        FlowDiagramError: (a ``ValueError``) no stage, a stage without label or count,
            ``branches`` anywhere but last, or not 2 to 6 branches.
    """
    main, branches = _parse(stages)
    return _Layout(main, branches, title).svg()


def flow_stages(flow: Mapping[str, Any], roles: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Stages for :func:`flow_diagram` from the counts a run records (``results.json`` → ``flow``).

    The first box is the manifest before any inclusion rule, with one line per rule (its name, its
    expression when named, and the studies and patients it excluded); then the included cohort; then one
    box per partition with its quarantined files and the studies of each modality read.

    Args:
        flow: ``{"manifest": {patients, studies}, "rules": [{name, rule, excluded_patients,
            excluded_studies}], "included": {patients, studies}, "splits": [{name, patients, studies,
            quarantined_studies, analysed: {modality: studies}}]}`` (:func:`medfm.evaluation.run_record.flow_counts`).
        roles: a short role per partition name, appended to its label (``test: held-out patients``).
    """
    manifest, included = flow["manifest"], flow["included"]
    source: dict[str, Any] = {"label": "Studies in the manifest",
                              "count": _studies(manifest["studies"], manifest["patients"]), "excluded": []}
    stages = [source]
    rules = list(flow.get("rules", []))
    if rules:
        excluded = _studies(manifest["studies"] - included["studies"], sum(r["excluded_patients"] for r in rules))
        source["excluded"] = [f"Excluded by inclusion rules: {excluded}"] + [_rule_line(r) for r in rules]
        stages.append({"label": "Included", "count": _studies(included["studies"], included["patients"])})
    boxes = []
    for split in flow["splits"]:
        quarantined = split.get("quarantined_studies", 0)
        files = f"{quarantined} file{'' if quarantined == 1 else 's'}"
        lines = [f"quarantined (unreadable): {files}"] if quarantined else []
        lines += [f"{m}: {n:,} studies read" for m, n in split.get("analysed", {}).items()]
        role = (roles or {}).get(split["name"])
        boxes.append({"label": f"{split['name']}: {role}" if role else split["name"],
                      "count": _studies(split["studies"], split["patients"]), "excluded": lines})
    stages.append(boxes[0] if len(boxes) == 1 else {"branches": boxes})
    return stages


def _rule_line(rule: Mapping[str, Any]) -> str:
    """``name (expression): n studies, m patients``; an unnamed rule is named by its expression alone."""
    name = rule["name"] if rule["name"] == rule["rule"] else f"{rule['name']} ({rule['rule']})"
    return f"{name}: {_studies(rule['excluded_studies'], rule['excluded_patients'])}"


def _studies(studies: int, patients: int) -> str:
    return (f"{studies:,} stud{'y' if studies == 1 else 'ies'}, "
            f"{patients:,} patient{'' if patients == 1 else 's'}")


def _parse(stages: Sequence[Mapping[str, Any]]) -> tuple[list[_Box], list[_Box] | None]:
    if isinstance(stages, str | bytes | Mapping) or not isinstance(stages, Sequence):
        raise FlowDiagramError(f"flow_diagram: stages must be a list of stages, not {type(stages).__name__}")
    if not stages:
        raise FlowDiagramError("flow_diagram: no stages to draw")
    main: list[_Box] = []
    branches: list[_Box] | None = None
    for i, stage in enumerate(stages):
        where = f"stages[{i}]"
        if not isinstance(stage, Mapping):
            raise FlowDiagramError(f"flow_diagram: {where} must be a mapping, not {type(stage).__name__}")
        if "branches" not in stage:
            main.append(_box(stage, where))
            continue
        if i != len(stages) - 1:
            raise FlowDiagramError(f"flow_diagram: {where}: branches must be the last stage "
                                   f"(it is stage {i + 1} of {len(stages)})")
        if i == 0:
            raise FlowDiagramError(f"flow_diagram: {where}: branches need a stage above them to branch from")
        if set(stage) != {"branches"}:
            raise FlowDiagramError(f"flow_diagram: {where}: a branches stage has only the key 'branches', "
                                   f"not {sorted(set(stage) - {'branches'})}")
        items = stage["branches"]
        if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
            raise FlowDiagramError(f"flow_diagram: {where}.branches must be a list of boxes")
        if not 2 <= len(items) <= MAX_BRANCHES:
            raise FlowDiagramError(f"flow_diagram: {where}.branches has {len(items)} partitions; "
                                   f"draw 2 to {MAX_BRANCHES} side by side")
        branches = [_box(item, f"{where}.branches[{j}]") for j, item in enumerate(items)]
    return main, branches


def _box(stage: Any, where: str) -> _Box:
    if not isinstance(stage, Mapping):
        raise FlowDiagramError(f"flow_diagram: {where} must be a mapping, not {type(stage).__name__}")
    extra = sorted(set(stage) - {"label", "count", "excluded"})
    if extra:
        raise FlowDiagramError(f"flow_diagram: {where}: unknown key(s) {extra}; expected label, count, excluded")
    for key in ("label", "count"):
        if not isinstance(stage.get(key), str) or not stage[key].strip():
            raise FlowDiagramError(f"flow_diagram: {where}.{key} must be non-empty text, got {stage.get(key)!r}")
    excluded = stage.get("excluded", ())
    if isinstance(excluded, str) or not isinstance(excluded, Sequence) \
            or not all(isinstance(line, str) for line in excluded):
        raise FlowDiagramError(f"flow_diagram: {where}.excluded must be a list of text lines, got {excluded!r}")
    return _Box(_clean(stage["label"]), _clean(stage["count"]),
                tuple(_clean(line) for line in excluded if line.strip()))


class _Layout:
    """Positions of every box, arrow and line of text; ``svg()`` writes them out."""

    def __init__(self, main: list[_Box], branches: list[_Box] | None, title: str):
        self.main, self.branches, self.title = main, branches, title
        self.rects: list[tuple[str, float, float, float, float, str]] = []  # id, x, y, w, h, kind
        self.texts: dict[str, list[_Text]] = {}
        self.lines: list[tuple[float, float, float, float]] = []
        self.rules: dict[str, tuple[float, float, float]] = {}  # per box: x1, x2, y of the rule above its lines
        self.heads: list[tuple[float, float, str]] = []  # tip x, tip y, "down" | "right"
        digest = json.dumps([title, [vars(b) for b in main], None if branches is None else [vars(b) for b in branches]],
                            ensure_ascii=True, sort_keys=True)
        self.prefix = "flow-" + hashlib.sha256(digest.encode()).hexdigest()[:10]
        self._place()

    def _place(self) -> None:
        last = len(self.main) - 1
        has_side = any(box.excluded for box in self.main[:last]) or bool(self.branches and self.main[last].excluded)
        n = len(self.branches or [])
        branch_width = min(220.0, max(150.0, (BRANCH_ROW - (n - 1) * BRANCH_GAP) / max(n, 1)))
        row = n * branch_width + (n - 1) * BRANCH_GAP if n else 0.0
        left = max(MAIN_WIDTH / 2, row / 2)
        right = max(MAIN_WIDTH / 2 + (SIDE_GAP + SIDE_WIDTH if has_side else 0.0), row / 2)
        cx = MARGIN + left
        self.width = cx + right + MARGIN
        y = MARGIN
        for i, box in enumerate(self.main):
            inside = box.excluded if i == last and not self.branches else ()
            y += self._box(f"stage-{i}", cx - MAIN_WIDTH / 2, y, MAIN_WIDTH, box, inside, "stage")
            if i == last and not self.branches:
                break
            gap = ARROW
            if box.excluded:
                side_x = cx + MAIN_WIDTH / 2 + SIDE_GAP
                side_h = self._side_height(box.excluded)
                gap = max(ARROW, side_h + 2 * SIDE_CLEARANCE)
                top = y + (gap - side_h) / 2
                self._side(f"excluded-{i}", side_x, top, box.excluded)
                self.lines.append((cx, top + side_h / 2, side_x, top + side_h / 2))
                self.heads.append((side_x, top + side_h / 2, "right"))
            self.lines.append((cx, y, cx, y + gap))
            if i < last:
                self.heads.append((cx, y + gap, "down"))
            y += gap
        if self.branches:
            centres = [cx - row / 2 + branch_width / 2 + j * (branch_width + BRANCH_GAP) for j in range(n)]
            self.lines.append((centres[0], y, centres[-1], y))
            for centre in centres:
                self.lines.append((centre, y, centre, y + ARROW))
                self.heads.append((centre, y + ARROW, "down"))
            y += ARROW
            height = max(self._box_height(b, branch_width, b.excluded) for b in self.branches)
            for j, (box, centre) in enumerate(zip(self.branches, centres, strict=True)):
                self._box(f"branch-{j}", centre - branch_width / 2, y, branch_width, box, box.excluded, "branch",
                          height)
            y += height
        self.height = y + MARGIN

    def _box_height(self, box: _Box, width: float, inside: Sequence[str]) -> float:
        inner = width - 2 * PAD
        lines = len(wrap_text(box.label, inner, FONT_SIZE)) + len(wrap_text(box.count, inner, FONT_SIZE, True))
        height = 2 * PAD + lines * FONT_SIZE * LINE_HEIGHT
        if inside:
            height += PAD + self._bullets_height(inside, inner)
        return height

    def _box(self, name: str, x: float, y: float, width: float, box: _Box, inside: Sequence[str], kind: str,
             height: float | None = None) -> float:
        """A box with centred label and count, and ``inside`` lines beneath a rule; returns its height."""
        height = height or self._box_height(box, width, inside)
        self.rects.append((name, x, y, width, height, kind))
        inner, texts = width - 2 * PAD, []
        baseline = y + PAD
        for text, bold in [*((t, False) for t in wrap_text(box.label, inner, FONT_SIZE)),
                           *((t, True) for t in wrap_text(box.count, inner, FONT_SIZE, True))]:
            baseline += FONT_SIZE * LINE_HEIGHT
            texts.append(_Text(x + width / 2, baseline - _descent(FONT_SIZE), text, FONT_SIZE, bold, "middle"))
        if inside:
            rule = baseline + PAD / 2
            self.rules[name] = (x + PAD, x + width - PAD, rule)
            texts += self._bullets(x + PAD, rule + PAD / 2, inside, inner)
        self.texts[name] = texts
        return height

    def _side_height(self, lines: Sequence[str]) -> float:
        return 2 * PAD + self._bullets_height(lines, SIDE_WIDTH - 2 * PAD)

    def _side(self, name: str, x: float, y: float, lines: Sequence[str]) -> None:
        self.rects.append((name, x, y, SIDE_WIDTH, self._side_height(lines), "excluded"))
        self.texts[name] = self._bullets(x + PAD, y + PAD, lines, SIDE_WIDTH - 2 * PAD)

    def _bullets_height(self, lines: Sequence[str], width: float) -> float:
        indent = text_width(BULLET + " ", SMALL_SIZE)
        return sum(len(wrap_text(line, width - indent, SMALL_SIZE)) for line in lines) * SMALL_SIZE * LINE_HEIGHT

    def _bullets(self, x: float, y: float, lines: Sequence[str], width: float) -> list[_Text]:
        """Each line as a bulleted item wrapped with a hanging indent, starting at top ``y``."""
        indent = text_width(BULLET + " ", SMALL_SIZE)
        texts = []
        for line in lines:
            for k, part in enumerate(wrap_text(line, width - indent, SMALL_SIZE)):
                y += SMALL_SIZE * LINE_HEIGHT
                if k == 0:
                    texts.append(_Text(x, y - _descent(SMALL_SIZE), BULLET, SMALL_SIZE, color=MUTED))
                texts.append(_Text(x + indent, y - _descent(SMALL_SIZE), part, SMALL_SIZE))
        return texts

    def description(self) -> str:
        parts = [f"{self.title}, from top to bottom."]
        for i, box in enumerate(self.main):
            parts.append(f"Stage {i + 1}: {box.label}: {box.count}.")
            if box.excluded and (i < len(self.main) - 1 or self.branches):
                parts.append("Removed before the next stage: " + "; ".join(box.excluded) + ".")
            elif box.excluded:
                parts.append("Listed beneath: " + "; ".join(box.excluded) + ".")
        if self.branches:
            parts.append(f"Then {len(self.branches)} partitions, from left to right:")
            for box in self.branches:
                notes = f" ({'; '.join(box.excluded)})" if box.excluded else ""
                parts.append(f"{box.label}: {box.count}{notes}.")
        return " ".join(parts)

    def svg(self) -> str:
        p = self.prefix
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{p}" role="img" aria-label={_attr(self.title)} '
               f'width="{_n(self.width)}" height="{_n(self.height)}" viewBox="0 0 {_n(self.width)} {_n(self.height)}" '
               f'style="max-width:100%;height:auto" font-family={_attr(FONT_FAMILY)} fill="{INK}">',
               f"<title>{_text(self.title)}</title>",
               f"<desc>{_text(self.description())}</desc>",
               f'<g id="{p}-arrows" stroke="{MUTED}" stroke-width="1.2" fill="none">']
        out += [f'<line x1="{_n(a)}" y1="{_n(b)}" x2="{_n(c)}" y2="{_n(d)}"/>' for a, b, c, d in self.lines]
        out.append("</g>")
        out.append(f'<g id="{p}-arrowheads" fill="{MUTED}">')
        for x, y, direction in self.heads:
            if direction == "down":
                points = [(x, y), (x - 4, y - 7), (x + 4, y - 7)]
            else:
                points = [(x, y), (x - 7, y - 4), (x - 7, y + 4)]
            out.append(f'<polygon points="{" ".join(f"{_n(a)},{_n(b)}" for a, b in points)}"/>')
        out.append("</g>")
        for name, x, y, w, h, kind in self.rects:
            fill, stroke = (GRID, MUTED) if kind == "excluded" else ("#ffffff", INK)
            out.append(f'<g id="{p}-{name}">')
            out.append(f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" rx="3" '
                       f'fill="{fill}" stroke="{stroke}" stroke-width="1"/>')
            if name in self.rules:
                x1, x2, rule = self.rules[name]
                out.append(f'<line x1="{_n(x1)}" y1="{_n(rule)}" x2="{_n(x2)}" y2="{_n(rule)}" '
                           f'stroke="{MUTED}" stroke-width="0.6"/>')
            for t in self.texts[name]:
                weight = ' font-weight="bold"' if t.bold else ""
                anchor = f' text-anchor="{t.anchor}"' if t.anchor != "start" else ""
                out.append(f'<text x="{_n(t.x)}" y="{_n(t.y)}" font-size="{_n(t.size)}"{weight}{anchor} '
                           f'fill="{t.color}">{_text(t.text)}</text>')
            out.append("</g>")
        out.append("</svg>")
        return "\n".join(out) + "\n"


def _descent(size: float) -> float:
    """Baseline sits this far above the bottom of its line box (half leading plus the font's descent)."""
    return size * (LINE_HEIGHT - 1) / 2 + size * 0.24


def _n(value: float) -> str:
    """A coordinate with at most two decimals and no trailing zeros: stable bytes for equal layouts."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _clean(text: str) -> str:
    """Drop characters XML 1.0 forbids (control characters other than tab and newline)."""
    return "".join(c for c in text if c in "\t\n" or (ord(c) >= 0x20 and not 0xD800 <= ord(c) <= 0xDFFF
                                                         and c not in "\ufffe\uffff"))


def _text(text: str) -> str:
    return escape(_clean(text))


def _attr(text: str) -> str:
    return '"' + escape(_clean(text), {'"': "&quot;", "\n": "&#10;", "\t": "&#9;"}) + '"'
