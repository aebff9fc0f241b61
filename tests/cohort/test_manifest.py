import pandas as pd
import pytest
import yaml

from medfm.cohort import Cohort, Exclusion, InclusionRule, apply_inclusion, apply_inclusion_rules, load_cohort
from medfm.errors import ConfigError


def write_cohort(tmp_path, **extra):
    table = pd.DataFrame({
        "patient_id": ["P1", "P2", "P3", "P4", "P5"],
        "study_id": ["S1", "S2", "S3", "S4", "S5"],
        "site": ["site_a", "site_b", "site_a", "site_c", "site_a"],
        "age": [35, 62, 71, None, 45],
        "cxr_path": ["a.dcm", "b.dcm", "c.dcm", "d.dcm", "e.dcm"],
        "finding": [0, 1, 1, 0, 1],
    })
    table.to_csv(tmp_path / "manifest.csv", index=False)
    config = {"name": "t", "manifest": "manifest.csv", "modalities": {"cxr": "cxr_path"}, "labels": ["finding"],
              "metadata": ["site", "age"], **extra}
    path = tmp_path / "cohort.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_without_include_every_row_is_kept(tmp_path):
    cohort = load_cohort(write_cohort(tmp_path))
    assert isinstance(cohort, Cohort)
    assert len(cohort.table) == 5 and cohort.excluded == 0


def test_a_parquet_manifest_loads_like_its_csv(tmp_path):
    csv_cohort = load_cohort(write_cohort(tmp_path, include="age > 40"))
    pd.read_csv(tmp_path / "manifest.csv").to_parquet(tmp_path / "manifest.parquet", index=False)
    config = yaml.safe_load((tmp_path / "cohort.yaml").read_text()) | {"manifest": "manifest.parquet"}
    (tmp_path / "parquet.yaml").write_text(yaml.safe_dump(config))
    parquet_cohort = load_cohort(tmp_path / "parquet.yaml")
    pd.testing.assert_frame_equal(parquet_cohort.table, csv_cohort.table, check_dtype=False)


def test_include_keeps_matching_rows_in_order_with_their_index(tmp_path):
    cohort = load_cohort(write_cohort(tmp_path, include="age >= 40 AND site <> 'site_b'"))
    # P4's age is missing: the expression is NULL there, so the row is excluded as in SQL.
    assert cohort.table["study_id"].tolist() == ["S3", "S5"]
    assert cohort.table.index.tolist() == [2, 4]
    assert cohort.excluded == 3


def test_include_order_survives_a_larger_table():
    table = pd.DataFrame({"x": range(5000)}, index=range(10000, 0, -2))
    kept = apply_inclusion(table, "x % 3 = 0")
    assert kept["x"].tolist() == list(range(0, 5000, 3))
    assert kept.index.tolist() == table.index[::3].tolist()


def test_sql_error_names_the_include_key_with_duckdbs_message(tmp_path):
    path = write_cohort(tmp_path, include="agee >= 40")
    with pytest.raises(ConfigError, match=r"cohort\.yaml: include: .*agee") as err:
        load_cohort(path)
    assert err.value.key == "include"


@pytest.mark.parametrize("rule", [
    "age > 1; DROP TABLE manifest",
    "age > 1) UNION SELECT * FROM manifest WHERE (true",
    "age > 1, site = 'a'",
])
def test_only_a_single_expression_is_accepted(tmp_path, rule):
    with pytest.raises(ConfigError, match="include"):
        load_cohort(write_cohort(tmp_path, include=rule))


def test_non_boolean_expression_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="include: expression must be boolean, it gives"):
        load_cohort(write_cohort(tmp_path, include="age + 1"))


def test_include_cannot_read_other_files(tmp_path):
    (tmp_path / "other.csv").write_text("a\n1\n")
    rule = f"age > (SELECT max(a) FROM read_csv('{tmp_path / 'other.csv'}'))"
    with pytest.raises(ConfigError, match="include"):
        load_cohort(write_cohort(tmp_path, include=rule))


def test_trailing_comment_does_not_swallow_the_query(tmp_path):
    cohort = load_cohort(write_cohort(tmp_path, include="site = 'site_a' -- site A only"))
    assert cohort.table["study_id"].tolist() == ["S1", "S3", "S5"]


