"""Sustained load on ``medfm serve`` over loopback: 50 clients for 2 minutes, with tokens and an audit log.

1. index and query files: as ``bench_service`` (the demo index if there is one, else the
   12-patient synthetic cohort with the untrained ``tiny`` model);
2. the service: ``medfm serve`` in its own process with a tokens file of two tokens (one
   seeing every cohort, one scoped to the index's first cohort) and ``--audit-log``: every
   request passes the token check, the cohort scope and an fsynced audit record;
3. load: each client loops until the time is up, doing what a radiologist does: a search
   (text, CXR DICOM, zipped CT series, zipped WFDB record, fundus PNG, in turn), then the
   first result's case and its thumbnail. Half the clients hold the scoped token. An error
   is any non-200, any failed connection, and any result outside the token's cohorts;
4. baseline, same run: the same loop from one client for ``baseline_seconds`` first: the
   throughput when nothing queues. Ratio: 50-client throughput / one-client throughput;
5. after: ``medfm audit verify`` on the log (its record count must equal the requests
   served) and the server's output searched for the secrets (must hold none).

Usage: ``python evaluation/bench/load_service.py [--clients 50] [--seconds 120]`` (prints JSON).
``bench_service.run()`` calls :func:`run` after its own measurements, so ``make bench`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from bench_service import KINDS, TEXTS, _free_port, _start_service, prepared

CLIENTS = 50
SECONDS = 120.0
BASELINE_SECONDS = 20.0
K = 10


class Tally:
    """Latencies per request kind, and the errors, of one phase."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []

    def summary(self, wall: float, clients: int) -> dict:
        every = np.array([t for times in self.latencies.values() for t in times])
        searches = np.array([t for kind, times in self.latencies.items() if kind.startswith("search") for t in times])
        return {"clients": clients, "seconds": wall, "requests": len(every), "errors": len(self.errors),
                "error_examples": self.errors[:5], "requests_per_s": len(every) / wall,
                "searches_per_s": len(searches) / wall, **_percentiles(every),
                "search": _percentiles(searches),
                "by_kind": {kind: {"requests": len(times), **_percentiles(np.array(times))}
                            for kind, times in sorted(self.latencies.items())}}


def _percentiles(seconds: np.ndarray) -> dict:
    if not len(seconds):
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": float(np.percentile(seconds, 50) * 1e3), "p99_ms": float(np.percentile(seconds, 99) * 1e3),
            "max_ms": float(seconds.max() * 1e3)}


async def _client(http: httpx.AsyncClient, number: int, secret: str, cohorts: set[str] | None,
                  files: dict[str, tuple[str, bytes]], deadline: float, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {secret}"}
    turn = number

    async def timed(kind: str, request) -> httpx.Response | None:
        start = time.perf_counter()
        try:
            response = await request
        except httpx.HTTPError as err:
            tally.errors.append(f"{kind}: {type(err).__name__}")
            return None
        tally.latencies[kind].append(time.perf_counter() - start)
        if response.status_code != 200:
            tally.errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
            return None
        return response

    while time.monotonic() < deadline:
        kind = KINDS[turn % len(KINDS)]
        turn += 1
        if kind == "text":
            data, upload = {"text": TEXTS[turn % len(TEXTS)], "k": str(K)}, None
        else:
            data, upload = {"k": str(K)}, {"file": files[kind]}
        found = await timed(f"search:{kind}", http.post("/api/search", data=data, files=upload, headers=headers))
        if found is None:
            continue
        results = found.json()["results"]
        outside = [hit["id"] for hit in results if cohorts is not None and hit["cohort"] not in cohorts]
        if outside:
            tally.errors.append(f"search:{kind}: cases {outside[:3]} outside the token's cohorts")
        if not results:
            continue
        first = results[0]
        await timed("case", http.get(f"/api/cases/{first['id']}", headers=headers))
        if first["thumbnail_url"]:
            await timed("thumbnail", http.get(first["thumbnail_url"], headers=headers))


async def _phase(url: str, tokens: list[tuple[str, set[str] | None]], files: dict, clients: int,
                 seconds: float) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as http:
        tally = Tally()
        start = time.perf_counter()
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_client(http, n, *tokens[n % len(tokens)], files, deadline, tally)
                               for n in range(clients)))
        return tally.summary(time.perf_counter() - start, clients)


