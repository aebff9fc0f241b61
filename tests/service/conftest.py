"""An app over the shared indexed cohort, a client holding its token, the cohort's study files; two cohorts."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from medfm.cohort.synth import synthesize_cohort
from medfm.heads.cases import update_index
from medfm.heads.query import CaseSearch
from medfm.service import ServiceSettings, create_app
from medfm.service.tokens import AccessToken, token_sha256

TOKEN = "test-token-5f1c9a7e2b"


@pytest.fixture(scope="session")
def case_search(indexed_cohort) -> CaseSearch:
    return CaseSearch.open(indexed_cohort.index)


@pytest.fixture(scope="session")
def client(case_search) -> TestClient:
    """A client of an app with ``TOKEN``, sending it on every request."""
    with TestClient(create_app(case_search, ServiceSettings(token=TOKEN)),
                    headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture(scope="session")
def studies(indexed_cohort) -> dict[str, Path]:
    """One study file (or folder, or WFDB record path) per kind: ``cxr``, ``ct``, ``ecg``, ``fundus_png``."""
    data = indexed_cohort.manifest.parent
    with indexed_cohort.manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))

    def first(column: str, suffix: str = "") -> Path:
        return data / next(row[column] for row in rows if row[column] and row[column].endswith(suffix))

    return {"cxr": first("cxr_path", ".dcm"), "ct": first("ct_path"), "ecg": first("ecg_path"),
            "fundus_png": first("fundus_path", ".png")}


# -- an index of two cohorts, and tokens scoped to them ---------------------------------------------

SECOND = "second_site"
SCOPED = {"everything": ("secret-everything-3c1f", "all"), "demo-only": ("secret-demo-only-8a2e", ["demo"]),
          "second-only": ("secret-second-only-51d0", [SECOND])}


def scoped_tokens() -> list[AccessToken]:
    return [AccessToken(name=name, sha256=token_sha256(secret), cohorts=cohorts)
            for name, (secret, cohorts) in SCOPED.items()]


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SCOPED[name][0]}"}


@pytest.fixture(scope="session")
def two_cohorts_index(indexed_cohort, tmp_path_factory) -> Path:
    """A copy of the shared index with a second, 10-patient cohort added (its study and patient ids prefixed B)."""
    root = tmp_path_factory.mktemp("two-cohorts")
    shutil.copytree(indexed_cohort.index, root / "index")
    manifest = synthesize_cohort(root / "data", n_patients=10, seed=1, progress=False)
    table = pd.read_csv(manifest)
    table["study_id"], table["patient_id"] = "B" + table["study_id"], "B" + table["patient_id"]
    table.to_csv(manifest, index=False)
    cohort = indexed_cohort.cohort.read_text().replace("name: demo\n", f"name: {SECOND}\n", 1)
    (root / "cohort.yaml").write_text(cohort.replace("patients: 12", "patients: 10"))
    update_index(root / "index", indexed_cohort.model, root / "cohort.yaml", console=Console(quiet=True))
    return root / "index"


@pytest.fixture(scope="session")
def two_cohorts_search(two_cohorts_index) -> CaseSearch:
    return CaseSearch.open(two_cohorts_index)
