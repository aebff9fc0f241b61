"""A cohort YAML names a manifest and says which columns mean what."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import Field, field_validator, model_validator

from medfm.config import Config, load_config, resolve_path
from medfm.errors import ConfigError
from medfm.keys import Modality


class SynthSpec(Config):
    """How to (re)create a synthetic cohort's files before use."""

    patients: int = Field(600, ge=10)
    seed: int = 0


class SplitSpec(Config):
    """Patient-level split: fractions per split, stratified by the cohort's labels."""

    fractions: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, value: dict[str, float]) -> dict[str, float]:
        if any(f < 0 for f in value.values()) or abs(sum(value.values()) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be non-negative and sum to 1, got {value}")
        return value


class CohortConfig(Config):
    """Schema of ``cohorts/*.yaml``."""

    name: str
    manifest: str
    synth: SynthSpec | None = None
    patient_column: str = "patient_id"
    study_column: str = "study_id"
    modalities: dict[Modality, str | list[str]]
    labels: list[str]
    metadata: list[str] = []
    split: SplitSpec = SplitSpec()

    @model_validator(mode="after")
    def _report_only_may_join_columns(self) -> CohortConfig:
        for key, columns in self.modalities.items():
            if isinstance(columns, list) and key != Modality.REPORT:
                raise ValueError(f"modality {key} takes one column; only report may join several")
        return self


@dataclass(frozen=True)
class Cohort:
    """A validated cohort: its config, its manifest table and where the files live."""

    config: CohortConfig
    source: Path
    manifest_path: Path
    table: pd.DataFrame

    @property
    def root(self) -> Path:
        """Folder that relative file paths in the manifest start from."""
        return self.manifest_path.parent

    def columns_of(self, modality: Modality) -> list[str]:
        columns = self.config.modalities[modality]
        return [columns] if isinstance(columns, str) else list(columns)


def load_cohort(path: str | Path, require_manifest: bool = True) -> Cohort | CohortConfig:
    """Load a cohort YAML and, if ``require_manifest``, its manifest table.

    Raises:
        ConfigError: the YAML is invalid, the manifest is missing, or a column it
            names is not in the manifest.
    """
    path = Path(path)
    config = load_config(path, CohortConfig)
    if not require_manifest:
        return config
    manifest_path = resolve_path(path, "manifest", config.manifest)
    return Cohort(config, path, manifest_path, read_manifest(manifest_path, config, path))


def manifest_location(path: str | Path, config: CohortConfig) -> Path:
    return resolve_path(path, "manifest", config.manifest, must_exist=False)


def read_manifest(manifest_path: Path, config: CohortConfig, source: Path) -> pd.DataFrame:
    """Read a manifest CSV or Parquet and check every column the cohort names exists."""
    reader = pd.read_parquet if manifest_path.suffix == ".parquet" else pd.read_csv
    table = reader(manifest_path, dtype={config.patient_column: str, config.study_column: str})
    wanted = {"patient_column": [config.patient_column], "study_column": [config.study_column],
              "labels": config.labels, "metadata": config.metadata}
    for key, columns in config.modalities.items():
        wanted[f"modalities.{key}"] = [columns] if isinstance(columns, str) else columns
    for key, columns in wanted.items():
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ConfigError(source, key, f"column(s) {missing} not in manifest {manifest_path.name}")
    if table[config.study_column].duplicated().any():
        dup = table.loc[table[config.study_column].duplicated(), config.study_column].iloc[0]
        raise ConfigError(source, "study_column", f"study id {dup!r} appears twice in {manifest_path.name}")
    return table
