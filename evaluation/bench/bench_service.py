"""The search service under load: 200 concurrent searches against ``medfm serve`` on loopback.

1. index: the demo index (``runs/demo/index``) if there is one, else a 12-patient
   synthetic cohort indexed with the untrained ``tiny`` model
   (``tests.conftest.make_indexed_cohort``) in a temporary folder; query files come from
   that cohort, or from a small synthetic cohort beside the demo index;
2. the service: ``medfm serve`` in its own process (uvicorn, loopback, an access token),
   exactly as a user starts it;
3. load: 200 searches sent at once from one ``httpx.AsyncClient`` (one connection each),
   an equal mix of text queries, CXR DICOM uploads, zipped CT series, zipped WFDB ECG
   records and fundus PNGs, after one warm-up search of each kind; every non-200 is an
   error. Reported: p50/p99 latency and throughput; then the first 50 of the same searches
   one at a time, for the latency a lone radiologist sees;
4. baseline, same run: the same 200 searches called directly on ``CaseSearch`` in this
   process, one after another, from the same files (zips unpacked by ``file_query`` as in
   the service). Ratio: service p50 / direct p50. The service runs one search at a time
   (model calls are serialised), so under 200 concurrent requests its p50 is mostly
   queueing; the throughput ratio says what HTTP, uploads and the threadpool cost.

5. then ``load_service.run()``: 50 clients for 2 minutes against a server with a tokens
   file and an audit log (its own docstring says what it measures), so ``make bench``
   runs the sustained load test too.

Both sides embed with ``medfm.service.app.torch_threads()`` threads (``OMP_NUM_THREADS`` if
set, else the usable cores up to 8).

Usage: ``python evaluation/bench/bench_service.py`` (prints JSON; about 4-5 minutes on 2 cores).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
DEMO_INDEX = ROOT / "runs/demo/index"
N_REQUESTS = 200
N_SEQUENTIAL = 50  # then the first 50 again, one at a time: the latency of HTTP and upload, without queueing
K = 10
TEXTS = ("small left pleural effusion", "cardiomegaly", "atrial fibrillation with rapid ventricular response",
         "drusen at the macula", "solitary pulmonary nodule in the right upper lobe")
KINDS = ("text", "cxr", "ct", "ecg", "fundus")


def _query_files(manifest: Path) -> dict[str, tuple[str, bytes]]:
    """Upload name and bytes of one study per file kind, from a cohort manifest."""
    data = manifest.parent
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))

    def first(column: str, suffix: str = "") -> Path:
        return data / next(row[column] for row in rows if row[column] and row[column].endswith(suffix))

    ct, ecg = first("ct_path"), first("ecg_path")
    return {"cxr": ("cxr.dcm", first("cxr_path", ".dcm").read_bytes()),
            "ct": ("ct.zip", _zipped({f"series/{p.name}": p.read_bytes() for p in sorted(ct.iterdir())})),
            "ecg": ("ecg.zip", _zipped({ecg.name + s: ecg.with_suffix(s).read_bytes() for s in (".hea", ".dat")})),
            "fundus": ("fundus.png", first("fundus_path", ".png").read_bytes())}


def _zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _requests() -> list[tuple[str, str]]:
    """``(kind, text)`` of each search: the kinds in turn, the texts in turn among the text searches."""
    kinds = [KINDS[i % len(KINDS)] for i in range(N_REQUESTS)]
    return [(kind, TEXTS[i // len(KINDS) % len(TEXTS)] if kind == "text" else "") for i, kind in enumerate(kinds)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_service(index: Path, port: int, log: Path, *access: str) -> subprocess.Popen:
    """``medfm serve`` on loopback in its own process, once it answers; ``access``: its token (and audit) arguments."""
    with log.open("w") as out:  # the child keeps its own handle
        process = subprocess.Popen([sys.executable, "-m", "medfm.cli", "serve", "--index", str(index), "--port",
                                    str(port), *access], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"medfm serve exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("medfm serve did not answer /api/health within 180 s")


async def _load(url: str, token: str, files: dict[str, tuple[str, bytes]]) -> dict:
    limits = httpx.Limits(max_connections=N_REQUESTS, max_keepalive_connections=N_REQUESTS)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=300) as client:

        async def one(kind: str, text: str) -> tuple[float, str | None]:
            start = time.perf_counter()
            try:
                if kind == "text":
                    response = await client.post("/api/search", data={"text": text, "k": str(K)})
                else:
                    response = await client.post("/api/search", files={"file": files[kind]}, data={"k": str(K)})
            except httpx.HTTPError as err:
                return time.perf_counter() - start, f"{kind}: {type(err).__name__}"
            error = None if response.status_code == 200 else f"{kind}: {response.status_code} {response.text[:200]}"
            return time.perf_counter() - start, error

        for kind in KINDS:  # warm-up: first calls of each encoder, connection setup
            _, error = await one(kind, TEXTS[0])
            if error:
                raise RuntimeError(f"warm-up search failed: {error}")
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(one(kind, text) for kind, text in _requests()))
        wall = time.perf_counter() - start
        alone = [await one(kind, text) for kind, text in _requests()[:N_SEQUENTIAL]]
    latencies = np.array([seconds for seconds, _ in outcomes])
    errors = [error for _, error in outcomes + alone if error]
    return {"requests": N_REQUESTS, "errors": len(errors), "error_examples": errors[:5], "wall_s": wall,
            "throughput_per_s": N_REQUESTS / wall, **_percentiles(latencies),
            "one_at_a_time": {"requests": N_SEQUENTIAL, **_percentiles(np.array([t for t, _ in alone]))}}


def _direct(index: Path, files: dict[str, tuple[str, bytes]], folder: Path) -> dict:
    """The same searches on ``CaseSearch`` in this process, one after another."""
    from medfm.heads.query import CaseSearch

    search = CaseSearch.open(index)
    paths = {}
    for kind, (name, data) in files.items():
        paths[kind] = folder / name
        paths[kind].write_bytes(data)

    def one(kind: str, text: str) -> float:
        start = time.perf_counter()
        query = search.text_query(text) if kind == "text" else search.file_query(paths[kind])
        search.search(query, K)
        return time.perf_counter() - start

    for kind in KINDS:
        one(kind, TEXTS[0])
    start = time.perf_counter()
    latencies = np.array([one(kind, text) for kind, text in _requests()])
    wall = time.perf_counter() - start
    return {"requests": N_REQUESTS, "wall_s": wall, "throughput_per_s": N_REQUESTS / wall,
            **_percentiles(latencies), "first_p50_ms": float(np.percentile(latencies[:N_SEQUENTIAL], 50) * 1e3)}


def _percentiles(seconds: np.ndarray) -> dict:
    return {"p50_ms": float(np.percentile(seconds, 50) * 1e3), "p99_ms": float(np.percentile(seconds, 99) * 1e3),
            "max_ms": float(seconds.max() * 1e3)}


def prepared(tmp: Path) -> tuple[Path, str, dict[str, tuple[str, bytes]]]:
    """The index to serve, what it is, and one query file per kind (built under ``tmp`` if there is no demo index)."""
    sys.path.insert(0, str(ROOT))
    if DEMO_INDEX.is_dir():
        from medfm.cohort.synth import synthesize_cohort

        index, source = DEMO_INDEX, "demo index (runs/demo/index)"
        manifest = synthesize_cohort(tmp / "queries", n_patients=12, seed=0, progress=False)
    else:
        from tests.conftest import make_indexed_cohort

        cohort = make_indexed_cohort(tmp / "cohort")
        index, source, manifest = cohort.index, "12-patient synthetic cohort, untrained tiny model", cohort.manifest
    return index, source, _query_files(manifest)


def run(sustained: bool = True) -> dict:
    """Start the service, load it, measure the in-process baseline; then (``sustained``) ``load_service``'s run."""
    import load_service

    from medfm.service.app import torch_threads

    threads = torch_threads()  # as ``serve`` sets them: the baseline embeds with the same threads
    with tempfile.TemporaryDirectory(prefix="medfm-bench-service-") as tmp:
        tmp = Path(tmp)
        index, source, files = prepared(tmp)
        token = secrets.token_urlsafe(24)
        token_file = tmp / "token"
        token_file.write_text(token)
        port = _free_port()
        service = _start_service(index, port, tmp / "serve.log", "--token-file", str(token_file))
        try:
            loaded = asyncio.run(_load(f"http://127.0.0.1:{port}", token, files))
        finally:
            service.terminate()
            service.wait(timeout=30)
        torch.set_num_threads(threads)  # after ``tests.conftest``, whose import sets its own
        direct = _direct(index, files, tmp)
        from medfm.heads.retrieval import CaseIndex

        cases = len(CaseIndex.load(index))
        load = load_service.run(index=index, source=source, files=files) if sustained else None
    return {"name": "similar-case search service", "index": source, "cases": cases, "k": K,
            "mix": {kind: sum(1 for k, _ in _requests() if k == kind) for kind in KINDS},
            "torch_threads": threads, "service": loaded, "direct": direct,
            "p50_ratio": loaded["p50_ms"] / direct["p50_ms"],
            "one_at_a_time_p50_ratio": loaded["one_at_a_time"]["p50_ms"] / direct["first_p50_ms"],
            "throughput_ratio": loaded["throughput_per_s"] / direct["throughput_per_s"], "sustained": load}


