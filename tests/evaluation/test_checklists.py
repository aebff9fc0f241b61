"""TRIPOD+AI and CLAIM 2024 checklists: every item present, every mapping names a real report section."""

import re

import pytest

from medfm.errors import ConfigError
from medfm.evaluation.checklists import REPORT_SECTIONS, Checklist, checklist_rows, load_checklists
from medfm.evaluation.checklists import _load_checklists_file as load_file

# Sub-items as published in the TRIPOD+AI checklist (BMJ 2024;385:e078378): 27 main items, 52 in all.
TRIPOD_SUB = {"3": "abc", "5": "ab", "6": "abc", "8": "abc", "9": "abc", "12": "abcdefg", "18": "abcdef",
              "20": "abc", "23": "ab", "27": "abc"}
TRIPOD_IDS = [f"{n}{s}" for n in range(1, 28) for s in TRIPOD_SUB.get(str(n), [""])]


@pytest.fixture(scope="module")
def checklists() -> dict[str, Checklist]:
    return {c.name: c for c in load_checklists()}


def test_both_guidelines_load_with_citations(checklists):
    assert list(checklists) == ["TRIPOD+AI", "CLAIM 2024"]
    assert "BMJ 2024;385:e078378" in checklists["TRIPOD+AI"].citation
    assert "2024;6(4):e240300" in checklists["CLAIM 2024"].citation


def test_tripod_ai_has_main_items_1_to_27_and_the_published_sub_items_in_order(checklists):
    ids = [it.id for it in checklists["TRIPOD+AI"].items]
    assert len(TRIPOD_IDS) == 52 and ids == TRIPOD_IDS
    assert {int(re.match(r"\d+", i).group()) for i in ids} == set(range(1, 28))


def test_claim_2024_has_items_1_to_44_in_order(checklists):
    assert [it.id for it in checklists["CLAIM 2024"].items] == [str(n) for n in range(1, 45)]


@pytest.mark.parametrize("name", ["TRIPOD+AI", "CLAIM 2024"])
def test_every_item_is_mapped_consistently(checklists, name):
    for it in checklists[name].items:
        assert set(it.report) <= set(REPORT_SECTIONS), it.id
        assert it.coverage in {"full", "partial", "none"} and it.section and it.item, it.id
        if it.coverage == "none":
            assert it.report == () and it.note, it.id
        else:
            assert it.report, it.id
        if it.coverage == "partial":
            assert it.note, it.id


def test_statements_medfm_cannot_write_are_left_to_the_user(checklists):
    tripod = {it.id: it for it in checklists["TRIPOD+AI"].items}
    for item_id in ["17", "18a", "18b", "18d", "18e", "18f", "19"]:  # ethics, funding, COI, registration, sharing, PPI
        assert tripod[item_id].coverage == "none"
    claim = {it.id: it for it in checklists["CLAIM 2024"].items}
    assert claim["39"].report == ("failures",) and claim["44"].coverage == "none"


def test_rows_carry_what_the_template_needs(checklists):
    rows = checklist_rows(checklists["TRIPOD+AI"])
    assert len(rows) == 52 and set(rows[0]) == {"id", "section", "item", "report", "coverage", "note"}
    row = next(r for r in rows if r["id"] == "11")
    assert row["report"] == ["data", "methods", "results"]  # report order, a plain list
    assert all(isinstance(r["note"], str) for r in rows)


GOOD_ITEM = "{id: '1', section: Title, item: a title, report: [summary], coverage: full}"


def write(tmp_path, *items):
    path = tmp_path / "checklists.yaml"
    body = "\n".join(f"      - {it}" for it in items)
    path.write_text(f"checklists:\n  - name: X\n    citation: Someone 2024.\n    items:\n{body}\n")
    return path


def test_a_valid_file_loads(tmp_path):
    (checklist,) = load_file(write(tmp_path, GOOD_ITEM))
    assert checklist.items[0].report == ("summary",) and checklist.items[0].note == ""


@pytest.mark.parametrize(("items", "message"), [
    (["{id: '1', section: T, item: t, report: [summary, appendix], coverage: full}"], "unknown section id"),
    ([GOOD_ITEM, GOOD_ITEM], "item id repeated: 1"),
    (["{id: '1', section: T, item: t, report: [data], coverage: none, note: n}"], "coverage 'none'"),
    (["{id: '1', section: T, item: t, report: [], coverage: full}"], "coverage 'full'"),
    (["{id: '1', section: T, item: t, report: [], coverage: none}"], "needs a note"),
    (["{id: '1', section: T, item: t, report: [data], coverage: partial}"], "needs a note"),
    (["{id: '1', section: T, item: t, report: [data], coverage: most}"], "coverage 'most'"),
    (["{id: '1', section: T, item: t, report: [data]}"], "needs the fields"),
])
def test_a_bad_mapping_is_refused_naming_the_file_and_item(tmp_path, items, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_file(write(tmp_path, *items))
    assert str(tmp_path) in str(err.value) and "X.items" in str(err.value)


def test_unknown_section_error_names_the_bad_id(tmp_path):
    with pytest.raises(ConfigError, match=r"id 1\)\.report: unknown section id \['appendix'\]"):
        load_file(write(tmp_path, "{id: '1', section: T, item: t, report: [summary, appendix], coverage: full}"))


def test_not_yaml_is_refused(tmp_path):
    path = tmp_path / "checklists.yaml"
    path.write_text("checklists: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_file(path)
