import itertools
import re
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
import yaml

from medfm.cohort import assign_splits, load_cohort
from medfm.evaluation.figures import GRID, INK, MUTED
from medfm.evaluation.flow import (
    FlowDiagramError,
    flow_diagram,
    flow_stages,
    text_width,
    wrap_text,
)
from medfm.evaluation.run_record import flow_counts

NS = "{http://www.w3.org/2000/svg}"
LONG = ("Patients referred from the emergency department whose first chest radiograph was acquired "
        "supine on a portable unit, excluded because the protocol prespecifies erect PA films only")

STAGES = [
    {"label": "Studies in the manifest", "count": "1,204 studies, 600 patients",
     "excluded": ["age < 18 & no consent: 30 studies, 9 patients", LONG]},
    {"label": "Included <all sites>", "count": "1,163 studies, 588 patients", "excluded": []},
    {"label": "Readable", "count": "1,160 studies, \"n\" = 587", "excluded": ["unreadable DICOM: 3 studies"]},
    {"branches": [
        {"label": "train", "count": "800 studies, 400 patients", "excluded": ["quarantined (unreadable): 2 studies"]},
        {"label": "val", "count": "120 studies, 60 patients"},
        {"label": "test", "count": "160 studies, 88 patients",
         "excluded": ["quarantined (unreadable): 2 studies", "cxr: 98 studies analysed"]},
        {"label": "external (Corvid DX-9)", "count": "80 studies, 39 patients", "excluded": ["cxr: 80 analysed"]},
    ]},
]


def parse(svg):
    return ET.fromstring(svg)


def boxes(root):
    """{suffix: (rect (x, y, w, h), [(text element, content)])} per box group (stage-i, excluded-i, branch-j)."""
    found = {}
    for group in root.iter(f"{NS}g"):
        match = re.search(r"-((?:stage|excluded|branch)-\d+)$", group.get("id", ""))
        if match:
            rect = group.find(f"{NS}rect")
            box = tuple(float(rect.get(k)) for k in ("x", "y", "width", "height"))
            found[match.group(1)] = (box, [(t, t.text or "") for t in group.iter(f"{NS}text")])
    return found


def test_the_svg_parses_and_is_accessible():
    root = parse(flow_diagram(STAGES, title="Flow of <patients> & studies"))
    assert root.tag == f"{NS}svg"
    assert root.get("role") == "img" and root.get("aria-label") == "Flow of <patients> & studies"
    assert root.find(f"{NS}title").text == "Flow of <patients> & studies"
    desc = root.find(f"{NS}desc").text
    for stage in STAGES[:-1]:
        assert f"{stage['label']}: {stage['count']}" in desc
        assert all(line in desc for line in stage["excluded"])
    for branch in STAGES[-1]["branches"]:
        assert f"{branch['label']}: {branch['count']}" in desc
        assert all(line in desc for line in branch.get("excluded", []))


def test_every_string_is_drawn_escaped_and_wrapped():
    svg = flow_diagram(STAGES)
    assert "Included &lt;all sites&gt;" in svg and "age &lt; 18 &amp; no consent" in svg
    drawn = "".join(text for _, (_, texts) in boxes(parse(svg)).items() for _, text in texts).replace(" ", "")
    strings = [s for stage in STAGES[:-1] for s in (stage["label"], stage["count"], *stage["excluded"])]
    strings += [s for b in STAGES[-1]["branches"] for s in (b["label"], b["count"], *b.get("excluded", []))]
    for string in strings:
        assert string.replace(" ", "") in drawn
    long_lines = [text for _, (_, texts) in boxes(parse(svg)).items() for _, text in texts if text in LONG]
    assert len(long_lines) > 3  # the long line is wrapped, not drawn as one


def test_no_text_overflows_its_box_by_the_width_estimate():
    root = parse(flow_diagram(STAGES, title="t"))
    for name, ((x, y, w, h), texts) in boxes(root).items():
        for element, text in texts:
            width = text_width(text, float(element.get("font-size")), element.get("font-weight") == "bold")
            left = float(element.get("x")) - (width / 2 if element.get("text-anchor") == "middle" else 0)
            assert x < left and left + width < x + w, (name, text)
            assert y < float(element.get("y")) < y + h, (name, text)