def rows(result: dict) -> list[str]:
    """Markdown rows: ``| benchmark | baseline (same run) | measured | baseline | ratio |``."""
    import load_service

    service, direct = result["service"], result["direct"]
    alone = service["one_at_a_time"]
    mix = ", ".join(f"{n} {kind}" for kind, n in result["mix"].items())
    what = (f"`medfm serve`, {service['requests']} concurrent searches over loopback HTTP ({mix}; k={result['k']}, "
            f"{result['cases']} cases), {service['errors']} errors")
    baseline = "the same searches on `CaseSearch` in-process, one after another"
    return [
        f"| {what}: latency p50 (p99 {service['p99_ms']:.0f} ms) | {baseline}: p50 (p99 {direct['p99_ms']:.0f} ms) "
        f"| {service['p50_ms']:.0f} ms | {direct['p50_ms']:.1f} ms | {result['p50_ratio']:.1f}x (queueing: one "
        "search runs at a time) |",
        f"| {what}: throughput | {baseline}: throughput | {service['throughput_per_s']:.1f} searches/s "
        f"| {direct['throughput_per_s']:.1f} searches/s | {result['throughput_ratio']:.2f}x |",
        f"| `medfm serve`, the first {alone['requests']} of those searches one at a time: latency p50 "
        f"(p99 {alone['p99_ms']:.0f} ms) | the same {alone['requests']} in-process: p50 | {alone['p50_ms']:.1f} ms "
        f"| {direct['first_p50_ms']:.1f} ms | {result['one_at_a_time_p50_ratio']:.2f}x |",
    ] + (load_service.rows(result["sustained"]) if result.get("sustained") else [])


def main() -> int:
    result = run()
    print(json.dumps(result, indent=2))
    errors = result["service"]["errors"] + (result["sustained"]["errors"] if result["sustained"] else 0)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
