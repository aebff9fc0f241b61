"""Shared fixtures. Every file a test reads is written here, or comes from ../shared/realdata."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
REPO = Path(__file__).resolve().parents[1]

# Keep BLAS from oversubscribing the 2-core CI machine when DataLoader workers fork.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"{REALDATA} not present")
    return REALDATA



@dataclass(frozen=True)
class IndexedCohort:
    """A small synthetic cohort, an untrained tiny model's checkpoint and the case index built from both."""

    root: Path
    cohort: Path  # cohort YAML
    manifest: Path
    model: Path  # checkpoint folder
    index: Path  # index folder


def make_indexed_cohort(root: Path, patients: int = 12, seed: int = 0) -> IndexedCohort:
    """Write a cohort of ``patients`` (every modality), save the tiny model, index the cohort with it."""
    from medfm.cohort.synth import synthesize_cohort
    from medfm.heads.cases import update_index
    from medfm.models import create_model, load_model_config

    manifest = synthesize_cohort(root / "data", n_patients=patients, seed=seed)
    cohort = (REPO / "cohorts/demo.yaml").read_text().replace("../data/demo/manifest.csv", "data/manifest.csv")
    cohort = cohort.replace("patients: 600", f"patients: {patients}").replace("seed: 0", f"seed: {seed}", 1)
    (root / "cohort.yaml").write_text(cohort)
    model = create_model(load_model_config(REPO / "configs/models/tiny.yaml"), seed=0)
    model.save_pretrained(root / "model")
    update_index(root / "index", root / "model", root / "cohort.yaml")
    return IndexedCohort(root, root / "cohort.yaml", manifest, root / "model", root / "index")


@pytest.fixture(scope="session")
def indexed_cohort(tmp_path_factory) -> IndexedCohort:
    """Shared read-only: tests that change the index copy it first (``shutil.copytree``)."""
    return make_indexed_cohort(tmp_path_factory.mktemp("indexed"))
