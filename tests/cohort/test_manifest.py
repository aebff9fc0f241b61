import pandas as pd
import pytest
import yaml

from medfm.cohort import Cohort, apply_inclusion, load_cohort
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
])
def test_split_spec_errors_name_the_key(tmp_path, split, key, reason):
    with pytest.raises(ConfigError, match=reason) as err:
        load_cohort(write_cohort(tmp_path, split=split), require_manifest=False)
    assert err.value.key == key


def test_split_spec_defaults_keep_the_patient_strategy(tmp_path):
    config = load_cohort(write_cohort(tmp_path), require_manifest=False)
    assert config.split.strategy == "patient" and config.split.column is None
