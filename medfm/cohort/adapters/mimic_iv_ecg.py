"""MIMIC-IV-ECG 1.0 (PhysioNet) → medfm manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medfm.cohort.adapters._common import find_table, read_table
from medfm.config import Config
from medfm.errors import MedfmError
from medfm.keys import Modality
from medfm.registry import ADAPTERS

REPORT_COLUMNS: tuple[str, ...] = tuple(f"report_{i}" for i in range(18))
_RECORD_COLUMNS = ("subject_id", "study_id", "ecg_time", "path")


@ADAPTERS.register("mimic_iv_ecg")
class MIMICIVECG:
    """MIMIC-IV-ECG: ~800,000 diagnostic 10 s 12-lead ECGs (500 Hz) of ~160,000 MIMIC-IV patients (BIDMC).

    Citation:
        Gow B, Pollard T, Nathanson LA, Johnson A, Moody B, Fernandes C, Greenbaum N, Waks JW,
        Eslami P, Carbonati T, Chaudhari A, Herbst E, Moukheiber D, Berkowitz S, Mark R, Horng S.
        MIMIC-IV-ECG: Diagnostic Electrocardiogram Matched Subset (version 1.0). PhysioNet (2023).
        https://doi.org/10.13026/4nqg-sb35

    Access:
        Distributed by PhysioNet under its own access terms; MIMIC data are credentialed
        (PhysioNet credentialing, CITI human-research training and the PhysioNet Credentialed
        Health Data Use Agreement). Never copy the data or derived per-patient files outside
        an environment that the agreement covers.

    Labels:
        None. The only per-ECG statements shipped are the ECG cart's automatic interpretations
        (``report_0`` .. ``report_17`` of ``machine_measurements.csv``), not cardiologist
        labels; they are joined into the report text, and a cohort that wants labels derives
        them itself and documents how.

    Manifest columns:
        ``patient_id`` (``subject_id``), ``study_id``, ``ecg_path`` (WFDB record without
        extension, ``files/p1000/p10000032/s40689238/40689238``), ``site`` (``BIDMC``),
        ``study_date`` (date of ``ecg_time``; MIMIC dates are shifted per patient),
        ``ecg_time``, ``ecg_report`` (machine statements, one per line; NaN when none), and
        ``ecg_report_path`` when ``report_dir`` is set.
    """

    class Config(Config):
        """Options of the MIMIC-IV-ECG adapter.

        Attributes:
            report_dir: if set, write each non-empty machine report to ``<report_dir>/<study_id>.txt``
                and list it in ``ecg_report_path`` (absolute), so the ``report`` modality can read it.
                A relative path starts from the current working directory. Keep it inside the
                environment your data use agreement covers.
        """

        report_dir: str | None = None

    def __init__(self, config: MIMICIVECG.Config | None = None, **options):
        self.config = config if config is not None else self.Config(**options)

    def build_manifest(self, root: str | Path) -> pd.DataFrame:
        """One row per ECG in ``record_list.csv`` of the MIMIC-IV-ECG folder ``root``.

        Raises:
            DatasetLayoutError: ``record_list.csv`` or ``machine_measurements.csv`` is missing or
                lacks a column.
            MedfmError: ``report_dir`` cannot be written.
        """
        root = Path(root)
        records = read_table(find_table(root, "record_list.csv"), _RECORD_COLUMNS, dtype={"study_id": str})
        measurements = read_table(find_table(root, "machine_measurements.csv"), ("study_id", *REPORT_COLUMNS),
                                  dtype={"study_id": str, **dict.fromkeys(REPORT_COLUMNS, str)})
        statements = measurements[list(REPORT_COLUMNS)]
        reports = pd.Series(
            ["\n".join(s.strip() for s in row if isinstance(s, str) and s.strip())
             for row in statements.itertuples(index=False)],
            index=measurements["study_id"].to_numpy(),
        )
        reports = reports[~reports.index.duplicated() & (reports != "")]
        manifest = pd.DataFrame({
            "patient_id": records["subject_id"].astype(str),
            "study_id": records["study_id"].astype(str),
            f"{Modality.ECG}_path": records["path"].astype(str).str.removesuffix(".hea"),
            "site": "BIDMC",
            "study_date": pd.to_datetime(records["ecg_time"], errors="coerce").dt.strftime("%Y-%m-%d"),
            "ecg_time": records["ecg_time"],
            f"{Modality.ECG}_{Modality.REPORT}": records["study_id"].astype(str).map(reports),
        })
        if self.config.report_dir is not None:
            manifest[f"{Modality.ECG}_{Modality.REPORT}_path"] = self._write_reports(manifest)
        return manifest

    def _write_reports(self, manifest: pd.DataFrame) -> list:
        folder = Path(self.config.report_dir).expanduser().resolve()
        paths = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for study, text in zip(manifest["study_id"], manifest[f"{Modality.ECG}_{Modality.REPORT}"], strict=True):
                if not isinstance(text, str):
                    paths.append(np.nan)
                    continue
                path = folder / f"{study}.txt"
                path.write_text(text + "\n", encoding="utf-8")
                paths.append(str(path))
        except OSError as err:
            raise MedfmError(f"{folder}: cannot write the machine reports (report_dir): {err.strerror}") from None
        return paths
