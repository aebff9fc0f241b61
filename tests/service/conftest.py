"""An app over the shared indexed cohort, a client holding its token, and the cohort's study files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from medfm.heads.query import CaseSearch
from medfm.service import ServiceSettings, create_app

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
