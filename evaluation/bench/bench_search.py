"""Similar-case search: exact and approximate search of 1M clustered unit vectors against the machine's limits.

Everything is measured in one process, with FAISS's OpenMP threads set to the core count:

1. machine limits: the fp32 matmul peak, through the OpenBLAS that FAISS itself calls
   (its ``sgemm_``, loaded from the faiss wheel) and, for context, numpy's BLAS and
   torch (``bench_train.matmul_peak_gflops``); the baseline is the best of the three.
   Memory read bandwidth: the best rate of streaming a 1 GiB float32 array, by numpy's
   sum (one thread) and by numpy's BLAS matrix-vector product (all threads);
2. data: 1,000,000 unit vectors of dimension 128 (the demo model's ``embed_dim``) around
   4096 centres in 64 groups (``clustered_unit_vectors``), fixed seed; the queries are 1024
   held-out points of the same distribution, never stored vectors;
3. exact search (``IndexFlatIP`` inside ``CaseIndex``'s ``IndexIDMap2``): the 1024
   queries as one batch, in GFLOP/s (2·n·d·nq / time) against the matmul peak (target ≥ 70%), and single
   queries in bytes scanned per second (n·d·4 / p50) against the memory bandwidth (target
   ≥ 40%) through ``CaseIndex.search`` (an unfiltered exact query is one BLAS product over
   the stored vectors, on every thread), against FAISS's default path (a SIMD scan below
   ``distance_compute_blas_threshold``, one thread per query) and through FAISS's BLAS path
   (threshold 0);
4. the approximate index ``CaseIndex`` configures for a million cases (``IndexConfig()``:
   ``auto`` → IVF): build time, recall@10 against exact search on the held-out queries,
   single-query p50/p99 through the FAISS index and through ``CaseIndex.search`` (target
   p50 ≤ 1 ms at recall@10 ≥ 0.95), and a sweep of its search width (``nprobe``);
5. the demo model's saved index (``runs/demo/index``), when there is one: a tenth of its
   live vectors held out as queries, exact against the approximate kind on the rest.

HNSW is not rebuilt here: a graph that builds within this benchmark's minutes
(M=16, efConstruction=40: 144 s) stopped at recall@10 0.93 however wide the search,
and one good enough (M=32, efConstruction=200) takes an estimated 20-30 minutes on 2
cores; docs/benchmarks.md keeps the measured sweep as the reason IVF is the default.

Usage: ``python evaluation/bench/bench_search.py`` (prints JSON), or through ``run.py``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from medfm.heads.retrieval import CURRENT, Case, CaseIndex, IndexConfig
from medfm.keys import Modality

ROOT = Path(__file__).resolve().parents[2]
DEMO_INDEX = ROOT / "runs/demo/index"
DIM, N_VECTORS, GROUPS, CENTRES_PER_GROUP, NOISE = 128, 1_000_000, 64, 64, 1.0
K = 10
THREADS = os.cpu_count() or 1
APPROXIMATE = IndexConfig()  # what `medfm index build` configures for a large collection
DEMO_APPROXIMATE = IndexConfig(kind=APPROXIMATE.approximate)  # the demo is small enough for exact: force it
NPROBE_SWEEP = (2, 4, 8, 16, 32, 64)
SHARE_TARGET, BANDWIDTH_TARGET, LATENCY_TARGET_MS, RECALL_TARGET = 0.70, 0.40, 1.0, 0.95


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Best of ``repeats`` after one warm-up: other jobs share these cores, the best is the least disturbed."""
    fn()
    return min(_seconds(fn) for _ in range(repeats))


# -- 1. machine limits -----------------------------------------------------------------------

