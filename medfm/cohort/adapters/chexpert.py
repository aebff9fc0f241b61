"""CheXpert v1.0 (Stanford AIMI) → medfm manifest, one row per study."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medfm.cohort.adapters._common import (
    CHEXPERT_LABELS,
    DatasetLayoutError,
    UncertainPolicy,
    chexpert_labels,
    find_table,
    first_by_preference,
    read_table,
    snake_case,
)
from medfm.config import Config
from medfm.keys import Modality
from medfm.registry import ADAPTERS

_PATH_PATTERN = (r"(?:^|/)(?P<split>train|valid)/(?P<patient>patient\d+)/(?P<study>study\d+)"
                 r"/(?P<view>view(?P<n>\d+)_[^/]+)$")


@ADAPTERS.register("chexpert")
class CheXpert:
    """CheXpert: 224,316 chest radiographs of 65,240 patients, Stanford Hospital, 2002-2017.

    Citation:
        Irvin J, Rajpurkar P, Ko M, et al. CheXpert: A Large Chest Radiograph Dataset with
        Uncertainty Labels and Expert Comparison. AAAI 2019. https://arxiv.org/abs/1901.07031

    Access:
        Stanford University School of Medicine CheXpert Dataset Research Use Agreement: personal,
        non-commercial research use only, no redistribution; registration at Stanford AIMI.

    Labels (from the CheXpert labeller on ``train.csv``; radiologist consensus, 0/1 only, on
    ``valid.csv``):
        ``no_finding``, ``enlarged_cardiomediastinum``, ``cardiomegaly``, ``lung_opacity``,
        ``lung_lesion``, ``edema``, ``consolidation``, ``pneumonia``, ``atelectasis``,
        ``pneumothorax``, ``pleural_effusion``, ``pleural_other``, ``fracture``,
        ``support_devices``. 1 → 1.0, 0 → 0.0, -1 (uncertain) → the ``uncertain`` policy
        (NaN by default; U-Ones = ``positive``, U-Zeros = ``negative``), blank → NaN.

    One row per study: the first frontal image (``Frontal/Lateral == Frontal``), PA before AP
    before other projections, then by view number; lateral-only studies are left out unless
    ``frontal_only`` is false (then a lateral image represents them). Labels are the chosen
    image's (the labeller reads one report per study, so a study's images share them).

    Manifest columns:
        ``patient_id`` (``patient00001``), ``study_id`` (``patient00001/study1``), ``cxr_path``
        (``train/patient00001/study1/view1_frontal.jpg``, relative to the folder holding
        ``train.csv``), ``view_position`` (``AP/PA``), ``site`` (``Stanford``), ``age``, ``sex``
        (``M``/``F``; ``Unknown`` → NaN), ``official_split`` (``train``/``valid``) and the labels.
        No study dates are published.
    """

    class Config(Config):
        """Options of the CheXpert adapter.

        Attributes:
            uncertain: what -1 becomes: ``unknown`` (NaN), ``positive`` (1.0) or ``negative`` (0.0).
            splits: which published CSVs to read (``train``, ``valid``).
            frontal_only: leave out studies without a frontal image.
        """

        uncertain: UncertainPolicy = "unknown"
        splits: list[str] = ["train", "valid"]
        frontal_only: bool = True

    def __init__(self, config: CheXpert.Config | None = None, **options):
        self.config = config if config is not None else self.Config(**options)

    def build_manifest(self, root: str | Path) -> pd.DataFrame:
        """One row per study of the CheXpert-v1.0(-small) folder ``root`` (the one holding ``train.csv``).

        Raises:
            DatasetLayoutError: a CSV is missing, lacks a column or has a ``Path`` outside the
                published ``<split>/patientNNNNN/studyN/viewN_*.jpg`` layout.
            MedfmError: a label value other than 1, 0, -1 or blank.
        """
        root = Path(root)
        parts = [self._read_split(root, split) for split in self.config.splits]
        images = pd.concat(parts, ignore_index=True)
        frontal = images["Frontal/Lateral"] == "Frontal"
        if self.config.frontal_only:
            images = images[frontal]
        projection = images["AP/PA"].map({"PA": 0, "AP": 1}).fillna(2)
        rank = (~frontal[images.index]).astype(int) * 10 + projection
        chosen = first_by_preference(images, "study_id", rank, ["view_number"]).sort_values(
            ["official_split", "patient_id", "study_number"], kind="stable").reset_index(drop=True)
        manifest = pd.DataFrame({
            "patient_id": chosen["patient_id"],
            "study_id": chosen["study_id"],
            f"{Modality.CXR}_path": chosen["cxr_path"],
            "view_position": chosen["AP/PA"],
            "site": "Stanford",
            "age": pd.to_numeric(chosen["Age"], errors="coerce").astype(float),
            "sex": chosen["Sex"].map({"Male": "M", "Female": "F"}),
            "official_split": chosen["official_split"],
        })
        labels = chosen[[snake_case(c) for c in CHEXPERT_LABELS]]
        return pd.concat([manifest, labels], axis=1)

    def _read_split(self, root: Path, split: str) -> pd.DataFrame:
        path = find_table(root, f"{split}.csv")
        table = read_table(path, ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS))
        parsed = table["Path"].astype(str).str.extract(_PATH_PATTERN)
        if parsed["patient"].isna().any():
            bad = table.loc[parsed["patient"].isna(), "Path"].iloc[0]
            raise DatasetLayoutError(path, f"Path {bad!r} is not <split>/patientNNNNN/studyN/viewN_<view>.jpg")
        labels = chexpert_labels(table, CHEXPERT_LABELS, self.config.uncertain, path)
        return pd.concat([
            table[["Sex", "Age", "Frontal/Lateral", "AP/PA"]],
            pd.DataFrame({
                "patient_id": parsed["patient"],
                "study_id": parsed["patient"] + "/" + parsed["study"],
                "study_number": parsed["study"].str.removeprefix("study").astype(int),
                "view_number": parsed["n"].astype(int),
                # Paths in the CSV start with the release folder (CheXpert-v1.0-small/); drop it.
                "cxr_path": parsed["split"] + "/" + parsed["patient"] + "/" + parsed["study"] + "/" + parsed["view"],
                "official_split": parsed["split"],
            }),
            labels,
        ], axis=1)
