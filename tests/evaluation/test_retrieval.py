"""Cross-modal recall@k against a brute-force count; case search precision@k, AP and intervals against slow loops."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from medfm.evaluation import stats
from medfm.evaluation.retrieval import (
    case_search_precision,
    case_search_queries,
    case_search_validation,
    cross_modal_retrieval,
    finding_set,
    paired_recall_at_k,
    ranked_candidates,
    shares_finding,
)
from medfm.evaluation.zero_shot import evaluate_retrieval
from medfm.heads.retrieval import Case, CaseIndex
from medfm.keys import Modality, report_of


def brute_force_recall(q, g, k):
    found = 0
    for i in range(len(q)):
        match = float(q[i] @ g[i])
        closer = sum(1 for j in range(len(g)) if j != i and float(q[i] @ g[j]) >= match)
        found += closer < k
    return found / len(q)


def test_recall_matches_a_direct_count():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    gal = torch.nn.functional.normalize(q + 0.8 * torch.randn(40, 8, generator=g), dim=1)
    result = paired_recall_at_k(q, gal)
    for k in (1, 5, 10):
        assert result[f"recall@{k}"] == pytest.approx(brute_force_recall(q, gal, k))
        assert result[f"chance@{k}"] == k / 40
    assert 0 < result["recall@1"] < result["recall@10"] <= 1


def test_perfect_and_constant_embeddings():
    eye = torch.eye(6)
    assert paired_recall_at_k(eye, eye)["recall@1"] == 1.0
    constant = torch.ones(6, 3) / 3**0.5
    assert paired_recall_at_k(constant, constant)["recall@5"] == 0.0  # ties count against the match


def test_both_directions_and_shape_errors():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(12, 4, generator=g), torch.randn(12, 4, generator=g)
    both = cross_modal_retrieval(a, b)
    assert both["image_to_report"]["recall@1"] == paired_recall_at_k(a, b)["recall@1"]
    assert both["report_to_image"]["recall@1"] == paired_recall_at_k(b, a)["recall@1"]
    with pytest.raises(ValueError, match="paired"):
        paired_recall_at_k(a, b[:5])
    assert paired_recall_at_k(np.zeros((0, 4)), np.zeros((0, 4))) == {"n": 0}


def test_pipeline_matches_each_image_with_its_own_report():
    images = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    shuffled = images[[1, 2, 3, 4, 5, 0]]
    embedded = {Modality.CXR: (images, [0, 1, 2, 3, 4, 5]),
                report_of(Modality.CXR): (images[[0, 2, 4]], [0, 2, 4]),  # each study's own report
                Modality.ECG: (images, [0, 1, 2, 3, 4, 5]),
                Modality.REPORT: (shuffled, [0, 1, 2, 3, 4, 5])}  # no own report: the study's report
    out = evaluate_retrieval(embedded)
    assert out["cxr"]["image_to_report"]["n"] == 3
    assert out["cxr"]["image_to_report"]["recall@1"] == 1.0
    assert out["ecg"]["image_to_report"]["recall@1"] == 0.0


# -- similar-case search ---------------------------------------------------------------------

CXR, ECG, FUNDUS = Modality.CXR.value, Modality.ECG.value, Modality.FUNDUS.value
NAMES = ("effusion", "edema", "nodule")


def random_index(seed=0, n=90, dim=8):
    """Random vectors (no ties), patients with several studies, two modalities with findings and one without."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        modality = (CXR, ECG, FUNDUS)[i % 3]
        shown = [name for name in NAMES if rng.random() < 0.3]
        rng.shuffle(shown)  # stored in any order; the query table sorts them
        cases.append(Case(f"S{i}", f"P{rng.integers(n // 4)}", modality,
                          findings=None if modality == FUNDUS else ", ".join(shown)))
    cases[0] = Case("S0", "P-rare", CXR, findings="pneumothorax")  # no other case shares it: AP undefined
    return CaseIndex.build(rng.normal(size=(n, dim)).astype(np.float32), cases), [c.study_id for c in cases[::2]]


def hand_ap(relevant):
    hits, total = 0, 0.0
    for rank, flag in enumerate(relevant, start=1):
        if flag:
            hits += 1
            total += hits / rank
    return total / hits if hits else math.nan