def test_boxes_do_not_overlap_and_lie_inside_the_view_box():
    root = parse(flow_diagram(STAGES))
    _, _, width, height = map(float, root.get("viewBox").split())
    rects = [box for box, _ in boxes(root).values()]
    for (x, y, w, h) in rects:
        assert 0 <= x and x + w <= width and 0 <= y and y + h <= height
    for (ax, ay, aw, ah), (bx, by, bw, bh) in itertools.combinations(rects, 2):
        assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay


def test_arrows_never_cross_a_box():
    root = parse(flow_diagram(STAGES))
    rects = [box for box, _ in boxes(root).values()]
    arrows = next(g for g in root.iter(f"{NS}g") if g.get("id", "").endswith("-arrows"))
    for line in arrows.iter(f"{NS}line"):
        x1, y1, x2, y2 = (float(line.get(k)) for k in ("x1", "y1", "x2", "y2"))
        for (x, y, w, h) in rects:  # axis-aligned segments: overlap of the open interiors
            inside_x = max(min(x1, x2), x) < min(max(x1, x2), x + w) or x < x1 < x + w
            inside_y = max(min(y1, y2), y) < min(max(y1, y2), y + h) or y < y1 < y + h
            assert not (inside_x and inside_y), (line.attrib, (x, y, w, h))


def test_side_boxes_only_where_there_are_exclusions():
    found = boxes(parse(flow_diagram(STAGES)))
    assert sorted(k for k in found if k.startswith("excluded")) == ["excluded-0", "excluded-2"]
    stage_0, side_0, stage_1 = found["stage-0"][0], found["excluded-0"][0], found["stage-1"][0]
    assert side_0[0] > stage_0[0] + stage_0[2]  # to the right of the main column
    assert stage_0[1] + stage_0[3] < side_0[1] and side_0[1] + side_0[3] < stage_1[1]  # between the two stages
    plain = boxes(parse(flow_diagram([{"label": "a", "count": "1"}, {"label": "b", "count": "2"}])))
    assert sorted(plain) == ["stage-0", "stage-1"]


def test_the_last_stage_lists_its_exclusions_inside():
    found = boxes(parse(flow_diagram([{"label": "a", "count": "1"}, {"label": "b", "count": "2",
                                                                      "excluded": ["lost: 2"]}])))
    assert sorted(found) == ["stage-0", "stage-1"]
    assert "lost: 2" in [text for _, text in found["stage-1"][1]]


def test_branches_are_laid_out_left_to_right_below_the_main_column():
    found = boxes(parse(flow_diagram(STAGES)))
    branches = [found[f"branch-{j}"] for j in range(4)]
    labels = [texts[0][1] for _, texts in branches]
    assert labels == ["train", "val", "test", "external (Corvid DX-9)"]
    xs = [box[0] for box, _ in branches]
    assert xs == sorted(xs) and len(set(xs)) == 4
    assert len({box[1] for box, _ in branches}) == 1
    last_stage = found["stage-2"][0]
    assert branches[0][0][1] > last_stage[1] + last_stage[3]


def test_output_is_deterministic_and_ids_are_unique_per_figure():
    a, b = flow_diagram(STAGES), flow_diagram(STAGES)
    assert a == b
    other = flow_diagram(STAGES[:1] + [{"label": "x", "count": "1"}])
    ids_a = [e.get("id") for e in parse(a).iter() if e.get("id")]
    ids_other = [e.get("id") for e in parse(other).iter() if e.get("id")]
    assert len(ids_a) == len(set(ids_a))
    assert not set(ids_a) & set(ids_other)


def test_colours_come_from_the_report_palette():
    svg = flow_diagram(STAGES)
    colours = set(re.findall(r'(?:fill|stroke)="(#[0-9a-fA-F]{6})"', svg))
    assert colours <= {INK, MUTED, GRID, "#ffffff"}
    assert {INK, MUTED, GRID} <= colours


def test_wrap_text_breaks_long_words_and_keeps_every_character():
    lines = wrap_text("short " + "W" * 80 + " end", 100, 11)
    assert all(text_width(line, 11) <= 100 for line in lines)
    assert "".join(lines).replace(" ", "") == ("short" + "W" * 80 + "end")
    assert wrap_text("one\ntwo", 500, 11) == ["one", "two"]