def _faiss_openblas() -> ctypes.CDLL:
    """The OpenBLAS bundled in the faiss wheel, which FAISS's exact search calls."""
    libs = sorted((Path(faiss.__file__).resolve().parents[1] / "faiss_cpu.libs").glob("libopenblas*.so*"))
    if not libs:
        raise FileNotFoundError("no OpenBLAS in faiss_cpu.libs: this faiss build links another BLAS")
    lib = ctypes.CDLL(str(libs[0]))
    lib.openblas_get_config.restype = ctypes.c_char_p
    return lib


def _faiss_sgemm(lib: ctypes.CDLL, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (row-major float32) through ``lib``'s Fortran ``sgemm_``: column-major ``bᵀ aᵀ``."""
    integer = ctypes.c_int64 if b"USE64BITINT" in lib.openblas_get_config() else ctypes.c_int
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    (n, k), m = a.shape, b.shape[1]
    c = np.empty((n, m), dtype=np.float32)
    ref = ctypes.byref
    lib.sgemm_(b"N", b"N", ref(integer(m)), ref(integer(n)), ref(integer(k)), ref(ctypes.c_float(1.0)),
               b.ctypes.data_as(ctypes.c_void_p), ref(integer(m)), a.ctypes.data_as(ctypes.c_void_p),
               ref(integer(k)), ref(ctypes.c_float(0.0)), c.ctypes.data_as(ctypes.c_void_p), ref(integer(m)))
    return c


def matmul_peaks(sizes: tuple[int, ...] = (2048, 4096), repeats: int = 3) -> dict[str, Any]:
    """Best square fp32 matmul rate through FAISS's OpenBLAS, numpy's BLAS and torch."""
    from bench_train import matmul_peak_gflops

    lib = _faiss_openblas()
    rng = np.random.default_rng(0)
    by_library: dict[str, dict[str, float]] = {"faiss_openblas": {}, "numpy": {}}
    for n in sizes:
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        if not np.allclose(_faiss_sgemm(lib, a[:64], b[:, :64]), a[:64] @ b[:, :64], atol=1e-2):
            raise RuntimeError("FAISS's sgemm_ called through ctypes disagrees with numpy")
        by_library["faiss_openblas"][f"{n}^3"] = 2 * n**3 / _best_seconds(lambda a=a, b=b: _faiss_sgemm(lib, a, b),
                                                                         repeats) / 1e9
        by_library["numpy"][f"{n}^3"] = 2 * n**3 / _best_seconds(lambda a=a, b=b: a @ b, repeats) / 1e9
    by_library["torch"] = matmul_peak_gflops(sizes, repeats)["by_size"]
    best = {name: max(rates.values()) for name, rates in by_library.items()}
    return {"gflops": max(best.values()), "faiss_openblas_gflops": best["faiss_openblas"], "best_by_library": best,
            "by_library": by_library, "faiss_openblas_config": lib.openblas_get_config().decode()}


def memory_bandwidth(gib: float = 1.0, repeats: int = 3) -> dict[str, Any]:
    """Best rate of reading a float32 array far larger than the caches, one thread and all threads."""
    array = np.ones(int(gib * 2**30) // 4, dtype=np.float32)  # ones, not zeros: every page really backed
    matrix, vector = array.reshape(-1, DIM), np.ones(DIM, dtype=np.float32)
    one_thread = array.nbytes / _best_seconds(array.sum, repeats) / 1e9
    all_threads = array.nbytes / _best_seconds(lambda: matrix @ vector, repeats) / 1e9
    return {"gbs": max(one_thread, all_threads), "one_thread_sum_gbs": one_thread,
            "blas_gemv_gbs": all_threads, "array_gib": gib}


# -- 2. data ---------------------------------------------------------------------------------

def _unit(rows: np.ndarray) -> np.ndarray:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def clustered_unit_vectors(n: int, dim: int = DIM, groups: int = GROUPS, centres_per_group: int = CENTRES_PER_GROUP,
                           noise: float = NOISE, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around ``groups × centres_per_group`` centres, themselves clustered in groups.

    Each step adds isotropic gaussian noise of norm ≈ ``noise`` and renormalises: with 1.0
    a centre's cosine to its group is about 0.7, a point's to its centre too. Two points of
    one centre are at cosine ≈ 0.5, of one group ≈ 0.25, of different groups ≈ 0: nested
    neighbourhoods, as embeddings have (modality, anatomy, finding), where uniform random
    vectors are all nearly orthogonal and defeat every approximate index.
    """
    rng = np.random.default_rng(seed)
    group_means = _unit(rng.standard_normal((groups, dim), dtype=np.float32))
    noise_scale = np.float32(noise / np.sqrt(dim))
    means = _unit(np.repeat(group_means, centres_per_group, axis=0)
                  + noise_scale * rng.standard_normal((groups * centres_per_group, dim), dtype=np.float32))
    points = rng.standard_normal((n, dim), dtype=np.float32)
    points *= noise_scale
    points += means[rng.integers(len(means), size=n)]
    return _unit(points)


def synthetic_cases(n: int) -> list[Case]:
    return [Case(study_id=f"S{i:07d}", patient_key=f"P{i // 2:07d}", modality=str(Modality.CXR)) for i in range(n)]


# -- measurements shared by the synthetic and the demo index -----------------------------------

def latency_ms(search_one: Callable[[np.ndarray], Any], queries: np.ndarray) -> dict[str, float]:
    """p50/p99 of ``search_one`` over the queries, one at a time, after one warm-up query."""
    search_one(queries[0])
    times = [_seconds(lambda q=q: search_one(q)) * 1e3 for q in queries]
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "queries": len(queries)}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k ids among the ids found (ids, not ranks, as in CaseIndex)."""
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def _params(index: CaseIndex, width: int) -> faiss.SearchParameters:
    """Search parameters at one search width (IVF nprobe, HNSW efSearch), as ``CaseIndex._search`` sets them."""
    if index.kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=width)
    return faiss.SearchParametersHNSW(efSearch=max(width, K))


def _width(index: CaseIndex) -> int:
    return index.config.nprobe if index.kind == "ivf" else index.config.ef_search


def width_sweep(index: CaseIndex, queries: np.ndarray, truth: np.ndarray, latency_queries: int,
                widths: tuple[int, ...]) -> list[dict[str, Any]]:
    """Recall@10 (every query, one batch) and single-query latency of the FAISS index at each search width."""
    points = []
    for width in widths:
        params = _params(index, width)
        _, found = index.vectors.search(queries, K, params=params)
        speed = latency_ms(lambda q, p=params: index.vectors.search(q[None], K, params=p), queries[:latency_queries])
        points.append({"width": width, "recall_at_10": recall_at_k(found, truth), **speed})
    return points


def exact_vs_approximate(exact: CaseIndex, approximate: CaseIndex, queries: np.ndarray, latency_queries: int,
                         caseindex_queries: int) -> dict[str, Any]:
    """Recall@10 of ``approximate`` against ``exact`` and single-query latency of both, FAISS alone and CaseIndex."""
    _, truth = exact.vectors.search(queries, K)
    params = _params(approximate, _width(approximate))
    _, found = approximate.vectors.search(queries, K, params=params)
    few = queries[:caseindex_queries]
    return {
        "cases": len(exact), "queries": len(queries), "kind": approximate.kind,
        "recall_at_10": recall_at_k(found, truth),
        "exact_faiss": latency_ms(lambda q: exact.vectors.search(q[None], K), queries[:latency_queries]),
        "exact_caseindex": latency_ms(lambda q: exact.search(q, K), few),
        "approximate_faiss": latency_ms(lambda q: approximate.vectors.search(q[None], K, params=params),
                                        queries[:latency_queries]),
        "approximate_caseindex": latency_ms(lambda q: approximate.search(q, K), few),
    }


# -- 3. exact search -------------------------------------------------------------------------

def exact_search(index: CaseIndex, queries: np.ndarray, peak: float, bandwidth: dict[str, Any],
                 batch: int = 1024, single: int = 64, repeats: int = 3) -> tuple[dict[str, Any], np.ndarray]:
    """Batched GFLOP/s vs the peak, single-query scan rate vs the bandwidth; returns the batch's true top-k too.

    The batch (256 GFLOP for 1024 queries: about 2 s on 2 cores) is timed best of
    ``repeats``, like the peak it is compared with: single runs of it have ranged from 103
    to 158 GFLOP/s on one machine. 1024 queries of dimension 128 clear
    ``distance_compute_blas_threshold`` (nq·d ≥ 128,000 in faiss 1.15): the BLAS path.
    """
    n, d = index.vectors.ntotal, index.dim
    batch_queries = queries[:batch]
    runs = []
    for _ in range(repeats):
        tick = time.perf_counter()
        _, truth = index.vectors.search(batch_queries, K)
        runs.append(time.perf_counter() - tick)
    batch_s = min(runs)
    gflops = 2 * n * d * len(batch_queries) / batch_s / 1e9
    shape_gflops = same_shape_gemm_gflops(index, batch_queries)

    def scan_rate(speed: dict[str, float]) -> dict[str, float]:
        gbs = n * d * 4 / (speed["p50_ms"] / 1e3) / 1e9
        return {**speed, "scan_gbs": gbs, "share_of_bandwidth": gbs / bandwidth["gbs"],
                "share_of_one_thread_bandwidth": gbs / bandwidth["one_thread_sum_gbs"]}

    single_queries = queries[:single]
    default_threshold = faiss.cvar.distance_compute_blas_threshold
    simd = scan_rate(latency_ms(lambda q: index.vectors.search(q[None], K), single_queries))
    faiss.cvar.distance_compute_blas_threshold = 0  # every search through sgemm
    try:
        blas = scan_rate(latency_ms(lambda q: index.vectors.search(q[None], K), single_queries))
    finally:
        faiss.cvar.distance_compute_blas_threshold = default_threshold
    caseindex = scan_rate(latency_ms(lambda q: index.search(q, K), single_queries))
    return {
        "cases": n, "dim": d,
        "batched": {"queries": len(batch_queries), "seconds": batch_s, "seconds_each_run": runs, "gflops": gflops,
                    "share_of_peak": gflops / peak, "same_shape_gemm_gflops": shape_gflops,
                    "share_of_same_shape_gemm": gflops / shape_gflops},
        "single": {"distance_compute_blas_threshold": default_threshold,
                   "faiss_default_simd_scan": simd, "faiss_blas": blas, "caseindex_search": caseindex},
    }, truth


def same_shape_gemm_gflops(index: CaseIndex, queries: np.ndarray, block: int = 65536) -> float:
    """The scores alone, no top-k: ``queries @ storedᵀ`` through FAISS's own sgemm in blocks of stored vectors.

    A ceiling for exact batched search closer than the square-matmul peak: an inner
    dimension of 128 gives each output 128 multiply-adds, too few for a GEMM to run at peak.
    """
    lib = _faiss_openblas()
    flat = faiss.downcast_index(index.vectors.index)
    stored = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)

    def scores() -> None:
        for start in range(0, len(stored), block):
            _faiss_sgemm(lib, queries, stored[start:start + block].T)

    return 2 * len(stored) * flat.d * len(queries) / _best_seconds(scores, 2) / 1e9


# -- 4. the approximate index ---------------------------------------------------------------

def approximate_search(vectors: np.ndarray, cases: list[Case], queries: np.ndarray, truth: np.ndarray,
                       config: IndexConfig = APPROXIMATE, latency_queries: int = 1000,
                       caseindex_queries: int = 200) -> dict[str, Any]:
    """Build through ``CaseIndex.build``, then recall and latency at the configured and swept search widths."""
    tick = time.perf_counter()
    index = CaseIndex.build(vectors, cases, config)
    build_s = time.perf_counter() - tick
    sweep = width_sweep(index, queries, truth, latency_queries, tuple(sorted({*NPROBE_SWEEP, _width(index)})))
    configured = next(p for p in sweep if p["width"] == _width(index))
    good = [p for p in sweep if p["recall_at_10"] >= RECALL_TARGET]
    return {
        "kind": index.kind, "config": config.model_dump(mode="json"), "build_s": build_s,
        "lists": faiss.downcast_index(index.vectors.index).nlist if index.kind == "ivf" else None,
        "build_recall_at_10_stored_queries": index.recall_at_10,
        "recall_at_10": configured["recall_at_10"], "queries": len(queries), "width": _width(index),
        "faiss": {k: configured[k] for k in ("p50_ms", "p99_ms", "queries")},
        "caseindex_search": latency_ms(lambda q: index.search(q, K), queries[:caseindex_queries]),
        "caseindex_search_filtered": latency_ms(lambda q: index.search(q, K, exclude_patient="P0000001"),
                                                queries[:caseindex_queries]),
        "sweep": sweep, "fastest_meeting_recall": min(good, key=lambda p: p["p50_ms"]) if good else None,
    }


# -- 5. the demo model's index ---------------------------------------------------------------

def _live_cases(index: CaseIndex) -> tuple[np.ndarray, list[Case]]:
    """Vectors and cases of the rows still in the index (HNSW keeps removed vectors in FAISS)."""
    columns = [f.name for f in dataclasses.fields(Case)]
    rows = index.db.execute(f"SELECT id, {', '.join(columns)} FROM cases ORDER BY id").fetchall()
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    return index.vectors.reconstruct_batch(ids), [Case(*r[1:]) for r in rows]


def demo_search(directory: Path = DEMO_INDEX, config: IndexConfig = DEMO_APPROXIMATE, seed: int = 0) -> dict[str, Any]:
    """Exact against the approximate kind on the demo model's embeddings: a tenth held out as queries."""
    if not (directory / CURRENT).is_file():
        where = directory.relative_to(ROOT) if directory.is_relative_to(ROOT) else directory
        return {"skipped": f"no {where}; make demo builds it"}
    saved = CaseIndex.load(directory)
    vectors, cases = _live_cases(saved)
    held_out = max(1, len(cases) // 10)
    if len(cases) - held_out <= K:
        return {"skipped": f"{len(cases)} cases in {directory}: too few to hold out queries"}
    order = np.random.default_rng(seed).permutation(len(cases))
    queries, kept = vectors[order[:held_out]], order[held_out:]
    kept_cases = [cases[i] for i in kept]
    exact = CaseIndex.build(vectors[kept], kept_cases, IndexConfig(kind="exact"))
    approximate = CaseIndex.build(vectors[kept], kept_cases, config)
    return {"saved_kind": saved.kind, "saved_cases": len(cases), "dim": saved.dim,
            **exact_vs_approximate(exact, approximate, queries, latency_queries=len(queries),
                                   caseindex_queries=len(queries))}


# -- all -------------------------------------------------------------------------------------

def _meets_latency_target(p50_ms: float, recall: float) -> bool:
    return p50_ms <= LATENCY_TARGET_MS and recall >= RECALL_TARGET


def run(n_vectors: int = N_VECTORS, n_queries: int = 1024, demo_index: Path = DEMO_INDEX) -> dict[str, Any]:
    """Every measurement above, machine limits first, in this process."""
    started = time.perf_counter()
    faiss.omp_set_num_threads(THREADS)
    peak = matmul_peaks()
    bandwidth = memory_bandwidth()
    points = clustered_unit_vectors(n_vectors + n_queries)
    vectors, queries = points[:n_vectors], points[n_vectors:]
    cases = synthetic_cases(n_vectors)
    tick = time.perf_counter()
    exact_index = CaseIndex.build(vectors, cases, IndexConfig(kind="exact"))
    exact_build_s = time.perf_counter() - tick
    exact, truth = exact_search(exact_index, queries, peak["gflops"], bandwidth, batch=n_queries)
    exact["build_s"] = exact_build_s
    exact["batched"]["share_of_faiss_openblas_peak"] = exact["batched"]["gflops"] / peak["faiss_openblas_gflops"]
    exact["neighbourhoods"] = {"mean_top1_cosine": float(np.mean(exact_index.vectors.search(queries[:256], 1)[0])),
                               "mean_random_pair_cosine": float(np.mean(np.sum(queries[:256] * vectors[:256], 1)))}
    del exact_index
    gc.collect()
    approximate = approximate_search(vectors, cases, queries, truth)
    del points, vectors, queries, cases
    gc.collect()
    demo = demo_search(demo_index)
    single = exact["single"]["caseindex_search"]
    return {
        "name": "similar-case search", "threads": faiss.omp_get_max_threads(), "load_average": os.getloadavg(),
        "faiss": faiss.__version__,
        "data": {"vectors": n_vectors, "dim": DIM, "groups": GROUPS, "centres_per_group": CENTRES_PER_GROUP,
                 "noise": NOISE, "held_out_queries": n_queries, "seed": 0},
        "peak": peak, "bandwidth": bandwidth, "exact": exact, "approximate": approximate, "demo": demo,
        "targets": {
            "share_of_peak": {"target": SHARE_TARGET, "measured": exact["batched"]["share_of_peak"],
                              "met": exact["batched"]["share_of_peak"] >= SHARE_TARGET},
            "share_of_bandwidth": {"target": BANDWIDTH_TARGET, "measured": single["share_of_bandwidth"],
                                   "met": single["share_of_bandwidth"] >= BANDWIDTH_TARGET},
            "approximate_p50_ms_at_recall": {
                "target": {"p50_ms": LATENCY_TARGET_MS, "recall_at_10": RECALL_TARGET},
                "measured": {"p50_ms": approximate["caseindex_search"]["p50_ms"],
                             "recall_at_10": approximate["recall_at_10"]},
                "met": _meets_latency_target(approximate["caseindex_search"]["p50_ms"], approximate["recall_at_10"]),
                "met_at_some_swept_width": any(_meets_latency_target(p["p50_ms"], p["recall_at_10"])
                                               for p in approximate["sweep"])},
        },
        "seconds": time.perf_counter() - started,
    }


def rows(result: dict) -> list[str]:
    """Markdown rows (``| benchmark | baseline (same run) | measured | baseline | ratio |``) of ``run()``."""
    peak, bandwidth, exact = result["peak"], result["bandwidth"], result["exact"]
    targets, data, threads = result["targets"], result["data"], result["threads"]
    vectors = f"{data['vectors']:,} clustered unit vectors, d={data['dim']}, {threads} threads"
    batched, single = exact["batched"], exact["single"]
    simd, blas, via_index = single["faiss_default_simd_scan"], single["faiss_blas"], single["caseindex_search"]
    best = peak["best_by_library"]
    lines = [
        f"| fp32 matmul peak (FAISS's OpenBLAS {best['faiss_openblas']:.0f}, numpy {best['numpy']:.0f}, "
        f"torch {best['torch']:.0f} GFLOP/s) | - | {peak['gflops']:.0f} GFLOP/s | - | - |",
        f"| memory read bandwidth, {bandwidth['array_gib']:g} GiB float32 (one-thread sum "
        f"{bandwidth['one_thread_sum_gbs']:.1f}, BLAS gemv {bandwidth['blas_gemv_gbs']:.1f} GB/s) | - "
        f"| {bandwidth['gbs']:.1f} GB/s | - | - |",
        f"| exact search (IndexFlatIP), {vectors}, batch of {batched['queries']} held-out queries | fp32 matmul peak "
        f"(the same product without top-k, FAISS's sgemm in blocks: {batched['same_shape_gemm_gflops']:.1f} GFLOP/s) "
        f"| {batched['gflops']:.1f} GFLOP/s (best of {', '.join(f'{t:.1f}' for t in batched['seconds_each_run'])} s) "
        f"| {peak['gflops']:.0f} GFLOP/s "
        f"| {batched['share_of_peak']:.0%} of peak ({batched['share_of_same_shape_gemm']:.0%} of the same-shape "
        f"GEMM; target {targets['share_of_peak']['target']:.0%}) |",
        f"| exact search, single query through CaseIndex.search (one BLAS product over the stored vectors, every "
        f"thread, then top-k); FAISS's own scan: p50 {simd['p50_ms']:.1f} ms, {simd['scan_gbs']:.1f} GB/s (SIMD, "
        f"BLAS threshold {single['distance_compute_blas_threshold']}), p50 {blas['p50_ms']:.1f} ms through its BLAS "
        f"path | memory bandwidth | p50 {via_index['p50_ms']:.1f} ms, p99 {via_index['p99_ms']:.1f} ms, "
        f"{via_index['scan_gbs']:.1f} GB/s | {bandwidth['gbs']:.1f} GB/s "
        f"| {via_index['share_of_bandwidth']:.0%} of bandwidth (FAISS's scan {simd['share_of_bandwidth']:.0%}; "
        f"target {targets['share_of_bandwidth']['target']:.0%}) |",
    ]
    approx, target = result["approximate"], targets["approximate_p50_ms_at_recall"]
    via, raw = approx["caseindex_search"], approx["faiss"]
    width_name = "nprobe" if approx["kind"] == "ivf" else "efSearch"
    shape = f"{approx['lists']} lists" if approx["kind"] == "ivf" else f"M={approx['config']['hnsw_m']}"
    lines.append(
        f"| approximate search as configured (`IndexConfig()`: {approx['kind'].upper()}, {shape}, "
        f"{width_name}={approx['width']}), through CaseIndex.search, {vectors}; build {approx['build_s']:.0f} s; "
        f"FAISS alone p50 {raw['p50_ms']:.2f} ms; with a patient filter p50 "
        f"{approx['caseindex_search_filtered']['p50_ms']:.2f} ms | exact search, single query; recall@10 against it "
        f"on {approx['queries']} held-out queries | p50 {via['p50_ms']:.2f} ms, p99 {via['p99_ms']:.2f} ms "
        f"| p50 {simd['p50_ms']:.1f} ms | recall@10 {approx['recall_at_10']:.3f}, "
        f"{simd['p50_ms'] / via['p50_ms']:.0f}x faster (target p50 ≤ {target['target']['p50_ms']:g} ms at "
        f"recall@10 ≥ {target['target']['recall_at_10']}: {'met' if target['met'] else 'not met'}) |")
    sweep = ", ".join(f"{p['width']}: {p['recall_at_10']:.3f} / {p['p50_ms']:.2f} ms" for p in approx["sweep"])
    lines.append(f"| same index, {width_name} sweep (recall@10 / FAISS p50) | - | {sweep} | - | - |")
    demo = result["demo"]
    if "skipped" in demo:
        lines.append(f"| demo model's index | - | skipped: {demo['skipped']} | - | - |")
    else:
        lines.append(
            f"| demo model's index, {demo['cases']} cases (d={demo['dim']}), {demo['queries']} held out as queries, "
            f"{demo['kind'].upper()} p50 (CaseIndex.search {demo['approximate_caseindex']['p50_ms']:.2f} ms) "
            f"| exact (CaseIndex.search {demo['exact_caseindex']['p50_ms']:.2f} ms) "
            f"| {demo['approximate_faiss']['p50_ms']:.3f} ms | {demo['exact_faiss']['p50_ms']:.3f} ms "
            f"| recall@10 {demo['recall_at_10']:.3f} |")
    return lines


def main() -> int:
    os.chdir(ROOT)
    print(json.dumps(run(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
