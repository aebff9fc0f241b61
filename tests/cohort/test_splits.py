import numpy as np
import pandas as pd
import pytest

from medfm.cohort import (
    LeakageError,
    SplitError,
    SplitSpec,
    assign_splits,
    check_no_patient_leakage,
    holdout_split,
    patient_level_split,
    temporal_split,
)


def make_table(n_patients=300, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        finding = int(rng.random() < 0.2)
        for v in range(rng.integers(1, 4)):
            rows.append({"patient_id": f"P{p:04d}", "study_id": f"S{p:04d}_{v}", "finding": finding,
                         "other": int(rng.random() < 0.5)})
    return pd.DataFrame(rows)


def test_no_patient_in_two_splits_and_every_study_assigned():
    table = make_table()
    split = patient_level_split(table, {"train": 0.7, "val": 0.1, "test": 0.2}, stratify=["finding"])
    assert split.notna().all()
    assert (table.assign(split=split).groupby("patient_id")["split"].nunique() == 1).all()


def test_fractions_are_of_patients_and_labels_are_stratified():
    table = make_table(1000)
    split = patient_level_split(table, {"train": 0.7, "val": 0.1, "test": 0.2}, stratify=["finding"], seed=1)
    per_patient = table.assign(split=split).groupby("patient_id").first()
    shares = per_patient["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.01)
    assert shares["test"] == pytest.approx(0.2, abs=0.01)
    prevalence = per_patient.groupby("split")["finding"].mean()
    assert prevalence.max() - prevalence.min() < 0.02


def test_split_is_deterministic_and_seed_dependent():
    table = make_table()
    a = patient_level_split(table, {"train": 0.8, "test": 0.2}, seed=5)
    b = patient_level_split(table, {"train": 0.8, "test": 0.2}, seed=5)
    c = patient_level_split(table, {"train": 0.8, "test": 0.2}, seed=6)
    assert a.equals(b)
    assert not a.equals(c)


def test_leakage_check_fails_loudly():
    table = pd.DataFrame({"patient_id": ["A", "A", "B"], "split": ["train", "test", "test"]})
    with pytest.raises(LeakageError, match="1 patient"):
        check_no_patient_leakage(table)


def spec(**kwargs):
    return SplitSpec(**kwargs)


def sited_table():
    """Six patients at two sites; P3 has a study at each site."""
    return pd.DataFrame({
        "patient_id": ["P1", "P1", "P2", "P3", "P3", "P4", "P5", "P6"],
        "study_id": [f"S{i}" for i in range(8)],
        "site": ["a", "a", "b", "a", "b", "a", "a", "a"],
        "study_date": ["2019-05-01", "2021-03-01", "2020-02-01", "2020-06-30", "2019-12-31",
                       "2022-01-01", "2020-07-01", None],
    })


def test_patient_strategy_is_exactly_patient_level_split():
    table = make_table()
    expected = patient_level_split(table, {"train": 0.7, "val": 0.1, "test": 0.2}, "patient_id", ["finding"], 3)
    got = assign_splits(table, spec(seed=3), "patient_id", ["finding"])
    assert got.equals(expected)


def test_holdout_puts_held_out_site_and_straddling_patients_in_test():
    table = sited_table()
    split = assign_splits(table, spec(strategy="holdout", column="site", test_values=["b"]))
    by_study = dict(zip(table["study_id"], split, strict=True))
    assert by_study["S2"] == "test"  # P2: site b
    assert by_study["S3"] == by_study["S4"] == "test"  # P3 straddles: all studies to test
    assert set(split[~table["patient_id"].isin(["P2", "P3"])]) <= {"train", "val"}


def test_holdout_splits_the_rest_by_the_train_val_ratio_stratified():
    table = make_table(1000).assign(site=lambda t: np.where(t["patient_id"] < "P0200", "x", "y"))
    split = holdout_split(table, "site", ["x"], {"train": 0.6, "val": 0.2, "test": 0.2}, stratify=["finding"])
    per_patient = table.assign(split=split).groupby("patient_id").first()
    assert (per_patient.loc[per_patient["site"] == "x", "split"] == "test").all()
    rest = per_patient[per_patient["site"] == "y"]
    assert rest["split"].value_counts(normalize=True)["train"] == pytest.approx(0.75, abs=0.01)
    prevalence = rest.groupby("split")["finding"].mean()
    assert prevalence.max() - prevalence.min() < 0.02


def test_holdout_of_a_value_nobody_has_fails():
    with pytest.raises(SplitError, match="nothing to hold out"):
        holdout_split(sited_table(), "site", ["z"], {"train": 0.8, "val": 0.2})
    with pytest.raises(SplitError, match="not in the manifest"):
        holdout_split(sited_table(), "scanner", ["z"], {"train": 0.8, "val": 0.2})


def test_time_split_assigns_patients_by_their_first_study_date():
    table = sited_table().dropna()
    split = assign_splits(table, spec(strategy="time", column="study_date", cutoffs=["2020-01-01", "2020-07-01"]))
    got = table.assign(split=split).groupby("patient_id")["split"].first().to_dict()
    # P1 first seen 2019-05 (later study in 2021 follows), P3 first seen 2019-12-31,
    # P2 2020-02, P4 2022, P5 exactly on the second cutoff: test.
    assert got == {"P1": "train", "P2": "val", "P3": "train", "P4": "test", "P5": "test"}


def test_time_split_refuses_undated_patients_and_bad_dates():
    with pytest.raises(SplitError, match="1 patient.*no study_date: P6"):
        temporal_split(sited_table(), "study_date", ["2020-01-01", "2021-01-01"])
    bad = sited_table().fillna("not a date")
    with pytest.raises(SplitError, match="not a date"):
        temporal_split(bad, "study_date", ["2020-01-01", "2021-01-01"])


def test_every_strategy_ends_with_the_leakage_check(monkeypatch):
    import medfm.cohort.splits as splits

    def fail(table, patient_column="patient_id"):
        raise LeakageError("checked")

    monkeypatch.setattr(splits, "check_no_patient_leakage", fail)
    table = sited_table().dropna()
    for s in [spec(), spec(strategy="holdout", column="site", test_values=["b"]),
              spec(strategy="time", column="study_date", cutoffs=["2020-01-01", "2021-01-01"])]:
        with pytest.raises(LeakageError, match="checked"):
            assign_splits(table, s)


def device_table(n_patients=400, seed=0):
    """make_table with a device per study; every 10th patient has one study on the new device."""
    table = make_table(n_patients, seed)
    number = table["patient_id"].str[1:].astype(int)
    first_study = table["study_id"].str.endswith("_0")
    new = (number % 10 == 0) & first_study
    dates = pd.to_datetime("2018-01-01") + pd.to_timedelta(number * 5 + table["study_id"].str[-1].astype(int), "D")
    return table.assign(cxr_device=np.where(new, "Corvid DX-9", "Acme R2"),
                        site=np.where(number % 3 == 0, "b", "a"),
                        study_date=dates.dt.strftime("%Y-%m-%d"))


EXTERNAL = {"column": "cxr_device", "values": ["Corvid DX-9"]}
STRATEGIES = {
    "patient": {"fractions": {"train": 0.7, "val": 0.1, "test": 0.2}, "seed": 4},
    "holdout": {"strategy": "holdout", "column": "site", "test_values": ["b"], "seed": 4},
    "time": {"strategy": "time", "column": "study_date", "cutoffs": ["2019-01-01", "2019-07-01"]},
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_external_patients_go_whole_and_the_rest_split_as_if_alone(strategy):
    table = device_table()
    split = assign_splits(table, spec(**STRATEGIES[strategy], external=EXTERNAL), stratify=["finding"])
    new_device_patients = set(table.loc[table["cxr_device"] == "Corvid DX-9", "patient_id"])
    external = table["patient_id"].isin(new_device_patients)
    assert len(new_device_patients) == 40
    # All their studies, also those on the old device.
    assert (split[external] == "external").all() and (table.loc[external, "cxr_device"] == "Acme R2").any()
    rest = table[~external]
    alone = assign_splits(rest, spec(**STRATEGIES[strategy]), stratify=["finding"])
    pd.testing.assert_series_equal(split[~external], alone, check_dtype=False)
    assert "external" not in set(alone)


def test_external_split_name_is_configurable_and_leakage_checked(monkeypatch):
    table = device_table(100)
    split = assign_splits(table, spec(external={**EXTERNAL, "name": "corvid"}))
    assert set(split) == {"train", "val", "test", "corvid"}

    import medfm.cohort.splits as splits
    calls = []
    real = splits.check_no_patient_leakage
    monkeypatch.setattr(splits, "check_no_patient_leakage",
                        lambda t, p="patient_id": calls.append(set(t["split"])) or real(t, p))
    assign_splits(table, spec(external=EXTERNAL))
    assert {"train", "val", "test", "external"} in calls  # the last check sees every split


def test_external_errors_at_split_time():
    table = device_table(100)
    with pytest.raises(SplitError, match="external column 'scanner' is not in the manifest"):
        assign_splits(table, spec(external={"column": "scanner", "values": ["x"]}))
    with pytest.raises(SplitError, match=r"no study has cxr_device = 'Corvid DX9'.*check the spelling"):
        assign_splits(table, spec(external={"column": "cxr_device", "values": ["Corvid DX9"]}))
    # One misspelt value among good ones is still an error: it would silently shrink the partition.
    with pytest.raises(SplitError, match=r"= 'Korvid'"):
        assign_splits(table, spec(external={"column": "cxr_device", "values": ["Corvid DX-9", "Korvid"]}))
    with pytest.raises(SplitError, match="no patient is left"):
        assign_splits(table, spec(external={"column": "cxr_device", "values": ["Corvid DX-9", "Acme R2"]}))


def test_external_patients_compares_as_text_and_ignores_missing_values():
    from medfm.cohort import ExternalSpec, external_patients

    table = pd.DataFrame({"patient_id": ["A", "A", "B", "C"], "device": ["7", None, "8", "7"]})
    got = external_patients(table, ExternalSpec(column="device", values=["8"]))
    assert got.tolist() == [False, False, True, False]
    # A numeric column with a gap reads as floats: the error shows the values there are.
    floats = table.assign(device=[7, None, 8, 7])
    with pytest.raises(SplitError, match=r"no study has device = '8'.*values present: '7\.0', '8\.0'"):
        external_patients(floats, ExternalSpec(column="device", values=["8"]))


@pytest.mark.parametrize(("split", "reason"), [
    ({"external": {"column": "cxr_device", "values": ["x"], "name": "test"}}, "a split the strategy makes"),
    ({"external": {"column": "cxr_device", "values": ["x"], "name": "tune"},
      "fractions": {"train": 0.8, "tune": 0.2}}, "a split the strategy makes"),
    ({"strategy": "time", "column": "d", "cutoffs": ["2020-01-01", "2021-01-01"],
      "external": {"column": "cxr_device", "values": ["x"], "name": "val"}}, "a split the strategy makes"),
    ({"external": {"column": "cxr_device", "values": []}}, "at least 1 item"),
    ({"external": {"column": "cxr_device", "values": ["x"], "name": ""}}, "at least 1 character"),
    ({"external": {"values": ["x"]}}, "required"),
])
def test_external_spec_is_checked_when_loaded(split, reason):
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match=reason):
        SplitSpec(**split)