@pytest.mark.parametrize(("split", "key", "reason"), [
    ({"strategy": "holdout", "column": "site"}, "split.test_values", "requires test_values"),
    ({"strategy": "holdout", "test_values": ["site_a"]}, "split.column", "requires column"),
    ({"strategy": "time", "column": "study_date"}, "split.cutoffs", "requires cutoffs"),
    ({"strategy": "time", "column": "d", "cutoffs": ["2021-01-01", "2020-01-01"]}, "split.cutoffs", "ascending"),
    ({"strategy": "time", "column": "d", "cutoffs": ["2021-01-01"]}, "split.cutoffs", "two ascending"),
    ({"column": "site"}, "split.column", "only used by strategy"),
    ({"strategy": "holdout", "column": "site", "test_values": []}, "split.test_values", "at least one"),
    ({"strategy": "random"}, "split.strategy", "'patient', 'holdout' or 'time'"),
    ({"external": {"column": "site", "values": ["site_c"], "name": "val"}}, "split.external",
     "external.name 'val' is a split the strategy makes"),
    ({"external": {"column": "site", "values": []}}, "split.external.values", "at least 1 item"),
])
def test_split_spec_errors_name_the_key(tmp_path, split, key, reason):
    with pytest.raises(ConfigError, match=reason) as err:
        load_cohort(write_cohort(tmp_path, split=split), require_manifest=False)
    assert err.value.key == key


def test_split_spec_defaults_keep_the_patient_strategy(tmp_path):
    config = load_cohort(write_cohort(tmp_path), require_manifest=False)
    assert config.split.strategy == "patient" and config.split.column is None


def write_flow_cohort(tmp_path, include):
    """Four patients, seven studies; P1 loses one of three studies to the age rule and stays."""
    table = pd.DataFrame({
        "patient_id": ["P1", "P1", "P1", "P2", "P3", "P3", "P4"],
        "study_id": [f"S{i}" for i in range(1, 8)],
        "age": [17, 18, 19, 15, 40, None, 70],
        "site": ["a", "a", "b", "a", "c", "c", "b"],
        "cxr_path": [f"{i}.dcm" for i in range(1, 8)],
        "finding": [0, 1, 0, 1, 0, 1, 0],
    })
    table.to_csv(tmp_path / "manifest.csv", index=False)
    config = {"name": "t", "manifest": "manifest.csv", "modalities": {"cxr": "cxr_path"}, "labels": ["finding"],
              "metadata": ["site", "age"], "include": include}
    path = tmp_path / "cohort.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def counts(exclusion):
    return (exclusion.studies_excluded, exclusion.patients_excluded,
            exclusion.studies_remaining, exclusion.patients_remaining)


def test_each_rule_counts_the_studies_and_patients_it_removed(tmp_path):
    cohort = load_cohort(write_flow_cohort(tmp_path, [{"name": "adults", "rule": "age >= 18"}, "site <> 'c'"]))
    adults, not_c = cohort.exclusions
    assert (adults.name, adults.rule) == ("adults", "age >= 18")
    # S1 (P1, 17), S4 (P2, 15) and S6 (P3, no age: NULL excludes). P2 lost every study; P1 and P3 kept some.
    assert counts(adults) == (3, 1, 4, 3)
    assert (not_c.name, not_c.rule) == ("site <> 'c'", "site <> 'c'")  # unnamed: the expression is the name
    assert counts(not_c) == (1, 1, 3, 2)  # S5, P3's last study
    assert (cohort.manifest_studies, cohort.manifest_patients) == (7, 4)
    assert cohort.excluded == 4 == sum(e.studies_excluded for e in cohort.exclusions)
    assert cohort.table["study_id"].tolist() == ["S2", "S3", "S7"]
    assert cohort.table.index.tolist() == [1, 2, 6]


def test_rule_order_changes_the_counts_not_the_rows(tmp_path):
    cohort = load_cohort(write_flow_cohort(tmp_path, ["site <> 'c'", {"name": "adults", "rule": "age >= 18"}]))
    not_c, adults = cohort.exclusions
    assert counts(not_c) == (2, 1, 5, 3)  # S5, S6: all of P3
    assert counts(adults) == (2, 1, 3, 2)  # S1 (P1 keeps two), S4 (P2)
    assert cohort.table["study_id"].tolist() == ["S2", "S3", "S7"]


def test_a_single_string_is_one_rule_named_by_its_expression(tmp_path):
    cohort = load_cohort(write_flow_cohort(tmp_path, "age >= 18"))
    (only,) = cohort.exclusions
    assert (only.name, only.rule) == ("age >= 18", "age >= 18")
    assert counts(only) == (3, 1, 4, 3)
    assert cohort.excluded == 3


def test_without_rules_there_are_no_exclusions_but_the_totals_stand(tmp_path):
    for include in (None, []):
        cohort = load_cohort(write_flow_cohort(tmp_path, include))
        assert cohort.exclusions == () and cohort.excluded == 0
        assert (cohort.manifest_studies, cohort.manifest_patients) == (7, 4)


