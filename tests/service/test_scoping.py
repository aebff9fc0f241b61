"""Tokens scoped to cohorts, on an index holding two: what a token may not see is never searched, never served."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from medfm.service import ServiceSettings, create_app
from tests.service.conftest import SECOND, bearer, scoped_tokens


@pytest.fixture(scope="module")
def app_client(two_cohorts_search) -> TestClient:
    with TestClient(create_app(two_cohorts_search, ServiceSettings(tokens=scoped_tokens()))) as client:
        yield client


def cohort_of(search, case_id: int) -> str:
    return search.index.case(case_id).cohort


def ids_of_cohort(search, cohort: str) -> list[int]:
    return [row[0] for row in search.index.db.execute("SELECT id FROM cases WHERE cohort = ? ORDER BY id", (cohort,))]


def test_the_index_holds_both_cohorts(two_cohorts_search):
    counts = two_cohorts_search.index.counts()
    assert {cohort for cohort, _ in counts} == {"demo", SECOND}
    assert two_cohorts_search.index.info["cohorts"] == sorted(["demo", SECOND])


def test_a_scoped_search_returns_k_cases_of_its_cohort_when_another_holds_closer_ones(app_client, two_cohorts_search):
    # The query is a second-cohort case's own report: for a token seeing everything, that cohort's cases rank high.
    second = two_cohorts_search.index.case(ids_of_cohort(two_cohorts_search, SECOND)[0])
    form = {"text": second.report, "k": "100", "include_own_patient": "true"}
    everything = app_client.post("/api/search", data=form, headers=bearer("everything")).json()["results"]
    assert len(everything) == len(two_cohorts_search.index)
    ranked_demo = [hit["id"] for hit in everything if hit["cohort"] == "demo"]
    assert {hit["cohort"] for hit in everything[:5]} & {SECOND}  # closer cases exist in the other cohort
    for k in (1, 5, 10):
        scoped = app_client.post("/api/search", data={**form, "k": str(k)}, headers=bearer("demo-only")).json()
        assert [hit["id"] for hit in scoped["results"]] == ranked_demo[:k]  # k results, the same order
        assert {cohort_of(two_cohorts_search, hit["id"]) for hit in scoped["results"]} == {"demo"}
    only_second = app_client.post("/api/search", data=form, headers=bearer("second-only")).json()["results"]
    assert len(only_second) == len(ids_of_cohort(two_cohorts_search, SECOND))
    assert {hit["cohort"] for hit in only_second} == {SECOND}


def test_filters_and_scope_combine(app_client, two_cohorts_search):
    response = app_client.post("/api/search", data={"text": "cardiomegaly", "k": "100", "filter_modality": "ecg"},
                               headers=bearer("second-only"))
    results = response.json()["results"]
    expected = two_cohorts_search.index.db.execute(
        "SELECT COUNT(*) FROM cases WHERE cohort = ? AND modality = 'ecg'", (SECOND,)).fetchone()[0]
    assert len(results) == expected > 0
    assert {(hit["cohort"], hit["modality"]) for hit in results} == {(SECOND, "ecg")}


@pytest.mark.parametrize("path", ["/api/cases/{id}", "/api/cases/{id}/thumbnail"])
def test_a_case_of_another_cohort_is_a_404_like_a_missing_one(app_client, two_cohorts_search, path):
    other = ids_of_cohort(two_cohorts_search, SECOND)[0]
    mine = ids_of_cohort(two_cohorts_search, "demo")[0]
    missing = 10**9
    assert app_client.get(path.format(id=mine), headers=bearer("demo-only")).status_code == 200
    assert app_client.get(path.format(id=other), headers=bearer("everything")).status_code == 200
    hidden = app_client.get(path.format(id=other), headers=bearer("demo-only"))
    absent = app_client.get(path.format(id=missing), headers=bearer("demo-only"))
    assert hidden.status_code == absent.status_code == 404
    # The same words, but for the id: nothing tells "exists elsewhere" from "does not exist".
    assert hidden.json()["detail"].replace(str(other), "N") == absent.json()["detail"].replace(str(missing), "N")
    assert SECOND not in hidden.text


def test_version_counts_only_what_the_token_may_see(app_client, two_cohorts_search):
    demo = app_client.get("/api/version", headers=bearer("demo-only")).json()
    everything = app_client.get("/api/version", headers=bearer("everything")).json()
    assert demo["cases"] == len(ids_of_cohort(two_cohorts_search, "demo")) and demo["cohorts"] == ["demo"]
    assert everything["cases"] == len(two_cohorts_search.index) and everything["cohorts"] == ["demo", SECOND]


def test_a_token_scoped_to_a_cohort_the_index_lacks_sees_nothing_and_is_warned_of(two_cohorts_search, caplog):
    from medfm.service.tokens import AccessToken, token_sha256

    typo = AccessToken(name="typo", sha256=token_sha256("typo-secret"), cohorts=["dmeo"])
    with TestClient(create_app(two_cohorts_search, ServiceSettings(tokens=[typo])),
                    headers={"Authorization": "Bearer typo-secret"}) as client:
        assert client.post("/api/search", data={"text": "effusion"}).json()["results"] == []
        assert client.get("/api/version").json()["cases"] == 0
    assert "'typo'" in caplog.text and "dmeo" in caplog.text and "typo-secret" not in caplog.text