@pytest.mark.parametrize(("stages", "reason"), [
    ([], "no stages"),
    ("studies", "must be a list"),
    ([{"branches": [{"label": "a", "count": "1"}] * 2}, {"label": "b", "count": "2"}], "must be the last stage"),
    ([{"branches": [{"label": "a", "count": "1"}] * 2}], "need a stage above"),
    ([{"label": "a", "count": "1"}, {"branches": [{"label": "a", "count": "1"}] * 7}], "7 partitions; draw 2 to 6"),
    ([{"label": "a", "count": "1"}, {"branches": [{"label": "a", "count": "1"}]}], "1 partitions; draw 2 to 6"),
    ([{"label": "a"}], r"stages\[0\]\.count must be non-empty text"),
    ([{"label": "a", "count": 12}], r"count must be non-empty text, got 12"),
    ([{"label": "a", "count": "1", "excluded": "lost: 2"}], "excluded must be a list of text lines"),
    ([{"label": "a", "count": "1", "exclude": ["x"]}], "unknown key"),
    ([{"label": "a", "count": "1"}, {"branches": [{"label": "a", "count": "1"}, {"label": "b"}]}],
     r"stages\[1\]\.branches\[1\]\.count"),
])
def test_bad_input_is_a_clear_value_error(stages, reason):
    with pytest.raises(ValueError, match=reason) as err:
        flow_diagram(stages)
    assert isinstance(err.value, FlowDiagramError)


def write_cohort(tmp_path):
    table = pd.DataFrame({
        "patient_id": ["P1", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8"],
        "study_id": [f"S{i}" for i in range(9)],
        "age": [17, 30, 15, 40, 50, 60, 70, 80, 90],
        "cxr_device": ["A", "A", "A", "A", "B", "A", "A", "A", "A"],
        "cxr_path": [f"{i}.dcm" for i in range(9)],
        "finding": [0, 1, 0, 1, 0, 1, 0, 1, 0],
    })
    table.to_csv(tmp_path / "manifest.csv", index=False)
    config = {"name": "t", "manifest": "manifest.csv", "modalities": {"cxr": "cxr_path"}, "labels": ["finding"],
              "metadata": ["age", "cxr_device"], "include": [{"name": "adults", "rule": "age >= 18"}, "age < 90"],
              "split": {"fractions": {"train": 0.6, "test": 0.4}, "external": {"column": "cxr_device",
                                                                            "values": ["B"]}}}
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump(config))
    return load_cohort(tmp_path / "cohort.yaml")


def test_flow_stages_count_the_rules_and_the_partitions(tmp_path):
    cohort = write_cohort(tmp_path)
    table = cohort.table.assign(split=assign_splits(cohort.table, cohort.config.split, "patient_id"))
    test_rows = int((table["split"] == "test").sum())
    samples = {"test": [{"cxr": 0} for _ in range(test_rows)]}
    stages = flow_stages(flow_counts(cohort, table, {"train": 2}, samples), roles={"external": "unseen device"})
    source, included, partitions = stages
    assert source["count"] == "9 studies, 8 patients"
    assert source["excluded"] == ["Excluded by inclusion rules: 3 studies, 2 patients",
                                  "adults (age >= 18): 2 studies, 1 patient", "age < 90: 1 study, 1 patient"]
    assert included["count"] == "6 studies, 6 patients"
    assert [b["label"] for b in partitions["branches"]] == ["train", "test", "external: unseen device"]
    assert partitions["branches"][2]["count"] == "1 study, 1 patient"
    assert partitions["branches"][0]["excluded"] == ["quarantined (unreadable): 2 files"]
    assert partitions["branches"][1]["excluded"] == [f"cxr: {test_rows} studies read"]
    svg = flow_diagram(stages)
    assert "adults (age &gt;= 18): 2 studies, 1 patient" in svg


def test_flow_stages_without_rules_go_straight_to_the_partitions():
    flow = {"manifest": {"patients": 5, "studies": 7}, "rules": [], "included": {"patients": 5, "studies": 7},
            "splits": [{"name": "train", "patients": 3, "studies": 4}, {"name": "test", "patients": 2, "studies": 3}]}
    source, partitions = flow_stages(flow)
    assert source["excluded"] == [] and [b["label"] for b in partitions["branches"]] == ["train", "test"]
