"""Workers of the reader fuzz harness: a spawned process per job, its address space capped
(``RLIMIT_AS``), one reader call at a time under a wall-clock bound; a worker that times out,
hits the cap or dies is replaced, and the call is reported with that outcome."""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import resource
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_CAP = 2 * 1024**3
_STARTUP_TIMEOUT_S = 180.0  # a worker imports pydicom, nibabel, wfdb, PIL: slow on a busy machine


def _worker_main(conn, memory_cap: int, preload: tuple[str, ...], nan_allowed: tuple[str, ...]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # nibabel and wfdb log about the broken files they are given
    for name in preload:  # imported before the cap, so imports are not charged to a reader
        _resolve(name) if ":" in name else importlib.import_module(name)
    baseline = _address_space_bytes()
    limit = baseline + memory_cap
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    conn.send({"baseline_bytes": baseline, "limit_bytes": limit})
    while (task := conn.recv()) is not None:
        result = _call_reader(*task, nan_allowed=nan_allowed)
        conn.send(result)
        if result["outcome"] == "memory":
            return  # the heap may be fragmented or half-full: the next call gets a fresh worker


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _resolve(spec: str) -> Callable:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _call_reader(spec: str, path: str, nan_allowed: tuple[str, ...] = ()) -> dict:
    from medfm.errors import MedfmReadError

    start = time.perf_counter()
    try:
        value = _resolve(spec)(path)
    except MemoryError as err:
        result = {"outcome": "memory", "error_type": "MemoryError", "message": str(err)[:300],
                  "traceback": traceback.format_exc()[-3000:]}
    except MedfmReadError as err:
        result = {"outcome": "read_error", "error_type": type(err).__name__, "message": str(err)[:300]}
        if _caused_by_memory_error(err):
            result.update(outcome="memory", traceback=traceback.format_exc()[-3000:],
                          message=f"MemoryError inside the reader, re-raised as {type(err).__name__}: {err}"[:300])
    except (Exception, SystemExit) as err:
        result = {"outcome": "exception", "error_type": f"{type(err).__module__}.{type(err).__qualname__}",
                  "message": str(err)[:300], "traceback": traceback.format_exc()[-3000:]}
    except BaseException as err:  # a Rust extension's panic (pyo3's PanicException) is a BaseException
        if isinstance(err, KeyboardInterrupt):
            raise
        result = {"outcome": "exception", "error_type": f"{type(err).__module__}.{type(err).__qualname__}",
                  "message": str(err)[:300], "traceback": traceback.format_exc()[-3000:]}
    else:
        problem = check_result(value, allow_nan=spec in nan_allowed)
        result = {"outcome": "bad_array", "message": problem} if problem else {"outcome": "decoded"}
    result["seconds"] = round(time.perf_counter() - start, 4)
    return result


def _caused_by_memory_error(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MemoryError):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def check_result(value: Any, allow_nan: bool = False) -> str | None:
    """Why a reader's return value cannot be trusted, or None when it can.

    An image must be float32 of rank 3 or 4 with no empty axis, finite (NaN allowed only for
    NIfTI), with finite spacing, positive along every axis longer than one voxel, and a finite
    affine; an ECG ``(12, T)`` float32,
    finite, at a finite positive sampling rate. inspect's dict is checked by the call itself.
    """
    if isinstance(value, dict):
        return None
    array = getattr(value, "array", getattr(value, "signal", None))
    if not isinstance(array, np.ndarray):
        return f"returned {type(value).__name__} without an array"
    if array.dtype != np.float32:
        return f"dtype {array.dtype}, expected float32"
    if array.size == 0:
        return f"empty array {array.shape}"
    finite = np.isfinite(array) | (np.isnan(array) if allow_nan else False)
    if not finite.all():
        return f"{int((~finite).sum())} non-finite values"
    if hasattr(value, "signal"):
        if array.ndim != 2 or array.shape[0] != 12:
            return f"ECG shape {array.shape}, expected (12, T)"
        return None if np.isfinite(value.fs) and value.fs > 0 else f"sampling rate {value.fs}"
    if array.ndim not in (3, 4):
        return f"image rank {array.ndim}, expected (C, H, W) or (C, D, H, W)"
    spacing = np.asarray(value.spacing, dtype=np.float64)
    extent = np.asarray(array.shape[1:])  # a single-voxel axis may have no thickness (a 2D NIfTI)
    if not (np.isfinite(spacing).all() and ((spacing > 0) | (extent == 1)).all()):
        return f"spacing {tuple(value.spacing)}"
    affine = getattr(value, "affine", None)
    if affine is not None and not np.isfinite(affine).all():
        return "affine has non-finite values"
    return None


class _Worker:
    def __init__(self, ctx, memory_cap: int, setup: tuple[tuple[str, ...], tuple[str, ...]]):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, memory_cap, *setup), daemon=True)
        with _single_threaded_children():
            self.process.start()
        child.close()
        if not self.conn.poll(_STARTUP_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"fuzz worker did not start in {_STARTUP_TIMEOUT_S:.0f} s")
        self.limits = self.conn.recv()
        self.task: tuple | None = None
        self.deadline = 0.0

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Spawned workers inherit the environment: one BLAS/OpenMP thread each (the CI machine has 2 cores)."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class ReaderPool:
    """``jobs`` spawned workers; ``run(calls)`` yields each call with its outcome as it finishes.

    A call that overruns ``timeout_s`` has its worker killed (outcome ``timeout``); a worker
    that dies is a ``crash`` (``memory`` when killed by SIGKILL, the kernel's OOM answer). Each
    is replaced by a fresh worker.

    Args:
        preload: modules and ``"module:function"`` readers each worker imports before its
            address space is capped.
        nan_allowed: readers whose arrays may hold NaN (see :func:`check_result`).
    """

    def __init__(self, jobs: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S, memory_cap: int = DEFAULT_MEMORY_CAP,
                 preload: tuple[str, ...] = (), nan_allowed: tuple[str, ...] = ()):
        self.ctx = multiprocessing.get_context("spawn")
        self.timeout_s, self.memory_cap = timeout_s, memory_cap
        self.setup = (tuple(preload), tuple(nan_allowed))
        self.workers = [_Worker(self.ctx, memory_cap, self.setup) for _ in range(max(1, jobs))]
        self.limits = self.workers[0].limits

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
            worker.stop()

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, calls: Iterator[tuple[Any, str, str]]) -> Iterator[tuple[Any, dict]]:
        """``calls``: (tag, reader spec, path); pulled lazily, as workers become free."""
        calls = iter(calls)
        exhausted = False
        while True:
            for slot, worker in enumerate(self.workers):
                if worker.task is None and not exhausted:
                    task = next(calls, None)
                    if task is None:
                        exhausted = True
                        break
                    self._send(slot, task)
            busy = [w for w in self.workers if w.task is not None]
            if not busy:
                return
            now = time.monotonic()
            ready = wait([w.conn for w in busy], timeout=max(0.0, min(w.deadline for w in busy) - now))
            for slot, worker in enumerate(self.workers):
                if worker.task is None:
                    continue
                if worker.conn in ready:
                    yield worker.task[0], self._receive(slot)
                elif time.monotonic() >= worker.deadline:
                    task = worker.task
                    self._replace(slot)
                    yield task[0], {"outcome": "timeout", "message": f"no answer in {self.timeout_s} s",
                                    "seconds": self.timeout_s}

    def _send(self, slot: int, task: tuple) -> _Worker:
        worker = self.workers[slot]
        try:
            worker.conn.send(task[1:])
        except (OSError, ValueError):  # the worker left after a MemoryError: start another and resend
            worker = self._replace(slot)
            worker.conn.send(task[1:])
        worker.task, worker.deadline = task, time.monotonic() + self.timeout_s
        return worker

    def _receive(self, slot: int) -> dict:
        worker = self.workers[slot]
        try:
            result = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(5)
            code = worker.process.exitcode
            outcome = "memory" if code == -9 else "crash"
            result = {"outcome": outcome, "message": f"worker died, exit code {code}", "seconds": None}
            self._replace(slot)
            return result
        worker.task = None
        if result["outcome"] == "memory":
            self._replace(slot)
        return result

    def _replace(self, slot: int) -> _Worker:
        self.workers[slot].stop()
        self.workers[slot] = _Worker(self.ctx, self.memory_cap, self.setup)
        return self.workers[slot]