def slow_queries(index, study_ids, k):
    """One index.search per query for the top k and one over every case for the full ranking."""
    out = []
    for case_id, study, patient, modality, findings in index.db.execute(
            "SELECT id, study_id, patient_key, modality, findings FROM cases WHERE findings IS NOT NULL "
            "ORDER BY modality, id"):
        if study not in study_ids:
            continue
        own, query = finding_set(findings), index.vector(case_id)
        every = [finding_set(h.case.findings) for h in index.search(query, len(index), modality=modality,
                                                                     exclude_patient=patient)]
        top = [finding_set(h.case.findings) for h in index.search(query, k, modality=modality,
                                                                   exclude_patient=patient)]
        if not every:
            continue
        row = {"study_id": study, "findings": ", ".join(sorted(own)),
               f"precision@{k}": np.mean([shares_finding(own, f) for f in top]),
               "chance": np.mean([shares_finding(own, f) for f in every]),
               "average_precision": hand_ap([shares_finding(own, f) for f in every])}
        for name in own:
            row[f"precision@{k}.{name}"] = np.mean([name in f for f in top])
            row[f"average_precision.{name}"] = hand_ap([name in f for f in every])
        out.append(row)
    return out


@pytest.mark.parametrize("k", [3, 10])
def test_precision_and_average_precision_per_query_match_a_slow_loop_over_search(k):
    index, study_ids = random_index()
    table = case_search_queries(index, study_ids, k)
    expected = slow_queries(index, set(study_ids), k)
    assert list(table["study_id"]) == [e["study_id"] for e in expected]
    assert set(table["modality"]) == {CXR, ECG}  # fundus records no findings
    assert table["average_precision"].isna().any()  # some query with nothing relevant among its candidates
    for (_, row), want in zip(table.iterrows(), expected, strict=True):
        assert row["findings"] == want["findings"]
        for column in table.columns[4:]:
            assert row[column] == pytest.approx(want.get(column, math.nan), abs=1e-12, nan_ok=True), column