def test_a_rule_that_removes_nothing_counts_zero(tmp_path):
    cohort = load_cohort(write_flow_cohort(tmp_path, ["age >= 18", "TRUE"]))
    assert counts(cohort.exclusions[1]) == (0, 0, 4, 3)


@pytest.mark.parametrize(("include", "reason"), [
    (["age > 1", "age > 1; DROP TABLE manifest"], r"include\[1\] must be one SQL boolean expression"),
    (["age > 1", "age >"], r"include\[1\] is not a single SQL expression"),
    ([{"name": "adults"}], r"include\[0\]: rule: Field required"),
    ([{"rule": "age > 1", "title": "x"}], r"include\[0\]: title: unknown key"),
    (["age > 1", 3], r"include\[1\]: expected an SQL expression or \{name, rule\}, got int"),
    ([{"name": "adults", "rule": "age >= 18"}, {"name": "adults", "rule": "age > 1"}],
     r"include\[1\]: name 'adults' is already used by include\[0\]"),
    ({"rule": "age > 1"}, "include must be one SQL expression or a list of rules"),
])
def test_rule_list_errors_name_the_position(tmp_path, include, reason):
    with pytest.raises(ConfigError, match=reason) as err:
        load_cohort(write_flow_cohort(tmp_path, include), require_manifest=False)
    assert err.value.key == "include"


@pytest.mark.parametrize(("rule", "reason"), [
    ("agee >= 40", "agee"),
    ("age + 1", "expression must be boolean"),
])
def test_duckdb_errors_of_a_listed_rule_name_its_position(tmp_path, rule, reason):
    with pytest.raises(ConfigError, match=rf"include\[1\]: .*{reason}") as err:
        load_cohort(write_flow_cohort(tmp_path, ["site <> 'c'", {"name": "bad", "rule": rule}]))
    assert err.value.key == "include[1]"


def test_apply_inclusion_rules_works_on_any_table():
    table = pd.DataFrame({"pid": ["A", "A", "B"], "x": [1, 2, 3]})
    kept, exclusions = apply_inclusion_rules(table, [InclusionRule(name="big", rule="x > 1")], patient_column="pid")
    assert kept["x"].tolist() == [2, 3]
    assert exclusions == (Exclusion("big", "x > 1", 1, 0, 2, 2),)


# -- manifest problems: one line each, naming the file, the key, the line and the value ----------------


def set_cell(row, column, value):
    def change(table):
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
        return table
    return change


def write_changed_cohort(tmp_path, change, **extra):
    path = write_cohort(tmp_path, **extra)
    table = pd.read_csv(tmp_path / "manifest.csv", dtype={"patient_id": str, "study_id": str})
    change(table).to_csv(tmp_path / "manifest.csv", index=False)
    return path


@pytest.mark.parametrize(("change", "extra", "key", "reason"), [
    (set_cell(2, "finding", "maybe"), {}, "labels",
     "manifest manifest.csv line 4 (study 'S3'): column 'finding' holds 'maybe'; labels must be 0, 1 or empty"),
    (set_cell(0, "finding", 2), {}, "labels",
     "manifest manifest.csv line 2 (study 'S1'): column 'finding' holds '2'; labels must be 0, 1 or empty"),
    (set_cell(4, "finding", -1), {}, "labels",
     "manifest manifest.csv line 6 (study 'S5'): column 'finding' holds '-1'; labels must be 0, 1 or empty"),
    (set_cell(1, "age", "sixty"), {}, "metadata",
     "manifest manifest.csv line 3 (study 'S2'): column 'age' holds 'sixty'; age must be a number of years >= 0 "
     "or empty (rename the column if it holds something else)"),
    (set_cell(1, "age", -4), {}, "metadata",
     "manifest manifest.csv line 3 (study 'S2'): column 'age' holds '-4.0'; age must be a number of years >= 0 "
     "or empty (rename the column if it holds something else)"),
    (set_cell(4, "study_id", "S3"), {}, "study_column",
     "study id 'S3' appears twice in manifest manifest.csv (line 4 and line 6)"),
    (set_cell(1, "study_id", None), {}, "study_column",
     "manifest manifest.csv line 3: study_id is empty; every study needs one"),
    (set_cell(3, "patient_id", None), {}, "patient_column",
     "manifest manifest.csv line 5 (study 'S4'): patient_id is empty; every study needs one"),
    (lambda t: t, {"labels": ["finding", "effusion"]}, "labels",
     "column(s) ['effusion'] not in manifest manifest.csv"),
    (lambda t: t, {"modalities": {"cxr": "cxr_file"}}, "modalities.cxr",
     "column(s) ['cxr_file'] not in manifest manifest.csv"),
    (lambda t: t, {"metadata": ["site", "age", "device"]}, "metadata",
     "column(s) ['device'] not in manifest manifest.csv"),
    (lambda t: t, {"split": {"external": {"column": "scanner", "values": ["x"]}}}, "split.external.column",
     "column(s) ['scanner'] not in manifest manifest.csv"),
    (lambda t: t.assign(study_date=["2020-01-05", "2021-03-01", "last May", None, "2022-07-30"]),
     {"split": {"strategy": "time", "column": "study_date", "cutoffs": ["2021-01-01", "2022-01-01"]}},
     "split.column", "manifest manifest.csv line 4 (study 'S3'): column 'study_date' holds 'last May', "
                     "not a date (YYYY-MM-DD)"),
])
def test_each_manifest_problem_is_one_line_naming_file_key_row_and_value(tmp_path, change, extra, key, reason):
    path = write_changed_cohort(tmp_path, change, **extra)
    with pytest.raises(ConfigError) as err:
        load_cohort(path)
    assert str(err.value) == f"{path}: {key}: {reason}"
    assert err.value.key == key


