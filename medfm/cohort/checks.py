"""Checks of a manifest table against its cohort YAML; each problem is one ConfigError line naming the row."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medfm.errors import ConfigError
from medfm.keys import Modality

if TYPE_CHECKING:
    from medfm.cohort.manifest import Cohort, CohortConfig

LABEL_VALUES = (0, 1)


def check_manifest(table: pd.DataFrame, config: CohortConfig, source: Path, what: str,
                   first_line: int | None = None) -> pd.DataFrame:
    """Check a manifest table against its cohort; the first problem becomes a one-line ConfigError.

    Checked: every column the cohort names exists (modalities, labels, metadata, ids, the
    split's and the near-duplicate check's columns); patient and study ids are non-empty
    and study ids unique; label values are 0, 1 or empty (NaN: unknown); ``age``, when
    present, is a number >= 0 or empty (Table 1 reads it as years); the date column of a
    ``time`` split holds dates or is empty. File paths and other metadata are free text.

    Args:
        what: the table, as errors name it (``manifest manifest.csv``).
        first_line: the file line of the first row (2 for a CSV with its header on line 1):
            errors then say ``line N``; None says ``row N`` (1-based).

    Raises:
        ConfigError: keyed by the YAML key naming the column (``labels``, ``study_column``,
            ``modalities.cxr``, ...); the reason names the table, the line or row, the
            study and the value.
    """
    wanted = {"patient_column": [config.patient_column], "study_column": [config.study_column],
              "labels": config.labels, "metadata": config.metadata}
    for key in config.modalities:
        wanted[f"modalities.{key}"] = config.columns_of(key)
    split = config.split
    if split.column is not None:
        wanted["split.column"] = [split.column]
    if split.external is not None:
        wanted["split.external.column"] = [split.external.column]
    if config.near_duplicates is not None:
        wanted["near_duplicates.column"] = [config.near_duplicates.column]
    for key, columns in wanted.items():
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ConfigError(source, key, f"column(s) {missing} not in {what}")

    def row(position: int) -> str:
        return f"line {position + first_line}" if first_line is not None else f"row {position + 1}"

    def where(position: int) -> str:
        study = table[config.study_column].iloc[position]
        return f"{what} {row(position)}" + ("" if pd.isna(study) else f" (study {study!r})")

    for key in ("patient_column", "study_column"):
        column = getattr(config, key)
        empty = _positions(table[column].isna() | (table[column].astype(str).str.strip() == ""))
        if empty:
            raise ConfigError(source, key, f"{where(empty[0])}: {column} is empty; every study needs one")
    repeated = _positions(table[config.study_column].duplicated(keep=False))
    if repeated:
        study = table[config.study_column].iloc[repeated[0]]
        again = next(p for p in repeated[1:] if table[config.study_column].iloc[p] == study)
        raise ConfigError(source, "study_column", f"study id {study!r} appears twice in {what} "
                                                  f"({row(repeated[0])} and {row(again)})")
    for label in config.labels:
        values = table[label]
        bad = _positions(values.notna() & ~pd.to_numeric(values, errors="coerce").isin(LABEL_VALUES))
        if bad:
            raise ConfigError(source, "labels", f"{where(bad[0])}: column {label!r} holds "
                                                f"{_shown(values.iloc[bad[0]])}; labels must be 0, 1 or empty")
    _check_age(table, config, source, where)
    if split.strategy == "time":
        with warnings.catch_warnings():  # pandas warns when it cannot infer one format; the NaT says it all
            warnings.simplefilter("ignore", UserWarning)
            dates = pd.to_datetime(table[split.column], errors="coerce")
        bad = _positions(table[split.column].notna() & dates.isna())
        if bad:
            raise ConfigError(source, "split.column", f"{where(bad[0])}: column {split.column!r} holds "
                                                      f"{_shown(table[split.column].iloc[bad[0]])}, not a date "
                                                      "(YYYY-MM-DD)")
    return table


def _check_age(table: pd.DataFrame, config: CohortConfig, source: Path, where: Callable[[int], str]) -> None:
    from medfm.cohort.describe import AGE_COLUMN  # describe imports manifest, which imports this module

    if AGE_COLUMN not in table.columns:
        return
    values = table[AGE_COLUMN]
    numbers = pd.to_numeric(values, errors="coerce")
    bad = _positions(values.notna() & (numbers.isna() | (numbers < 0)))
    if bad:
        key = "metadata" if AGE_COLUMN in config.metadata else None
        raise ConfigError(source, key, f"{where(bad[0])}: column {AGE_COLUMN!r} holds {_shown(values.iloc[bad[0]])}; "
                                       "age must be a number of years >= 0 or empty (rename the column if it "
                                       "holds something else)")


def check_manifest_files(cohort: Cohort) -> None:
    """Check that every file the cohort's rows name exists (a WFDB record: its ``.hea`` header).

    Raises:
        ConfigError: keyed by the modality's YAML key, naming the first missing file, its
            study, and how many others are missing.
    """
    config = cohort.config
    missing: list[tuple[str, str, str]] = []
    for modality in config.modalities:
        for column in config.columns_of(modality):
            for study, value in zip(cohort.table[config.study_column], cohort.table[column], strict=True):
                if pd.isna(value) or str(value).strip() == "":
                    continue  # a study without this modality
                path = cohort.root / str(value)
                if modality == Modality.ECG:
                    path = path.with_name(path.name + ".hea")
                if not path.exists():
                    missing.append((f"modalities.{modality}", study, str(value)))
    if missing:
        key, study, value = missing[0]
        more = f" ({len(missing) - 1} other file(s) missing too)" if len(missing) > 1 else ""
        raise ConfigError(cohort.source, key, f"study {study!r}: file not found: {value} "
                                              f"(under {cohort.root}){more}")


def _shown(value: Any) -> str:
    """A manifest cell as the file shows it, quoted: ``'maybe'``, ``'2'``, never ``np.int64(2)``."""
    return repr(str(value))


def _positions(mask: pd.Series) -> list[int]:
    """Positions (not index labels) where ``mask`` is true; at most the first few are needed."""
    return np.flatnonzero(mask.to_numpy(dtype=bool))[:10].tolist()
