"""Adapters that turn a public dataset's published folder into a medfm manifest.

One class per dataset, registered in ``ADAPTERS`` under the name a cohort YAML's
``source.adapter`` uses. Each has a pydantic ``Config`` of its options and a
``build_manifest(root) -> DataFrame`` giving one row per study with ``patient_id``,
``study_id``, file paths relative to ``root``, metadata and labels (1.0 / 0.0 / NaN).
See ``docs/adapters.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from medfm.cohort.adapters._common import DatasetLayoutError
from medfm.cohort.adapters.chexpert import CheXpert
from medfm.cohort.adapters.mimic_cxr_jpg import MIMICCXRJPG
from medfm.cohort.adapters.mimic_iv_ecg import MIMICIVECG
from medfm.cohort.adapters.ptbxl import PTBXL
from medfm.registry import ADAPTERS


def create_adapter(name: str, **options: Any):
    """Build the adapter registered as ``name`` with its validated ``options``.

    Raises:
        RegistryError: no adapter has that name.
        pydantic.ValidationError: an option is unknown or has a wrong value.
    """
    cls = ADAPTERS.get(name)
    return cls(cls.Config(**options))


def build_manifest(name: str, root: str | Path, **options: Any) -> pd.DataFrame:
    """The manifest of the dataset folder ``root`` as adapter ``name`` builds it."""
    return create_adapter(name, **options).build_manifest(root)


__all__ = ["ADAPTERS", "CheXpert", "DatasetLayoutError", "MIMICCXRJPG", "MIMICIVECG", "PTBXL",
           "build_manifest", "create_adapter"]
