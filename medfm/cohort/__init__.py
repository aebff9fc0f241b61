"""Cohort definitions → manifests, inclusion rules, splits, leakage checks and descriptions."""

from medfm.cohort.describe import describe_cohort, format_description, write_description
from medfm.cohort.inclusion import Exclusion, InclusionRule, apply_inclusion, apply_inclusion_rules
from medfm.cohort.leakage import check_near_duplicate_leakage
from medfm.cohort.manifest import Cohort, CohortConfig, ExternalSpec, SourceSpec, SplitSpec, load_cohort
from medfm.cohort.splits import (
    LeakageError,
    SplitError,
    assign_splits,
    check_no_patient_leakage,
    external_patients,
    holdout_split,
    patient_level_split,
    temporal_split,
)

__all__ = [
    "Cohort", "CohortConfig", "Exclusion", "ExternalSpec", "InclusionRule", "LeakageError", "SourceSpec",
    "SplitError", "SplitSpec", "apply_inclusion", "apply_inclusion_rules", "assign_splits",
    "check_near_duplicate_leakage", "check_no_patient_leakage", "describe_cohort", "external_patients",
    "format_description", "holdout_split", "load_cohort", "patient_level_split", "temporal_split",
    "write_description",
]
