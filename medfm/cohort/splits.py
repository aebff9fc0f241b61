"""Patient-level splits: a patient's studies never straddle train and test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medfm.errors import MedfmError


class LeakageError(MedfmError):
    """The same patient appears in more than one split."""


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
