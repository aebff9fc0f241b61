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
