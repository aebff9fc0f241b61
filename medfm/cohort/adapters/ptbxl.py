"""PTB-XL 1.0.3 (PhysioNet) → medfm manifest."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from medfm.cohort.adapters._common import DatasetLayoutError, find_table, read_table
from medfm.config import Config
from medfm.keys import Modality
from medfm.registry import ADAPTERS

SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")
# SCP statement → medfm finding shared with the other cohorts (demo labels).
FINDINGS: dict[str, str] = {"AFIB": "atrial_fibrillation", "LVH": "lvh"}
# PTB-XL publishes the age of patients older than 89 as 300 (HIPAA).
_AGE_OVER_89 = 300
_AGE_OVER_89_AS = 90.0

_DATABASE_COLUMNS = ("ecg_id", "patient_id", "age", "sex", "site", "device", "recording_date", "scp_codes",
                     "strat_fold", "filename_lr", "filename_hr")
_STATEMENT_COLUMNS = ("diagnostic", "rhythm", "diagnostic_class")


@ADAPTERS.register("ptbxl")
class PTBXL:
    """PTB-XL: 21,799 clinical 10 s 12-lead ECGs from 18,869 patients (PTB, Berlin, 1989-1996).

    Citation:
        Wagner P, Strodthoff N, Bousseljot R-D, Kreiseler D, Lunze FI, Samek W, Schaeffter T.
        PTB-XL, a large publicly available electrocardiography dataset. Sci Data 7, 154 (2020).
        https://doi.org/10.1038/s41597-020-0495-6; dataset v1.0.3, PhysioNet,
        https://doi.org/10.13026/kfzx-aw45.

    Access:
        Open access on PhysioNet under the Creative Commons Attribution 4.0 licence (CC BY 4.0):
        free use with attribution (cite the dataset and the paper).

    Labels (1.0 / 0.0 / NaN):
        ``norm``, ``mi``, ``sttc``, ``cd``, ``hyp``: the five diagnostic superclasses, from the
        record's diagnostic SCP statements mapped through ``scp_statements.csv``
        (``diagnostic == 1``, ``diagnostic_class``). A record with no diagnostic statement
        at all gets NaN for all five (PTB-XL's benchmark leaves such records out of the
        superclass task). A statement counts with any likelihood by default; PTB-XL writes
        likelihood 0 when the cardiologist gave none. With ``min_likelihood`` > 0 a
        diagnostic statement below it makes its labels NaN (uncertain) unless another
        statement makes them positive.
        ``atrial_fibrillation`` (SCP ``AFIB``, a rhythm statement; NaN when the record has no
        rhythm statement, likelihood ignored) and ``lvh`` (SCP ``LVH``, diagnostic, same rules
        as the superclasses), when ``findings`` is true.

    Manifest columns:
        ``patient_id``, ``study_id`` (the ``ecg_id``), ``ecg_path`` (WFDB record without
        extension, e.g. ``records500/00000/00001_hr``), ``site`` (``site_<n>``, pseudonymised),
        ``ecg_device``, ``age`` (300 in the CSV, i.e. over 89, becomes 90), ``sex`` (``M``/``F``),
        ``study_date`` (ISO date), ``strat_fold`` (1-10; folds 9 and 10 are the recommended
        validation and test folds), ``scp_codes`` (the original dict text) and the labels.
    """

    class Config(Config):
        """Options of the PTB-XL adapter.

        Attributes:
            sampling_rate: 500 (``filename_hr``, ``records500/``) or 100 (``filename_lr``).
            findings: also emit ``atrial_fibrillation`` and ``lvh``.
            min_likelihood: diagnostic statements below this likelihood (0-100) are uncertain.
        """

        sampling_rate: Literal[100, 500] = 500
        findings: bool = True
        min_likelihood: float = Field(0.0, ge=0, le=100)

    def __init__(self, config: PTBXL.Config | None = None, **options):
        self.config = config if config is not None else self.Config(**options)

    def build_manifest(self, root: str | Path) -> pd.DataFrame:
        """One row per ECG record of the PTB-XL folder ``root``.

        Raises:
            DatasetLayoutError: ``ptbxl_database.csv`` or ``scp_statements.csv`` is missing,
                lacks a column, or holds an ``scp_codes`` value that is not a dict literal.
        """
        root = Path(root)
        database_path = find_table(root, "ptbxl_database.csv")
        statements_path = find_table(root, "scp_statements.csv")
        database = read_table(database_path, _DATABASE_COLUMNS)
        statements = read_table(statements_path, _STATEMENT_COLUMNS)
        statements = statements.set_index(statements.columns[0])  # first, unnamed column: the SCP code
        diagnostic_class = statements.loc[statements["diagnostic"] == 1, "diagnostic_class"].dropna().to_dict()
        rhythm = set(statements.index[statements["rhythm"] == 1])

        codes = [_parse_scp_codes(text, database_path, ecg_id)
                 for text, ecg_id in zip(database["scp_codes"], database["ecg_id"], strict=True)]
        labels = pd.DataFrame([self._labels(c, diagnostic_class, rhythm) for c in codes], index=database.index)

        filename = "filename_hr" if self.config.sampling_rate == 500 else "filename_lr"
        age = pd.to_numeric(database["age"], errors="coerce").astype(float)
        manifest = pd.DataFrame({
            "patient_id": _integer_ids(database["patient_id"]),
            "study_id": _integer_ids(database["ecg_id"]),
            f"{Modality.ECG}_path": database[filename].astype(str).str.removesuffix(".hea"),
            "site": _integer_ids(database["site"]).map(lambda s: f"site_{s}", na_action="ignore"),
            f"{Modality.ECG}_device": database["device"].astype("string").str.strip(),
            "age": age.mask(age == _AGE_OVER_89, _AGE_OVER_89_AS),
            "sex": pd.to_numeric(database["sex"], errors="coerce").map({0.0: "M", 1.0: "F"}),
            "study_date": pd.to_datetime(database["recording_date"], errors="coerce").dt.strftime("%Y-%m-%d"),
            "strat_fold": database["strat_fold"].astype(int),
            "scp_codes": database["scp_codes"],
        })
        return pd.concat([manifest, labels], axis=1).reset_index(drop=True)

    def _labels(self, codes: dict[str, float], diagnostic_class: dict[str, str], rhythm: set[str]) -> dict:
        names = [c.lower() for c in SUPERCLASSES]
        if self.config.findings:
            names += list(FINDINGS.values())
        values = dict.fromkeys(names, np.nan)
        diagnostic = {c: lik for c, lik in codes.items() if c in diagnostic_class}
        if diagnostic:  # annotated diagnostically: what is not stated is absent
            for name in names:
                values[name] = 0.0
        for code, likelihood in diagnostic.items():
            targets = [diagnostic_class[code].lower()]
            if self.config.findings and code in FINDINGS and code != "AFIB":
                targets.append(FINDINGS[code])
            certain = self.config.min_likelihood == 0 or likelihood >= self.config.min_likelihood
            for target in targets:
                if certain:
                    values[target] = 1.0
                elif values[target] != 1.0:
                    values[target] = np.nan
        if self.config.findings:
            has_rhythm = any(c in rhythm for c in codes)
            values[FINDINGS["AFIB"]] = (1.0 if "AFIB" in codes else 0.0) if has_rhythm else np.nan
        return values


def _parse_scp_codes(text: object, path: Path, ecg_id: object) -> dict[str, float]:
    try:
        codes = ast.literal_eval(str(text))
    except (ValueError, SyntaxError):
        codes = None
    if not isinstance(codes, dict):
        raise DatasetLayoutError(path, f"ecg_id {ecg_id}: scp_codes is not a dict literal: {text!r}")
    return {str(code): float(likelihood) for code, likelihood in codes.items()}


def _integer_ids(values: pd.Series) -> pd.Series:
    """PTB-XL writes integer ids as floats (``15709.0``); medfm ids are strings (``"15709"``)."""
    numeric = pd.to_numeric(values, errors="coerce")
    return numeric.map(lambda v: str(int(v)), na_action="ignore").astype(object)
