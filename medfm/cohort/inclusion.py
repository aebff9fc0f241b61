"""A cohort's ``include`` rules: SQL boolean expressions over the manifest, applied in order and counted.

The counts of what each rule removed are the boxes of the validation report's participant flow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from pydantic import Field, ValidationInfo, field_validator

from medfm.config import Config
from medfm.errors import ConfigError, first_line


class InclusionRule(Config):
    """One named entry of a cohort's ``include`` list: ``{name: adults, rule: "age >= 18"}``.

    Attributes:
        rule: an SQL boolean expression over the manifest's columns.
        name: what the participant flow calls the rule; the expression itself when not given.
    """

    rule: str
    name: str = Field("", validate_default=True)

    @field_validator("name")
    @classmethod
    def _defaults_to_the_rule(cls, value: str, info: ValidationInfo) -> str:
        return value or info.data.get("rule", "")


@dataclass(frozen=True)
class Exclusion:
    """What one inclusion rule removed, counted on the rows the rules before it left.

    Attributes:
        name: the rule's name (the expression itself when unnamed).
        rule: the SQL expression.
        studies_excluded: studies (rows) the rule removed.
        patients_excluded: patients present before the rule and absent after it (every
            study they had left was removed); a patient who keeps one study is not counted.
        studies_remaining: studies left after the rule.
        patients_remaining: distinct patients left after the rule.
    """

    name: str
    rule: str
    studies_excluded: int
    patients_excluded: int
    studies_remaining: int
    patients_remaining: int


def apply_inclusion_rules(
    table: pd.DataFrame,
    include: str | Sequence[str | InclusionRule],
    patient_column: str = "patient_id",
    source: str | Path | None = None,
) -> tuple[pd.DataFrame, tuple[Exclusion, ...]]:
    """Apply inclusion rules in order and count what each one removed.

    Each rule runs as :func:`apply_inclusion` over the rows the rules before it left, so
    the counts depend on the order (the rows finally kept do not, unless a rule's subquery
    reads ``manifest``, which is then the remaining rows).

    Args:
        table: the manifest.
        include: as the YAML's ``include``: one expression, or a list of expressions and
            :class:`InclusionRule`.
        patient_column: the column whose distinct values are patients.
        source: the cohort file, named in errors.

    Returns:
        The kept rows (manifest order, original index) and one :class:`Exclusion` per rule.

    Raises:
        ConfigError: as :func:`apply_inclusion`, with key ``include`` (a single expression)
            or ``include[i]`` (the i-th rule of a list).
    """
    exclusions = []
    for key, rule in keyed_rules(include):
        kept = apply_inclusion(table, rule.rule, source, key=key)
        patients_before = table[patient_column].nunique()
        patients_after = kept[patient_column].nunique()  # a subset of those before
        exclusions.append(Exclusion(rule.name, rule.rule, len(table) - len(kept), patients_before - patients_after,
                                    len(kept), patients_after))
        table = kept
    return table, tuple(exclusions)


def apply_inclusion(table: pd.DataFrame, include: str, source: str | Path | None = None,
                    key: str = "include") -> pd.DataFrame:
    """Keep the rows of ``table`` for which the SQL boolean expression ``include`` is true.

    The expression is evaluated by DuckDB over the table registered as ``manifest``
    (``SELECT ... FROM manifest WHERE <include>``), with file access disabled. Rows
    where it is NULL (e.g. a comparison with a missing value) are excluded, as in SQL.

    Raises:
        ConfigError: ``include`` is not a boolean expression or DuckDB rejects it
            (``key`` as the key, DuckDB's message as the reason).
    """
    if ";" in include:
        raise ConfigError(source, key, "one SQL boolean expression expected; ';' is not allowed")
    row = "__medfm_row"
    con = duckdb.connect()
    try:
        con.register("manifest", table.assign(**{row: np.arange(len(table))}))
        con.execute("SET enable_external_access = false")  # an include rule reads the manifest, nothing else
        # Newlines end a trailing ``--`` comment; the validator has already checked one expression.
        keep = f"(\n{include}\n)"
        kind = con.execute(f"DESCRIBE SELECT {keep} AS keep FROM manifest").fetchall()[0][1]
        if kind != "BOOLEAN":
            raise ConfigError(source, key, f"expression must be boolean, it gives {kind}")
        rows = con.execute(f"SELECT {row} FROM manifest WHERE {keep} ORDER BY {row}").fetchnumpy()[row]
    except duckdb.Error as err:
        raise ConfigError(source, key, first_line(err)) from None
    finally:
        con.close()
    return table.iloc[np.asarray(rows, dtype=np.int64)]


def keyed_rules(include: str | Sequence[str | InclusionRule] | None) -> list[tuple[str, InclusionRule]]:
    """``(YAML key, rule)`` per rule: ``include`` for a single expression, ``include[i]`` in a list."""
    if include is None:
        return []
    if isinstance(include, str):
        return [("include", InclusionRule(rule=include))]
    return [(f"include[{i}]", rule if isinstance(rule, InclusionRule) else InclusionRule(rule=rule))
            for i, rule in enumerate(include)]
