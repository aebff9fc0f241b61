"""Patient-level splits: a patient's studies never straddle train and test.

Three strategies, chosen by ``split.strategy`` in the cohort YAML and dispatched by
:func:`assign_splits`: a stratified random split (:func:`patient_level_split`), a
held-out site or device (:func:`holdout_split`) and a temporal split
(:func:`temporal_split`). Each ends with :func:`check_no_patient_leakage`.

With any strategy, ``split.external`` first sets aside every patient seen on a device or
at a site never used for training (:func:`external_patients`): a partition that measures
the drop on unseen acquisition conditions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medfm.errors import MedfmError

if TYPE_CHECKING:
    from medfm.cohort.manifest import ExternalSpec, SplitSpec


class LeakageError(MedfmError):
    """The same patient (or a near-identical image) appears in more than one split."""


class SplitError(MedfmError):
    """The table cannot be split as asked: a missing column, unreadable dates, no held-out study."""


def patient_level_split(
    table: pd.DataFrame,
    fractions: Mapping[str, float],
    patient_column: str = "patient_id",
    stratify: Sequence[str] = (),
    seed: int = 0,
) -> pd.Series:
    """Assign every study to a split so that each patient lands in exactly one.

    Patients are grouped into strata by which of the ``stratify`` labels they ever
    have positive; each stratum is shuffled with ``seed`` and cut by ``fractions``,
    so rare label combinations are spread over the splits as evenly as counts allow.

    Returns:
        Series of split names aligned with ``table``'s index.
    """
    names = list(fractions)
    weights = np.array([fractions[n] for n in names], dtype=float)
    per_patient = table.groupby(patient_column, sort=True)
    if stratify:
        signature = per_patient[list(stratify)].max().fillna(0).astype(int).astype(str).agg("".join, axis=1)
    else:
        signature = pd.Series("all", index=per_patient.size().index)

    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    carry = np.zeros(len(names))  # remainders carried across strata keep totals on target
    for _, patients in sorted(signature.groupby(signature).groups.items()):
        patients = list(patients)
        rng.shuffle(patients)
        counts = _largest_remainder(len(patients) * weights + carry)
        carry += len(patients) * weights - counts
        start = 0
        for name, count in zip(names, counts, strict=True):
            for patient in patients[start:start + count]:
                assignment[patient] = name
            start += count
    split = table[patient_column].map(assignment)
    check_no_patient_leakage(table.assign(split=split), patient_column)
    return split.rename("split")


def _largest_remainder(quotas: np.ndarray) -> np.ndarray:
    total = int(round(quotas.sum()))
    counts = np.floor(np.clip(quotas, 0, None)).astype(int)
    order = np.argsort(-(quotas - counts), kind="stable")
    for i in order[: total - counts.sum()]:
        counts[i] += 1
    return counts


def check_no_patient_leakage(table: pd.DataFrame, patient_column: str = "patient_id") -> None:
    """Raise :class:`LeakageError` if any patient has studies in two splits."""
    splits_per_patient = table.groupby(patient_column)["split"].nunique()
    leaked = splits_per_patient[splits_per_patient > 1]
    if len(leaked):
        shown = ", ".join(map(str, leaked.index[:5]))
        raise LeakageError(f"{len(leaked)} patient(s) appear in more than one split: {shown}")


def holdout_split(
    table: pd.DataFrame,
    column: str,
    test_values: Sequence[str],
    fractions: Mapping[str, float],
    patient_column: str = "patient_id",
    stratify: Sequence[str] = (),
    seed: int = 0,
) -> pd.Series:
    """Hold out a site, device or any other group as the test split.

    Studies whose ``column`` (compared as text) is one of ``test_values`` form
    ``test``. A patient with any such study has *all* their studies in ``test``, so
    no patient leaks; the other patients are split into ``train``/``val`` by
    :func:`patient_level_split` with the ratio of ``fractions["train"]`` to
    ``fractions["val"]`` (a missing entry counts as 0), stratified by ``stratify``.

    Raises:
        SplitError: ``column`` is not in the table, or no study has a held-out value.
    """
    _require_column(table, column)
    held_out = table[column].astype("string").isin([str(v) for v in test_values]).fillna(False)
    if not held_out.any():
        raise SplitError(f"no study has {column} in {list(test_values)}; nothing to hold out")
    test_patients = set(table.loc[held_out, patient_column])
    in_test = table[patient_column].isin(test_patients)
    split = pd.Series("test", index=table.index, dtype=object, name="split")
    rest = table[~in_test]
    if len(rest):
        train, val = fractions.get("train", 0.0), fractions.get("val", 0.0)
        if train + val <= 0:
            raise SplitError(f"fractions {dict(fractions)} give no share to train or val")
        ratio = {"train": train / (train + val), "val": val / (train + val)}
        split[~in_test] = patient_level_split(rest, ratio, patient_column, stratify, seed)
    check_no_patient_leakage(table.assign(split=split), patient_column)
    return split


def temporal_split(
    table: pd.DataFrame,
    column: str,
    cutoffs: Sequence[date | str],
    patient_column: str = "patient_id",
) -> pd.Series:
    """Split patients in time by the date of their FIRST study.

    A patient whose first ``column`` date is before ``cutoffs[0]`` goes to ``train``,
    before ``cutoffs[1]`` to ``val``, otherwise to ``test``; all their later studies
    follow them, so a patient never straddles two splits (their later studies may
    lie after a cutoff: the split is prospective per patient, not per study).

    Raises:
        SplitError: ``column`` is missing, a date cannot be parsed, a patient has no
            date at all, or the cutoffs are not two ascending dates.
    """
    _require_column(table, column)
    if len(cutoffs) != 2 or not pd.Timestamp(cutoffs[0]) < pd.Timestamp(cutoffs[1]):
        raise SplitError(f"cutoffs must be two ascending dates, got {list(cutoffs)}")
    first, second = pd.Timestamp(cutoffs[0]), pd.Timestamp(cutoffs[1])
    try:
        dates = pd.to_datetime(table[column], errors="raise")
    except (ValueError, TypeError) as err:
        raise SplitError(f"column {column!r} holds a value that is not a date ({err})") from None
    first_date = dates.groupby(table[patient_column]).min()
    undated = first_date.index[first_date.isna()]
    if len(undated):
        raise SplitError(f"{len(undated)} patient(s) have no {column}: {', '.join(map(str, undated[:5]))}")
    by_patient = pd.Series(np.where(first_date < first, "train", np.where(first_date < second, "val", "test")),
                           index=first_date.index)
    split = table[patient_column].map(by_patient).astype(object).rename("split")
    check_no_patient_leakage(table.assign(split=split), patient_column)
    return split


def assign_splits(
    table: pd.DataFrame,
    spec: SplitSpec,
    patient_column: str = "patient_id",
    stratify: Sequence[str] = (),
) -> pd.Series:
    """Assign every study to a split by the cohort's ``split`` block.

    With ``spec.external``, the patients :func:`external_patients` selects form that
    split with all their studies, and the strategy runs, unchanged (same seed), on the
    other patients alone: a device or site never seen in training, to measure the drop on
    unseen acquisition conditions.

    Returns:
        Series named ``split`` aligned with ``table``'s index; no patient in two splits.

    Raises:
        SplitError: as the strategy; or ``external.column`` is missing, one of
            ``external.values`` matches no study, or every patient is external.
    """
    strategy = _STRATEGIES[spec.strategy]
    if spec.external is None:
        return strategy(table, spec, patient_column, stratify)
    external = external_patients(table, spec.external, patient_column)
    if external.all():
        raise SplitError(f"every patient has a study with {spec.external.column} in {spec.external.values}; "
                         f"no patient is left for the {spec.strategy!r} split")
    split = pd.Series(spec.external.name, index=table.index, dtype=object, name="split")
    split[~external] = strategy(table[~external], spec, patient_column, stratify)
    check_no_patient_leakage(table.assign(split=split), patient_column)
    return split


def external_patients(table: pd.DataFrame, external: ExternalSpec, patient_column: str = "patient_id") -> pd.Series:
    """Which studies belong to a patient with any study whose ``external.column`` is in ``external.values``.

    Values are compared as text. Every value must match at least one study: a misspelt
    device name would otherwise leave the external partition silently smaller or empty.

    Returns:
        Boolean Series aligned with ``table``'s index, true for all of such a patient's studies.

    Raises:
        SplitError: the column is missing, or a value matches no study.
    """
    column = external.column
    if column not in table.columns:
        raise SplitError(f"external column {column!r} is not in the manifest")
    text = table[column].astype("string")
    present = set(text.dropna())
    unmatched = [v for v in external.values if str(v) not in present]
    if unmatched:
        shown = sorted(present)[:10]
        raise SplitError(f"external: no study has {column} = {', '.join(map(repr, unmatched))} "
                         f"(of {list(external.values)}); check the spelling against the manifest "
                         f"(values present: {', '.join(map(repr, shown))}{', ...' if len(present) > 10 else ''})")
    matched = text.isin([str(v) for v in external.values]).fillna(False).astype(bool)
    return table[patient_column].isin(set(table.loc[matched, patient_column])).rename(None)


def _require_column(table: pd.DataFrame, column: str) -> None:
    if column not in table.columns:
        raise SplitError(f"split column {column!r} is not in the manifest")


_STRATEGIES: dict[str, Callable[[pd.DataFrame, SplitSpec, str, Sequence[str]], pd.Series]] = {
    "patient": lambda t, s, p, strat: patient_level_split(t, s.fractions, p, strat, s.seed),
    "holdout": lambda t, s, p, strat: holdout_split(t, s.column, s.test_values, s.fractions, p, strat, s.seed),
    "time": lambda t, s, p, strat: temporal_split(t, s.column, s.cutoffs, p),
}
