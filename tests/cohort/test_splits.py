import numpy as np
import pandas as pd
import pytest

from medfm.cohort import LeakageError, check_no_patient_leakage, patient_level_split


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
