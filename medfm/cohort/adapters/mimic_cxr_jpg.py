"""MIMIC-CXR-JPG 2.0.0 / 2.1.0 (PhysioNet) → medfm manifest, one row per study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medfm.cohort.adapters._common import (
    CHEXPERT_LABELS,
    UncertainPolicy,
    chexpert_labels,
    find_table,
    first_by_preference,
    read_table,
)
from medfm.config import Config
from medfm.keys import Modality
from medfm.registry import ADAPTERS

# MIMIC-CXR-JPG's label file lists the same findings alphabetically; its manifests keep that order.
MIMIC_LABELS: tuple[str, ...] = tuple(sorted(CHEXPERT_LABELS))
_PREFIX = "mimic-cxr-2.0.0-"


@ADAPTERS.register("mimic_cxr_jpg")
class MIMICCXRJPG:
    """MIMIC-CXR-JPG: 377,110 chest radiographs (JPG) of 227,827 studies at BIDMC, 2011-2016.

    Citation:
        Johnson A, Lungren M, Peng Y, Lu Z, Mark R, Berkowitz S, Horng S. MIMIC-CXR-JPG - chest
        radiographs with structured labels (version 2.1.0). PhysioNet (2024).
        https://doi.org/10.13026/jsn5-t979; and Johnson AEW et al. MIMIC-CXR, a de-identified
        publicly available database of chest radiographs with free-text reports. Sci Data 6, 317
        (2019). Reports come from MIMIC-CXR (https://doi.org/10.13026/C2JT1Q).

    Access:
        Credentialed access on PhysioNet: PhysioNet credentialing, CITI human-research training and
        the PhysioNet Credentialed Health Data Use Agreement 1.5.0.

    Labels (from ``mimic-cxr-2.0.0-chexpert.csv``, the CheXpert labeller run on the report):
        ``atelectasis``, ``cardiomegaly``, ``consolidation``, ``edema``,
        ``enlarged_cardiomediastinum``, ``fracture``, ``lung_lesion``, ``lung_opacity``,
        ``no_finding``, ``pleural_effusion``, ``pleural_other``, ``pneumonia``, ``pneumothorax``,
        ``support_devices``. 1 → 1.0, 0 → 0.0, -1 (uncertain) → the ``uncertain`` policy
        (NaN by default), blank (not mentioned) → NaN. A study missing from the label file has
        NaN for all.

    One row per study: the image is the study's first frontal view in the order of ``views``
    (PA before AP by default: PA is the standard erect projection, AP mostly portable/supine),
    ties broken by acquisition date, time and ``dicom_id``. Studies with no such view (e.g.
    lateral-only) are left out. ``official_split`` is the published split of that image
    (``train``/``validate``/``test``).

    Manifest columns:
        ``patient_id`` (``subject_id``), ``study_id``, ``dicom_id``, ``cxr_path``
        (``files/p10/p10000032/s50414267/<dicom_id>.jpg``), ``view_position``, ``site``
        (``BIDMC``), ``study_date`` (shifted ``StudyDate``), ``official_split``, ``report_path``
        (absolute; only with ``reports_root``, NaN where the report file is absent) and the labels.
        MIMIC-CXR-JPG has no age or sex; join MIMIC-IV ``patients`` for them.
    """

    class Config(Config):
        """Options of the MIMIC-CXR-JPG adapter.

        Attributes:
            uncertain: what -1 becomes: ``unknown`` (NaN), ``positive`` (1.0) or ``negative`` (0.0).
            views: ``ViewPosition`` values that may represent a study, most preferred first.
            reports_root: folder of MIMIC-CXR (the DICOM/report release) holding
                ``files/p10/p10000032/s50414267.txt``; relative paths start from the dataset root.
        """

        uncertain: UncertainPolicy = "unknown"
        views: list[str] = ["PA", "AP"]
        reports_root: str | None = None

    def __init__(self, config: MIMICCXRJPG.Config | None = None, **options):
        self.config = config if config is not None else self.Config(**options)

    def build_manifest(self, root: str | Path) -> pd.DataFrame:
        """One row per study with a frontal image in the MIMIC-CXR-JPG folder ``root``.

        Raises:
            DatasetLayoutError: one of the three published CSVs is missing or lacks a column.
            MedfmError: the label file holds a value other than 1, 0, -1 or blank.
        """
        root = Path(root)
        ids = {"subject_id": str, "study_id": str, "dicom_id": str}
        metadata = read_table(find_table(root, f"{_PREFIX}metadata.csv"),
                              ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"),
                              dtype={**ids, "StudyDate": str})
        labels_path = find_table(root, f"{_PREFIX}chexpert.csv")
        labels = read_table(labels_path, ("subject_id", "study_id", *MIMIC_LABELS), dtype=ids)
        split = read_table(find_table(root, f"{_PREFIX}split.csv"), ("dicom_id", "split"), dtype=ids)

        rank = metadata["ViewPosition"].map({v: i for i, v in enumerate(self.config.views)})
        frontal = metadata[rank.notna()]
        chosen = first_by_preference(frontal, "study_id", rank[rank.notna()],
                                     ["StudyDate", "StudyTime", "dicom_id"])
        chosen = chosen.sort_values(["subject_id", "study_id"], kind="stable").reset_index(drop=True)

        values = chexpert_labels(labels, MIMIC_LABELS, self.config.uncertain, labels_path)
        values.index = labels["study_id"].to_numpy()
        values = values[~values.index.duplicated()]

        subject, study = chosen["subject_id"], chosen["study_id"]
        folder = "files/p" + subject.str[:2] + "/p" + subject + "/s" + study
        manifest = pd.DataFrame({
            "patient_id": subject,
            "study_id": study,
            "dicom_id": chosen["dicom_id"],
            f"{Modality.CXR}_path": folder + "/" + chosen["dicom_id"] + ".jpg",
            "view_position": chosen["ViewPosition"],
            "site": "BIDMC",
            "study_date": pd.to_datetime(chosen["StudyDate"], format="%Y%m%d", errors="coerce").dt.strftime("%Y-%m-%d"),
            "official_split": chosen["dicom_id"].map(split.drop_duplicates("dicom_id").set_index("dicom_id")["split"]),
        })
        if self.config.reports_root is not None:
            reports = Path(self.config.reports_root).expanduser()
            reports = reports if reports.is_absolute() else root / reports
            manifest[f"{Modality.REPORT}_path"] = [
                str(p) if p.is_file() else np.nan for p in (reports / (f + ".txt") for f in folder)
            ]
        labelled = values.reindex(study.to_numpy()).reset_index(drop=True)
        return pd.concat([manifest, labelled], axis=1)
