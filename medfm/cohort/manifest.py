"""A cohort YAML names a manifest (or a public dataset to build one from) and says which columns mean what.

This module holds the YAML's schema and loading; the checks of the table against it are in
:mod:`medfm.cohort.checks`, the ``include`` rules in :mod:`medfm.cohort.inclusion`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import duckdb
import pandas as pd
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from medfm.cohort.adapters import ADAPTERS, create_adapter
from medfm.cohort.checks import check_manifest, check_manifest_files
from medfm.cohort.inclusion import Exclusion, InclusionRule, apply_inclusion_rules, keyed_rules
from medfm.config import Config, load_config, resolve_path
from medfm.errors import ConfigError, MedfmError, first_line
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
        for key, rule in keyed_rules(value):
            if ";" in rule.rule:
                raise ValueError(f"{key} must be one SQL boolean expression; ';' is not allowed")
            try:
                duckdb.SQLExpression(rule.rule)  # parses exactly one expression, or raises
            except duckdb.Error as err:
                raise ValueError(f"{key} is not a single SQL expression ({first_line(err)})") from None
        names: dict[str, str] = {}
        for key, rule in keyed_rules(value):
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
                                              f"({first_line(err)})") from None
    repeated = sorted({str(c) for c in header if header.count(c) > 1})
    if repeated:
        raise ConfigError(source, "manifest", f"{what}: column(s) {repeated} appear more than once in the header")
    first_row_line = None if manifest_path.suffix == ".parquet" else 2  # the CSV's header is line 1
    return check_manifest(table, config, source, what, first_row_line)


def _kind(path: Path) -> str:
    return "Parquet file" if path.suffix == ".parquet" else "CSV file"