def test_a_hand_counted_ranking_leaves_out_the_own_patient():
    angles = {"S0": 0, "S1": 1, "S2": 10, "S3": 20, "S4": 30, "S5": 45, "S6": 90}
    patients = {"S0": "P0", "S1": "P0"}
    findings = {"S0": "effusion", "S1": "effusion", "S2": "edema", "S3": "edema, effusion", "S4": "",
                "S5": "effusion", "S6": "nodule"}
    vectors = np.array([[np.cos(np.radians(a)), np.sin(np.radians(a))] for a in angles.values()], np.float32)
    index = CaseIndex.build(vectors, [Case(s, patients.get(s, f"P{s}"), CXR, findings=findings[s]) for s in angles])
    table = case_search_queries(index, ["S0", "S4", "S6"], k=2).set_index("study_id")
    # S0 ranks S2 (no), S3 (yes), S4 (no), S5 (yes), S6 (no); S1, its own patient's, is left out
    s0 = table.loc["S0"]
    assert s0["precision@2"] == 0.5 and s0["average_precision"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert s0["chance"] == 2 / 5 and s0["precision@2.effusion"] == 0.5 and np.isnan(s0["precision@2.edema"])
    # the normal S4 and the nodule S6 have nothing relevant: precision 0, AP undefined
    for study in ("S4", "S6"):
        assert table.loc[study, "precision@2"] == 0 and np.isnan(table.loc[study, "average_precision"])
    assert table.loc["S6", "precision@2.nodule"] == 0 and np.isnan(table.loc["S6", "average_precision.nodule"])
    assert list(table.columns[3:]) == ["precision@2", "chance", "average_precision", "precision@2.edema",
                                       "average_precision.edema", "precision@2.effusion",
                                       "average_precision.effusion", "precision@2.nodule", "average_precision.nodule"]


def test_first_k_of_the_full_ranking_are_what_search_returns():
    index, _ = random_index(seed=1)
    for case_id, patient, modality in index.db.execute("SELECT id, patient_key, modality FROM cases"):
        ranking = ranked_candidates(index, case_id)
        every = index.search(index.vector(case_id), len(index), modality=modality, exclude_patient=patient)
        assert ranking == [h.id for h in every]
        for k in (1, 5):
            hits = index.search(index.vector(case_id), k, modality=modality, exclude_patient=patient)
            assert ranking[:k] == [h.id for h in hits]


def test_tied_cases_rank_by_id_and_the_top_k_is_the_set_search_returns():
    vectors = np.array([[1, 0], [0.8, 0.6], [0.8, 0.6], [0.8, 0.6], [0.6, 0.8], [0.8, 0.6]], np.float32)
    index = CaseIndex.build(vectors, [Case(f"S{i}", f"P{i}", CXR, findings="") for i in range(6)])
    assert ranked_candidates(index, 0) == [1, 2, 3, 5, 4]
    for k in (1, 2, 3, 4):  # FAISS orders ties its own way, but keeps the same ones
        assert set(ranked_candidates(index, 0)[:k]) == {h.id for h in index.search(vectors[0], k, exclude_patient="P0")}


def slow_interval(values, patients, n_resamples, level, seed):
    """Per resample: the rows of every drawn patient, as often as drawn, and their mean (NaN left out)."""
    keys = np.unique(patients)
    rows = [np.flatnonzero(patients == key) for key in keys]
    replicates = []
    for draws in stats.patient_resamples(len(keys), n_resamples, seed):
        for drawn in draws:
            taken = values[np.concatenate([rows[p] for p in drawn])]
            taken = taken[~np.isnan(taken)]
            replicates.append(taken.mean() if len(taken) else np.nan)
    replicates = np.asarray(replicates)
    defined = replicates[~np.isnan(replicates)]
    low, high = np.quantile(defined, [(1 - level) / 2, (1 + level) / 2]) if len(defined) else (np.nan, np.nan)
    return low, high, int(np.isnan(replicates).sum())


def assert_matches_slow(interval, values, patients, n_resamples, level, seed):
    low, high, undefined = slow_interval(values, patients, n_resamples, level, seed)
    defined = values[~np.isnan(values)]
    assert interval["estimate"] == pytest.approx(defined.mean() if len(defined) else np.nan, abs=1e-12, nan_ok=True)
    assert interval["low"] == pytest.approx(low, abs=1e-12, nan_ok=True)
    assert interval["high"] == pytest.approx(high, abs=1e-12, nan_ok=True)
    assert interval["undefined_resamples"] == undefined and interval["level"] == level
    assert interval["n_patients"] == len(np.unique(patients))
    assert interval["method"] == f"cluster bootstrap resampling patients, {n_resamples} resamples, percentile"


@pytest.mark.parametrize(("level", "seed"), [(0.95, 0), (0.8, 7)])
def test_validation_intervals_match_a_slow_loop_over_the_same_patient_draws(level, seed):
    index, study_ids = random_index(n=150)
    table = case_search_queries(index, study_ids, k=5)
    result = case_search_validation(table, k=5, n_resamples=300, level=level, seed=seed)
    assert set(result) == {CXR, ECG}
    for modality, out in result.items():
        rows = table[table["modality"] == modality]
        patients = rows["patient"].to_numpy()
        assert len(np.unique(patients)) < len(rows)  # patients with several queries: clusters matter
        assert out["n_queries"] == len(rows) and out["n_patients"] == len(np.unique(patients))
        assert out["chance"] == pytest.approx(rows["chance"].mean())
        assert out["precision@5"]["estimate"] == pytest.approx(rows["precision@5"].mean(), abs=1e-12)
        assert out["mAP"]["estimate"] == pytest.approx(rows["average_precision"].mean(), abs=1e-12)  # NaN skipped
        assert_matches_slow(out["precision@5"], rows["precision@5"].to_numpy(), patients, 300, level, seed)
        assert_matches_slow(out["mAP"], rows["average_precision"].to_numpy(), patients, 300, level, seed)
        for name, finding in out["by_finding"].items():
            positive = rows[[name in finding_set(f) for f in rows["findings"]]]
            assert finding["n_queries"] == len(positive) == positive[f"precision@5.{name}"].notna().sum()
            assert_matches_slow(finding["precision@5"], positive[f"precision@5.{name}"].to_numpy(),
                                positive["patient"].to_numpy(), 300, level, seed)
            assert_matches_slow(finding["mAP"], positive[f"average_precision.{name}"].to_numpy(),
                                positive["patient"].to_numpy(), 300, level, seed)


def test_validation_of_a_hand_made_table_with_undefined_resamples():
    table = pd.DataFrame({"modality": CXR, "study_id": ["A1", "A2", "B1", "C1"], "patient": ["A", "A", "B", "C"],
                          "findings": ["edema", "edema", "", "edema"], "precision@2": [1.0, 0.5, 0.0, 0.5],
                          "chance": [0.5, 0.5, 0.25, 0.5], "average_precision": [np.nan, np.nan, 0.2, 0.4],
                          "precision@2.edema": [1.0, 0.5, np.nan, 0.5],
                          "average_precision.edema": [np.nan, np.nan, np.nan, 0.4]})
    out = case_search_validation(table, k=2, n_resamples=500, seed=3)[CXR]
    assert out["n_queries"] == 4 and out["n_patients"] == 3
    assert out["precision@2"]["estimate"] == 0.5 and out["mAP"]["estimate"] == pytest.approx(0.3)
    assert out["mAP"]["undefined_resamples"] > 0  # resamples of patient A alone: no AP defined
    assert_matches_slow(out["mAP"], table["average_precision"].to_numpy(), table["patient"].to_numpy(), 500, 0.95, 3)
    edema = out["by_finding"]["edema"]
    assert list(out["by_finding"]) == ["edema"] and edema["n_queries"] == 3 and edema["mAP"]["n_patients"] == 2
    assert edema["precision@2"]["estimate"] == pytest.approx(2 / 3)
    assert_matches_slow(edema["precision@2"], np.array([1.0, 0.5, 0.5]), np.array(["A", "A", "C"]), 500, 0.95, 3)


def test_validation_from_the_stored_table_alone_is_reproducible(tmp_path):
    index, study_ids = random_index(seed=2)
    table = case_search_queries(index, study_ids, k=4)
    table.to_parquet(tmp_path / "case_search.parquet", index=False)
    rebuilt = case_search_validation(pd.read_parquet(tmp_path / "case_search.parquet"), k=4, n_resamples=200)
    assert json.dumps(rebuilt) == json.dumps(case_search_validation(table, k=4, n_resamples=200))  # NaN too
    narrow = case_search_validation(table, k=4, n_resamples=200, level=0.5)
    other = case_search_validation(table, k=4, n_resamples=200, seed=1)
    for modality in rebuilt:
        wide, half, reseeded = (r[modality]["precision@4"] for r in (rebuilt, narrow, other))
        assert half["high"] - half["low"] < wide["high"] - wide["low"] and half["level"] == 0.5
        assert (reseeded["low"], reseeded["high"]) != (wide["low"], wide["high"])
    with pytest.raises(ValueError, match="precision@10"):
        case_search_validation(table, k=10)
    with pytest.raises(ValueError, match="level"):
        case_search_validation(table, k=4, level=1.5)


def previous_case_search_precision(index, study_ids, k=10):
    """case_search_precision as it was before it was built on case_search_queries: one search per query."""
    wanted = set(study_ids)
    rows = list(index.db.execute("SELECT id, study_id, patient_key, modality, findings FROM cases "
                                 "WHERE findings IS NOT NULL ORDER BY id"))
    out = {}
    for modality in sorted({r[3] for r in rows}):
        gallery = [(r[2], finding_set(r[4])) for r in rows if r[3] == modality]
        queries = [r for r in rows if r[3] == modality and r[1] in wanted]
        precision, chance, per_finding = [], [], {}
        for case_id, _, patient, _, findings in queries:
            own = finding_set(findings)
            hits = index.search(index.vector(case_id), k, modality=modality, exclude_patient=patient)
            found = [finding_set(h.case.findings) for h in hits]
            if not found:
                continue
            precision.append(np.mean([shares_finding(own, f) for f in found]))
            chance.append(np.mean([shares_finding(own, f) for p, f in gallery if p != patient]))
            for name in own:
                per_finding.setdefault(name, []).append(np.mean([name in f for f in found]))
        if precision:
            out[modality] = {f"precision@{k}": float(np.mean(precision)), "chance": float(np.mean(chance)),
                             "n_queries": len(precision), "gallery": len(gallery),
                             "by_finding": {name: {f"precision@{k}": float(np.mean(v)), "n_queries": len(v)}
                                            for name, v in sorted(per_finding.items())}}
    return out


@pytest.mark.parametrize(("seed", "k"), [(0, 10), (3, 5)])
def test_case_search_precision_returns_what_it_returned_before(seed, k):
    index, study_ids = random_index(seed=seed)
    index.add(np.ones((1, 8), np.float32), [Case("alone", "only-patient", Modality.CT.value, findings="nodule")])
    result = case_search_precision(index, [*study_ids, "alone"], k)
    table = case_search_queries(index, [*study_ids, "alone"], k)
    for out in result.values():
        mean_ap = out.pop("mAP")
        assert 0 < mean_ap <= 1
    assert result == previous_case_search_precision(index, [*study_ids, "alone"], k)  # exactly, floats included
    assert Modality.CT.value not in result and "alone" not in set(table["study_id"])  # nothing to return: dropped
    assert mean_ap == pytest.approx(table.loc[table["modality"] == ECG, "average_precision"].mean())