@pytest.mark.parametrize(("content", "reason"), [
    ("patient_id,study_id,finding,finding\nP1,S1,0,1\n",
     "manifest manifest.csv: column(s) ['finding'] appear more than once in the header"),
    ("patient_id,study_id\nP1,S1\nP2,S2,extra\n", "manifest manifest.csv: not a readable CSV file (Error tokenizing "
                                                  "data. C error: Expected 2 fields in line 3, saw 3)"),
    ("", "manifest manifest.csv: not a readable CSV file (No columns to parse from file)"),
])
def test_an_unreadable_manifest_is_one_line(tmp_path, content, reason):
    path = write_cohort(tmp_path)
    (tmp_path / "manifest.csv").write_text(content)
    with pytest.raises(ConfigError) as err:
        load_cohort(path)
    assert str(err.value) == f"{path}: manifest: {reason}"


def test_a_missing_manifest_file_names_the_key(tmp_path):
    path = write_cohort(tmp_path, manifest="elsewhere/manifest.csv")
    with pytest.raises(ConfigError) as err:
        load_cohort(path)
    assert str(err.value) == f"{path}: manifest: file not found: elsewhere/manifest.csv"


def test_a_parquet_manifest_names_rows_not_lines(tmp_path):
    path = write_changed_cohort(tmp_path, set_cell(2, "finding", "maybe"), manifest="manifest.parquet")
    pd.read_csv(tmp_path / "manifest.csv", dtype=str).to_parquet(tmp_path / "manifest.parquet", index=False)
    with pytest.raises(ConfigError) as err:
        load_cohort(path)
    assert str(err.value) == (f"{path}: labels: manifest manifest.parquet row 3 (study 'S3'): column 'finding' "
                              "holds 'maybe'; labels must be 0, 1 or empty")


@pytest.mark.parametrize("values", [[1.0, None, 0.0, 1.0, 0.0], [True, False, False, True, True]])
def test_labels_may_be_empty_float_or_boolean(tmp_path, values):
    path = write_changed_cohort(tmp_path, lambda t: t.assign(finding=values))
    assert len(load_cohort(path).table) == 5


def test_missing_files_are_checked_only_when_asked(tmp_path):
    path = write_cohort(tmp_path, modalities={"cxr": "cxr_path", "ecg": "ecg_path"}, include="age > 40")
    table = pd.read_csv(tmp_path / "manifest.csv")
    table.assign(ecg_path=["ecg/1", None, "ecg/3", None, "ecg/5"]).to_csv(tmp_path / "manifest.csv", index=False)
    assert len(load_cohort(path).table) == 3  # the readers report a missing file when a study is read
    for name in ("b.dcm", "c.dcm", "e.dcm"):  # the rows age > 40 keeps: S2, S3, S5
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "ecg").mkdir()
    (tmp_path / "ecg/3.hea").write_text("3 12 500 5000\n")  # a WFDB record is its header
    with pytest.raises(ConfigError) as err:
        load_cohort(path, check_files=True)
    assert str(err.value) == f"{path}: modalities.ecg: study 'S5': file not found: ecg/5 (under {tmp_path})"
    (tmp_path / "ecg/5.hea").write_text("5 12 500 5000\n")
    assert len(load_cohort(path, check_files=True).table) == 3


def test_a_spreadsheets_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = write_cohort(tmp_path)
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert load_cohort(path).table.columns[0] == "patient_id"
