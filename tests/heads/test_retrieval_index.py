"""The similar-case index: exact and HNSW search against brute force, filters, own-patient exclusion, files."""

import numpy as np
import pytest

from medfm.errors import MedfmError
from medfm.heads.retrieval import Case, CaseIndex, IndexConfig, IndexFileError

DIM = 16


def clustered(n, seed=0, clusters=20):
    """Unit vectors around a few centres: real embeddings have neighbours worth finding, uniform ones do not."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    x = centres[rng.integers(clusters, size=n)] + 0.3 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cases(n):
    return [Case(study_id=f"S{i}", patient_key=f"P{i // 2}", modality="cxr" if i % 3 else "ecg",
                 site="site_a" if i % 4 else "site_b", device="D1", date=f"2020-01-{1 + i % 28:02d}",
                 report=f"report {i}") for i in range(n)]


def brute_force(vectors, query, allowed):
    scores = vectors @ query
    return sorted(allowed, key=lambda i: -scores[i])


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_search_with_filters_matches_brute_force_over_the_allowed_cases(kind):
    vectors, meta = clustered(300), cases(300)
    index = CaseIndex.build(vectors, meta, IndexConfig(kind=kind))
    query, own = vectors[7], meta[7]
    hits = index.search(query, k=5, modality="cxr", site="site_a", date_from="2020-01-05",
                        exclude_patient=own.patient_key)
    allowed = [i for i, c in enumerate(meta) if c.modality == "cxr" and c.site == "site_a"
               and c.date >= "2020-01-05" and c.patient_key != own.patient_key]
    assert [h.case.study_id for h in hits] == [f"S{i}" for i in brute_force(vectors, query, allowed)[:5]]
    assert all(h.case.patient_key != own.patient_key for h in hits)
    assert hits[0].score == pytest.approx(float(vectors[int(hits[0].case.study_id[1:])] @ query), abs=1e-5)


def test_own_patient_is_returned_only_when_not_excluded():
    vectors, meta = clustered(40), cases(40)
    index = CaseIndex.build(vectors, meta)
    assert index.search(vectors[4], k=1)[0].case.study_id == "S4"
    assert index.search(vectors[4], k=1, exclude_patient="P2")[0].case.patient_key != "P2"


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_is_measured_at_build(kind):
    index = CaseIndex.build(clustered(2000), cases(2000), IndexConfig(kind=kind, recall_queries=200))
    assert index.kind == kind and 0.9 <= index.recall_at_10 <= 1.0
    assert CaseIndex.build(clustered(50), cases(50)).recall_at_10 is None  # exact: nothing to measure


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_removed_studies_are_never_returned_and_added_ones_are(kind):
    vectors, meta = clustered(100), cases(100)
    index = CaseIndex.build(vectors[:90], meta[:90], IndexConfig(kind=kind))
    assert index.remove(["S3", "S4"]) == 2
    assert all(h.case.study_id not in {"S3", "S4"} for h in index.search(vectors[3], k=10))
    index.add(vectors[90:], meta[90:])
    assert index.search(vectors[95], k=1)[0].case.study_id == "S95"
    assert len(index) == 98
    with pytest.raises(MedfmError, match="already in the index"):
        index.add(vectors[:1], meta[:1])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_saved_index_loads_with_the_same_answers_and_a_tampered_file_is_refused(tmp_path, kind):
    vectors, meta = clustered(200), cases(200)
    index = CaseIndex.build(vectors, meta, IndexConfig(kind=kind))
    index.remove(["S10"])
    first = index.save(tmp_path / "idx")
    loaded = CaseIndex.load(tmp_path / "idx")
    assert loaded.recall_at_10 == index.recall_at_10 and len(loaded) == 199
    assert [h.case for h in loaded.search(vectors[11], k=5)] == [h.case for h in index.search(vectors[11], k=5)]
    second = loaded.save(tmp_path / "idx")
    assert not first.exists() and second.exists()  # the old version goes once the new one is current
    with (second / "vectors.faiss").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
    with pytest.raises(IndexFileError, match="SHA-256"):
        CaseIndex.load(tmp_path / "idx")


def test_an_interrupted_save_leaves_the_previous_version_current(tmp_path):
    vectors, meta = clustered(50), cases(50)
    CaseIndex.build(vectors, meta).save(tmp_path / "idx")
    (tmp_path / "idx" / "v-crashed").mkdir()  # a version whose writer died before switching CURRENT
    (tmp_path / "idx" / "v-crashed" / "vectors.faiss").write_bytes(b"partial")
    assert len(CaseIndex.load(tmp_path / "idx")) == 50
    with pytest.raises(IndexFileError, match="not a complete medfm index"):
        CaseIndex.load(tmp_path / "nothing-here")


def test_unfiltered_exact_search_scans_with_blas_and_agrees_with_faiss_after_remove_and_add():
    import faiss

    vectors, meta = clustered(500, seed=3), cases(500)
    index = CaseIndex.build(vectors, meta, IndexConfig(kind="exact"))
    index.remove([f"S{i}" for i in range(0, 500, 7)])
    index.add(clustered(40, seed=4), [Case(**{**c.__dict__, "study_id": f"N{i}"}) for i, c in enumerate(cases(40))])
    queries = clustered(6, seed=5)
    scores, ids = index._scan(queries, 10)  # the path index.search takes without filters
    faiss_scores, faiss_ids = index.vectors.search(queries, 10, params=faiss.SearchParameters())
    np.testing.assert_array_equal(ids, faiss_ids)
    np.testing.assert_allclose(scores, faiss_scores, atol=1e-5)
    assert [h.id for h in index.search(queries[0], k=10)] == faiss_ids[0].tolist()
    everything = index._scan(queries[:1], 10_000)[1][0]
    assert len(everything) == len(index) and len(set(everything.tolist())) == len(index)


# -- cohorts ---------------------------------------------------------------------------------------


def in_cohorts(n):
    """``cases(n)`` split into two cohorts: even-numbered cases are cohort ``b``."""
    return [Case(**{**c.__dict__, "cohort": "b" if i % 2 == 0 else "a"}) for i, c in enumerate(cases(n))]


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_a_cohort_filter_keeps_k_results_when_another_cohort_holds_closer_cases(kind):
    vectors, meta = clustered(300), in_cohorts(300)
    index = CaseIndex.build(vectors, meta, IndexConfig(kind=kind, nprobe=64))
    query = vectors[0]  # a case of cohort b: its own cohort holds the closest case, itself
    assert index.search(query, k=1)[0].case.cohort == "b"
    allowed = [i for i, c in enumerate(meta) if c.cohort == "a"]
    hits = index.search(query, k=10, cohorts=["a"])
    assert len(hits) == 10 and {h.case.cohort for h in hits} == {"a"}
    assert [h.case.study_id for h in hits] == [f"S{i}" for i in brute_force(vectors, query, allowed)[:10]]
    assert index.search(query, k=10, cohorts=[]) == [] and index.search(query, k=10, cohorts=["nowhere"]) == []
    assert [h.id for h in index.search(query, k=10, cohorts={"a", "b"})] == [h.id for h in index.search(query, k=10)]
    assert index.counts() == {(c, m): sum(1 for x in meta if (x.cohort, x.modality) == (c, m))
                              for c in "ab" for m in ("cxr", "ecg")}


def as_format_1(directory, cohorts: list[str]) -> None:
    """Rewrite a saved index as format 1 wrote it: no cohort column, the cohorts only in ``info``."""
    import json
    import sqlite3

    from medfm.atomic import sha256_file

    version = directory / (directory / "CURRENT").read_text().strip()
    with sqlite3.connect(version / "cases.sqlite") as db:
        db.execute("ALTER TABLE cases DROP COLUMN cohort")
    db.close()
    meta = json.loads((version / "index.json").read_text())
    meta["format"], meta["info"] = "medfm-index/1", {**meta["info"], "cohorts": cohorts}
    meta["files"]["cases.sqlite"] = sha256_file(version / "cases.sqlite")
    (version / "index.json").write_text(json.dumps(meta))


def test_a_format_1_index_of_one_cohort_is_upgraded_and_one_of_several_is_refused_naming_the_rebuild(tmp_path):
    vectors, meta = clustered(60), cases(60)
    index = CaseIndex.build(vectors, meta)
    index.info = {"model": "/ckpt/tiny", "cohorts": ["demo"]}
    index.save(tmp_path / "one")
    as_format_1(tmp_path / "one", ["demo"])
    upgraded = CaseIndex.load(tmp_path / "one")
    assert {upgraded.case(i).cohort for i in range(60)} == {"demo"}
    assert len(upgraded.search(vectors[3], k=5, cohorts=["demo"])) == 5
    saved = upgraded.save(tmp_path / "one")
    assert '"format": "medfm-index/2"' in (saved / "index.json").read_text()
    assert CaseIndex.load(tmp_path / "one").case(0).cohort == "demo"

    index.save(tmp_path / "two")
    as_format_1(tmp_path / "two", ["demo", "site_b"])
    with pytest.raises(IndexFileError, match="demo, site_b") as caught:
        CaseIndex.load(tmp_path / "two")
    assert "medfm index build --fresh --model /ckpt/tiny" in str(caught.value)
    assert "medfm index add" in str(caught.value)


@pytest.mark.parametrize("files", [{}, None, {"vectors.faiss": "0" * 64}])
def test_an_index_whose_record_lacks_a_file_hash_is_refused(tmp_path, files):
    import json

    CaseIndex.build(clustered(30), cases(30)).save(tmp_path)
    meta_path = next(tmp_path.glob("v-*")) / "index.json"
    meta = json.loads(meta_path.read_text())
    if files is None:
        del meta["files"]
    else:
        meta["files"] = files
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match="does not record the SHA-256"):
        CaseIndex.load(tmp_path)