def run(clients: int = CLIENTS, seconds: float = SECONDS, baseline_seconds: float = BASELINE_SECONDS,
        index: Path | None = None, source: str | None = None, files: dict | None = None) -> dict:
    """Serve ``index`` (default: as ``bench_service.prepared``) and load it; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="medfm-load-service-") as tmp:
        tmp = Path(tmp)
        if index is None:
            index, source, files = prepared(tmp)
        from medfm.heads.retrieval import CaseIndex
        from medfm.service.audit import verify
        from medfm.service.tokens import token_sha256

        cohorts = CaseIndex.load(index).info.get("cohorts") or []
        everything, scoped = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        scope = {cohorts[0]} if cohorts else None
        (tmp / "tokens.yaml").write_text(
            f"tokens:\n  - name: load-everything\n    sha256: {token_sha256(everything)}\n    cohorts: all\n"
            f"  - name: load-scoped\n    sha256: {token_sha256(scoped)}\n"
            f"    cohorts: {json.dumps(sorted(scope)) if scope else 'all'}\n")
        audit_log, server_log = tmp / "audit.jsonl", tmp / "serve.log"
        port = _free_port()
        service = _start_service(index, port, server_log, "--tokens", str(tmp / "tokens.yaml"),
                                 "--audit-log", str(audit_log))
        url = f"http://127.0.0.1:{port}"
        tokens = [(everything, None), (scoped, scope)]
        try:
            warm = asyncio.run(_phase(url, tokens, files, 1, 5.0))  # first calls of each encoder, connections
            baseline = asyncio.run(_phase(url, tokens[:1], files, 1, baseline_seconds))
            loaded = asyncio.run(_phase(url, tokens, files, clients, seconds))
        finally:
            service.terminate()
            service.wait(timeout=60)
        served = sum(phase["requests"] - phase["errors"] for phase in (warm, baseline, loaded))
        start = time.perf_counter()
        verified = verify(audit_log)
        verify_s = time.perf_counter() - start
        output = server_log.read_text(errors="replace")
        leaked = sum(output.count(secret) for secret in (everything, scoped))
        audit_bytes = audit_log.stat().st_size
    return {"name": "similar-case search service, sustained", "index": source, "k": K,
            "scoped_to": sorted(scope) if scope else "all", "baseline": baseline, "loaded": loaded,
            "throughput_ratio": loaded["requests_per_s"] / baseline["requests_per_s"],
            "errors": loaded["errors"] + baseline["errors"] + leaked + (verified.records != served),
            "audit": {"records": verified.records, "requests_served": served, "chain": "intact",
                      "verify_s": verify_s, "bytes": audit_bytes},
            "secrets_in_server_log": leaked}


def rows(result: dict) -> list[str]:
    """Markdown rows: ``| benchmark | baseline (same run) | measured | baseline | ratio |``."""
    loaded, baseline, audit = result["loaded"], result["baseline"], result["audit"]
    what = (f"`medfm serve` with a tokens file and an audit log, {loaded['clients']} clients for "
            f"{loaded['seconds']:.0f} s over loopback (a search of each kind in turn, then the first result's case "
            f"and thumbnail; half the clients scoped to one cohort): {loaded['requests']} requests, "
            f"{loaded['errors']} errors, p50 {loaded['p50_ms']:.0f} ms / p99 {loaded['p99_ms']:.0f} ms "
            f"(searches p99 {loaded['search']['p99_ms']:.0f} ms); audit log verified, {audit['records']} records "
            f"= requests served")
    return [f"| {what}: throughput | the same loop from 1 client for {baseline['seconds']:.0f} s "
            f"(p50 {baseline['p50_ms']:.0f} ms) | {loaded['requests_per_s']:.1f} requests/s "
            f"({loaded['searches_per_s']:.1f} searches/s) | {baseline['requests_per_s']:.1f} requests/s "
            f"| {result['throughput_ratio']:.2f}x |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--baseline-seconds", type=float, default=BASELINE_SECONDS)
    args = parser.parse_args()
    result = run(args.clients, args.seconds, args.baseline_seconds)
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
