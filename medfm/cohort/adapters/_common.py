"""Helpers shared by the public-dataset adapters: locating published CSVs and label policies."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from medfm.errors import MedfmError, MedfmReadError

UncertainPolicy = Literal["unknown", "positive", "negative"]
"""What a CheXpert-style uncertain label (-1) becomes: NaN, 1.0 or 0.0."""

_UNCERTAIN_VALUE = {"unknown": np.nan, "positive": 1.0, "negative": 0.0}


class DatasetLayoutError(MedfmReadError):
    """A public dataset's folder does not have the published layout (a file or column is missing)."""


def find_table(root: Path, name: str) -> Path:
    """The published CSV ``name`` under ``root``, plain or gzipped (PhysioNet ships both).

    Raises:
        DatasetLayoutError: neither ``name`` nor ``name.gz`` exists.
    """
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetLayoutError(root / name, f"expected file {name} (or {name}.gz) is missing; "
                                          "is this the dataset's root folder?")


def read_table(path: Path, columns: Iterable[str], dtype: dict[str, type] | None = None) -> pd.DataFrame:
    """Read a published CSV and check that every column the adapter relies on is there.

    Raises:
        DatasetLayoutError: the file cannot be parsed or lacks a column (named in the message).
    """
    try:
        table = pd.read_csv(path, dtype=dtype, low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DatasetLayoutError(path, f"cannot read CSV ({err})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetLayoutError(path, f"column(s) {missing} missing; found {list(table.columns)}")
    return table


# The 14 CheXpert-labeller findings, in the order CheXpert's own CSVs list them.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)


def chexpert_labels(table: pd.DataFrame, labels: Sequence[str], uncertain: UncertainPolicy,
                    source: Path) -> pd.DataFrame:
    """Map CheXpert-labeller values 1 / 0 / -1 / blank to 1.0 / 0.0 / policy / NaN.

    Blank means "not mentioned in the report", which is not the same as absent, so it stays
    NaN whatever the policy. Columns come back in ``labels`` order, named in snake case.

    Raises:
        MedfmError: ``source`` holds a value other than 1, 0, -1 or blank.
    """
    numeric = table[list(labels)].apply(pd.to_numeric, errors="coerce").astype(float)
    bad = (numeric.notna() & ~numeric.isin([1.0, 0.0, -1.0])).to_numpy()
    if bad.any():
        raise MedfmError(f"{source}: unexpected label values {sorted(set(numeric.to_numpy()[bad].tolist()))}")
    numeric.columns = [snake_case(c) for c in labels]
    return numeric.replace(-1.0, _UNCERTAIN_VALUE[uncertain])


def snake_case(label: str) -> str:
    """``"Pleural Effusion"`` → ``"pleural_effusion"``: label names as medfm columns spell them."""
    return "_".join(label.lower().replace("/", " ").split())


def first_by_preference(table: pd.DataFrame, group: str, rank: pd.Series, tiebreak: Sequence[str]) -> pd.DataFrame:
    """One row per ``group``: the lowest ``rank``, then the first by ``tiebreak`` (deterministic)."""
    ordered = table.assign(_rank=rank).sort_values(["_rank", *tiebreak], kind="stable")
    return ordered.drop_duplicates(group, keep="first").drop(columns="_rank")
