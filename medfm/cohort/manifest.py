"""A cohort YAML names a manifest (or a public dataset to build one from) and says which columns mean what."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from medfm.cohort.adapters import ADAPTERS, create_adapter
from medfm.config import Config, load_config, resolve_path
from medfm.errors import ConfigError, MedfmError
from medfm.keys import Modality, report_of


class SynthSpec(Config):
    """How to (re)create a synthetic cohort's files before use."""

    patients: int = Field(600, ge=10)
    seed: int = 0


class ExternalSpec(Config):
    """Patients set aside before splitting: a device or site never seen in training.

    Used to measure the drop on unseen acquisition conditions. Every patient with a study
    whose ``column`` (compared as text) is one of ``values`` goes, with all their studies,
    to the split ``name``; the strategy splits the other patients.

    Attributes:
        column: the manifest column, e.g. ``cxr_device`` or ``site``.
        values: the values set aside; each must occur in the table when splitting.
        name: the split's name.
    """

    column: str
    values: list[str] = Field(min_length=1)
    name: str = Field("external", min_length=1)


class SplitSpec(Config):
    """How studies are assigned to splits; every strategy keeps each patient in one split.

    Attributes:
        strategy: ``patient`` (stratified random patient-level split by ``fractions``),
            ``holdout`` (studies whose ``column`` is in ``test_values`` form ``test``; the
            rest split train/val by the train:val ratio of ``fractions``) or ``time``
            (patients split by their first ``column`` date at the two ``cutoffs``).
        fractions: share of patients per split (``patient``); ``holdout`` uses only the
            ``train`` and ``val`` entries' ratio; ``time`` ignores it.
        seed: random seed of the patient shuffle (``patient``, ``holdout``).
        column: the column held out (``holdout``) or the date column (``time``).
        test_values: the values of ``column`` that form the test split (``holdout``).
        cutoffs: two ascending dates (``time``): train before the first, val before the
            second, test on or after the second.
        external: optional, with any strategy: patients with a study in
            ``external.values`` of ``external.column`` form the split ``external.name``
            (see :class:`ExternalSpec`); the strategy splits the rest.
    """

    # Field order matters: the validators below read ``strategy`` from the fields before them.
    strategy: Literal["patient", "holdout", "time"] = "patient"
    fractions: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
    seed: int = 0
    column: str | None = Field(None, validate_default=True)
    test_values: list[str] | None = Field(None, validate_default=True)
    cutoffs: list[date] | None = Field(None, validate_default=True)
    external: ExternalSpec | None = None

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, value: dict[str, float]) -> dict[str, float]:
        if any(f < 0 for f in value.values()) or abs(sum(value.values()) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be non-negative and sum to 1, got {value}")
        return value

    @field_validator("column")
    @classmethod
    def _column_for_strategy(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _needed_by(value, info, ("holdout", "time"), "column")

    @field_validator("test_values")
    @classmethod
    def _test_values_for_holdout(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        value = _needed_by(value, info, ("holdout",), "test_values")
        if value is not None and not value:
            raise ValueError("test_values must name at least one value")
        if value is not None and info.data.get("strategy") == "holdout":
            fractions = info.data.get("fractions", {})
            if fractions.get("train", 0) + fractions.get("val", 0) <= 0:
                raise ValueError("holdout splits the remaining patients by fractions' train:val ratio; "
                                 "fractions needs a positive train or val")
        return value

    @field_validator("cutoffs")
    @classmethod
    def _two_ascending_cutoffs(cls, value: list[date] | None, info: ValidationInfo) -> list[date] | None:
        value = _needed_by(value, info, ("time",), "cutoffs")
        if value is not None and (len(value) != 2 or not value[0] < value[1]):
            raise ValueError(f"cutoffs must be two ascending dates [train_end, val_end], got {value}")
        return value

    @field_validator("external")
    @classmethod
    def _external_name_is_free(cls, value: ExternalSpec | None, info: ValidationInfo) -> ExternalSpec | None:
        taken = {"train", "val", "test", *info.data.get("fractions", {})}
        if value is not None and value.name in taken:
            raise ValueError(f"external.name {value.name!r} is a split the strategy makes; "
                             f"use a name other than {sorted(taken)}")
        return value


def _needed_by(value, info: ValidationInfo, strategies: tuple[str, ...], key: str):
    """A strategy-specific key must be given for those strategies and only for them."""
    strategy = info.data.get("strategy")
    if strategy is None:  # strategy itself failed validation; that error is reported instead
        return value
    if strategy in strategies and value is None:
        raise ValueError(f"strategy {strategy!r} requires {key}")
    if strategy not in strategies and value is not None:
        raise ValueError(f"{key} is only used by strategy {' or '.join(map(repr, strategies))}, not {strategy!r}")
    return value


class SourceSpec(Config):
    """A public dataset whose published folder is turned into the manifest by a registered adapter.

    Attributes:
        adapter: name in ``medfm.registry.ADAPTERS`` (``ptbxl``, ``mimic_iv_ecg``, ``mimic_cxr_jpg``,
            ``chexpert``).
        root: the dataset's folder, relative to the YAML's folder unless absolute.
        options: the adapter's options (its ``Config``), checked when the YAML is loaded.
    """

    adapter: str
    root: str
    options: dict[str, Any] = {}

    @field_validator("adapter")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in ADAPTERS:
            raise ValueError(f"unknown adapter {value!r}; registered: {', '.join(ADAPTERS)}")
        return value

    @model_validator(mode="after")
    def _options_fit_the_adapter(self) -> SourceSpec:
        try:
            create_adapter(self.adapter, **self.options)
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"options.{where}: {first['msg']} for adapter {self.adapter!r}") from None
        return self


class NearDuplicateSpec(Config):
    """Opt-in check that no near-identical image (perceptual hash) sits in two splits.

    Off by default: it reads every image once, and synthetic or phantom images that
    share one template are near-identical by design.
    """

    column: str
    max_distance: int = Field(4, ge=0, le=64)


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


class CohortConfig(Config):
    """Schema of ``cohorts/*.yaml``: exactly one of ``manifest`` and ``source`` gives the table."""

    name: str
    manifest: str | None = None
    source: SourceSpec | None = None
    synth: SynthSpec | None = None
    patient_column: str = "patient_id"
    study_column: str = "study_id"
    # One column per modality; report alone may name several: a list is joined into one
    # document per study, a mapping {image modality: column} gives each image its own report.
    modalities: dict[Modality, str | list[str] | dict[Modality, str]]
    labels: list[str]
    # Which labels each image modality shows (drusen: oct and fundus). Similar-case search lists
    # a case's positive ones and measures precision@10 with them; without it cases have no findings.
    findings: dict[Modality, list[str]] = {}
    metadata: list[str] = []
    # One SQL rule, or rules applied in order (counted one by one for the participant flow).
    include: str | list[str | InclusionRule] | None = None
    split: SplitSpec = SplitSpec()
    near_duplicates: NearDuplicateSpec | None = None

    @field_validator("include", mode="before")
    @classmethod
    def _rules_by_position(cls, value: Any) -> Any:
        """Check each listed rule here, so an error names its position (``include[1]``)."""
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError(f"include must be one SQL expression or a list of rules, not {type(value).__name__}")
        rules: list[str | InclusionRule] = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                try:
                    item = InclusionRule.model_validate(item)
                except ValidationError as err:
                    first = err.errors(include_url=False)[0]
                    where = ".".join(str(p) for p in first["loc"])
                    reason = ("unknown key; expected 'rule' and optionally 'name'"
                              if first["type"] == "extra_forbidden" else first["msg"])
                    raise ValueError(f"include[{i}]: {where}: {reason}") from None
            elif not isinstance(item, str):
                raise ValueError(f"include[{i}]: expected an SQL expression or {{name, rule}}, "
                                 f"got {type(item).__name__}")
            rules.append(item)
        return rules

    @field_validator("include")
    @classmethod
    def _single_boolean_expressions(cls, value: str | list[str | InclusionRule] | None):
        for key, rule in _keyed_rules(value):
            if ";" in rule.rule:
                raise ValueError(f"{key} must be one SQL boolean expression; ';' is not allowed")
            try:
                duckdb.SQLExpression(rule.rule)  # parses exactly one expression, or raises
            except duckdb.Error as err:
                raise ValueError(f"{key} is not a single SQL expression ({_first_line(err)})") from None
        names: dict[str, str] = {}
        for key, rule in _keyed_rules(value):
            if rule.name in names:
                raise ValueError(f"{key}: name {rule.name!r} is already used by {names[rule.name]}")
            names[rule.name] = key
        return value

    @model_validator(mode="after")
    def _one_table_source(self) -> CohortConfig:
        if (self.manifest is None) == (self.source is None):
            given = "both" if self.manifest is not None else "neither"
            raise ValueError(f"give exactly one of 'manifest' (a CSV/Parquet file) or 'source' "
                             f"(a public dataset adapter), not {given}")
        if self.synth is not None and self.manifest is None:
            raise ValueError("'synth' writes a manifest file; it needs 'manifest', not 'source'")
        return self

    @model_validator(mode="after")
    def _report_only_may_join_columns(self) -> CohortConfig:
        for key, columns in self.modalities.items():
            if not isinstance(columns, str) and key != Modality.REPORT:
                raise ValueError(f"modality {key} takes one column; only report may join several")
        own = self.modalities.get(Modality.REPORT)
        if isinstance(own, dict):
            unpaired = [str(m) for m in own if m == Modality.REPORT or m not in self.modalities]
            if unpaired:
                raise ValueError(f"report: {{modality: column}} pairs each image modality with its own report; "
                                 f"{unpaired} is not an image modality of this cohort")
        return self

    @model_validator(mode="after")
    def _findings_are_labels_of_image_modalities(self) -> CohortConfig:
        for modality, names in self.findings.items():
            if modality == Modality.REPORT or modality not in self.modalities:
                raise ValueError(f"findings: {modality} is not an image modality of this cohort")
            unknown = sorted(set(names) - set(self.labels))
            if unknown:
                raise ValueError(f"findings: {modality} names {unknown}, which are not in labels")
        return self

    def columns_of(self, modality: Modality) -> list[str]:
        """Every manifest column holding ``modality``'s files."""
        return [column for _, columns in self.inputs_of(modality) for column in columns]

    def inputs_of(self, modality: Modality) -> list[tuple[str, list[str]]]:
        """``(sample key, columns)`` per input ``modality`` gives a sample.

        One entry keyed by the modality itself, except for per-image reports
        (``report: {oct: oct_report_path, ...}``): one ``report.<image>`` entry each.
        """
        columns = self.modalities[modality]
        if isinstance(columns, str):
            return [(str(modality), [columns])]
        if isinstance(columns, dict):
            return [(report_of(image), [column]) for image, column in columns.items()]
        return [(str(modality), list(columns))]


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


@dataclass(frozen=True)
class Cohort:
    """A validated cohort: its config, its manifest table and where the files live."""

    config: CohortConfig
    source: Path
    manifest_path: Path
    table: pd.DataFrame
    excluded: int = 0
    """Rows of the manifest removed by the ``include`` rules, all together."""
    exclusions: tuple[Exclusion, ...] = ()
    """One record per ``include`` rule, in the order they were applied."""

    @property
    def root(self) -> Path:
        """Folder that relative file paths in the manifest start from."""
        return self.manifest_path.parent

    @property
    def manifest_studies(self) -> int:
        """Studies in the manifest before any ``include`` rule."""
        return len(self.table) + self.excluded

    @property
    def manifest_patients(self) -> int:
        """Distinct patients in the manifest before any ``include`` rule (read from ``exclusions``)."""
        if self.exclusions:
            first = self.exclusions[0]
            return first.patients_remaining + first.patients_excluded
        return int(self.table[self.config.patient_column].nunique())


def load_cohort(path: str | Path, require_manifest: bool = True, check_files: bool = False) -> Cohort | CohortConfig:
    """Load a cohort YAML and, if ``require_manifest``, its manifest table, checked (:func:`check_manifest`).

    The table holds only the rows that pass every ``include`` rule, in the manifest's
    order and with its index; ``Cohort.excluded`` counts the others and
    ``Cohort.exclusions`` what each rule removed, in order.

    With ``source:`` the table is built by the named adapter from the dataset's folder
    (nothing is written); ``Cohort.manifest_path`` is then the virtual ``<root>/manifest.csv``,
    so ``Cohort.root`` is the dataset root that the adapter's relative paths start from.
    A caller that needs the built manifest on disk writes ``Cohort.table`` itself.

    Args:
        check_files: also check that every file the kept rows name exists (off by default:
            the readers name a missing file when a study is read, and datasets quarantine
            such studies by the run's ``on_error`` policy; a pre-flight check costs one
            ``stat`` per file, slow on network storage).

    Raises:
        ConfigError: the YAML is invalid, the manifest (or the source root) is missing or
            unreadable, a column it names is not in the manifest, a value has the wrong
            type, an id is empty or repeated (see :func:`check_manifest`), the adapter
            cannot read the dataset's layout (key ``source``), an ``include`` rule fails in
            DuckDB (key ``include``, or ``include[i]`` for the i-th rule of a list), or,
            with ``check_files``, a file is missing.
    """
    path = Path(path)
    config = load_config(path, CohortConfig)
    if not require_manifest:
        return config
    if config.source is not None:
        manifest_path, table = _build_from_source(path, config)
    else:
        manifest_path = resolve_path(path, "manifest", config.manifest)
        table = read_manifest(manifest_path, config, path)
    included, exclusions = apply_inclusion_rules(table, config.include or [], config.patient_column, path)
    cohort = Cohort(config, path, manifest_path, included, excluded=len(table) - len(included),
                    exclusions=exclusions)
    if check_files:
        check_manifest_files(cohort)
    return cohort


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
    for key, rule in _keyed_rules(include):
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
        raise ConfigError(source, key, _first_line(err)) from None
    finally:
        con.close()
    return table.iloc[np.asarray(rows, dtype=np.int64)]


def _keyed_rules(include: str | Sequence[str | InclusionRule] | None) -> list[tuple[str, InclusionRule]]:
    """``(YAML key, rule)`` per rule: ``include`` for a single expression, ``include[i]`` in a list."""
    if include is None:
        return []
    if isinstance(include, str):
        return [("include", InclusionRule(rule=include))]
    return [(f"include[{i}]", rule if isinstance(rule, InclusionRule) else InclusionRule(rule=rule))
            for i, rule in enumerate(include)]


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def manifest_location(path: str | Path, config: CohortConfig) -> Path:
    """Where the manifest is (``<source root>/manifest.csv``, virtual, for a ``source:`` cohort)."""
    if config.source is not None:
        return resolve_path(path, "source.root", config.source.root, must_exist=False) / "manifest.csv"
    return resolve_path(path, "manifest", config.manifest, must_exist=False)


def _build_from_source(path: Path, config: CohortConfig) -> tuple[Path, pd.DataFrame]:
    """Run the cohort's dataset adapter over its root; the manifest path is virtual (never written)."""
    source = config.source
    root = resolve_path(path, "source.root", source.root)
    if not root.is_dir():
        raise ConfigError(path, "source.root", f"not a folder: {source.root}")
    try:
        table = create_adapter(source.adapter, **source.options).build_manifest(root)
    except MedfmError as err:
        raise ConfigError(path, "source", f"adapter {source.adapter!r}: {err}") from None
    manifest_path = root / "manifest.csv"
    check_manifest(table, config, path, f"{source.adapter} manifest of {root}")
    return manifest_path, table


def read_manifest(manifest_path: Path, config: CohortConfig, source: Path) -> pd.DataFrame:
    """Read a manifest CSV or Parquet and check it against the cohort (:func:`check_manifest`).

    Raises:
        ConfigError: key ``manifest`` for a file that is missing, unreadable or has a
            column name twice in its header; else as :func:`check_manifest`.
    """
    ids = {config.patient_column: str, config.study_column: str}
    what = f"manifest {manifest_path.name}"
    try:
        if manifest_path.suffix == ".parquet":  # typed already; ids made text like the CSV's
            table = pd.read_parquet(manifest_path)
            header = [str(c) for c in table.columns]
            table = table.astype({c: str for c in ids if c in table.columns})
        else:
            # utf-8-sig: a spreadsheet's byte-order mark would otherwise become part of the first column's name
            header = pd.read_csv(manifest_path, header=None, nrows=1, dtype=str, encoding="utf-8-sig").iloc[0].tolist()
            table = pd.read_csv(manifest_path, dtype=ids, encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(source, "manifest", f"file not found: {manifest_path}") from None
    except (OSError, ValueError, ImportError) as err:  # pandas' parser errors and pyarrow's are ValueErrors
        raise ConfigError(source, "manifest", f"{what}: not a readable {_kind(manifest_path)} "
                                              f"({_first_line(err)})") from None
    repeated = sorted({str(c) for c in header if header.count(c) > 1})
    if repeated:
        raise ConfigError(source, "manifest", f"{what}: column(s) {repeated} appear more than once in the header")
    first_line = None if manifest_path.suffix == ".parquet" else 2  # the CSV's header is line 1
    return check_manifest(table, config, source, what, first_line)


def _kind(path: Path) -> str:
    return "Parquet file" if path.suffix == ".parquet" else "CSV file"


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
    from medfm.cohort.describe import AGE_COLUMN  # describe imports this module

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
