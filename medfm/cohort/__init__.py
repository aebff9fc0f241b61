"""Cohort definitions → manifests, splits and leakage checks."""

from medfm.cohort.manifest import Cohort, CohortConfig, load_cohort
from medfm.cohort.splits import LeakageError, check_no_patient_leakage, patient_level_split

__all__ = [
    "Cohort", "CohortConfig", "LeakageError", "check_no_patient_leakage", "load_cohort",
    "patient_level_split",
]
