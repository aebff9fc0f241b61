"""Fuzz medfm's readers with hostile files: every outcome must be an array or a MedfmReadError.

Seeds are the DICOM, WFDB, NIfTI, PNG and Heidelberg ``.vol`` files of ``../shared/realdata``
(copied, never touched) and small files written here by each format's own writer. An input
is a seed after one named mutation: truncation, flipped bytes, absurd header values written
through the format's writer, DICOM elements with a wrong VR, WFDB headers whose lead count
disagrees with the data or whose ``.dat`` is gone, and zips of any of these. Each input goes
to every reader that applies and to ``medfm inspect`` (``inspect_path`` and both renderings),
one call at a time in a spawned worker process, under a wall-clock bound and an address-space
cap (``RLIMIT_AS`` = the worker's footprint after its imports + ``memory_cap``).

Outcomes: ``decoded`` (an array of the documented dtype and rank, finite, with positive
spacing; or inspect's description) and ``read_error`` (a ``MedfmReadError``) are fine. The
bugs: ``exception`` (any other exception), ``timeout``, ``memory`` (a ``MemoryError``, even one
a reader caught and re-raised as a ``MedfmReadError``: the allocation was attempted), ``crash``
(the worker died) and ``bad_array`` (an array no reader should return). Failing inputs are
copied to ``--failures`` with a ``case.json`` that says how to reproduce them.

Randomness is a numpy ``default_rng([seed, index])`` per input rather than hypothesis: every
input is then reproducible alone (``--only INDEX``) with no example database or shrinking.

    python evaluation/bench/fuzz_readers.py --inputs 3000 --seed 0 --json fuzz.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzz_mutations import FuzzInput, make_input
from fuzz_pool import DEFAULT_MEMORY_CAP, DEFAULT_TIMEOUT_S, ReaderPool
from fuzz_seeds import REALDATA, make_seeds

BUG_OUTCOMES = ("exception", "timeout", "memory", "crash", "bad_array")
_THIS = Path(__file__).stem  # workers import readers defined here under this name
_INSPECT = f"{_THIS}:inspect_like_cli"

# Readers each format's inputs go to ("module:function"); every format also goes to inspect.
READERS: dict[str, tuple[str, ...]] = {
    "dicom": ("medfm.io.dicom:read_dicom_image", "medfm.io.dicom:read_radiograph", _INSPECT),
    "dicom_series": ("medfm.io.dicom_series:read_dicom_series", _INSPECT),
    "nifti": ("medfm.io.nifti:read_nifti", _INSPECT),
    "png": ("medfm.io.images:read_photo", _INSPECT),
    "wfdb": ("medfm.io.wfdb:read_ecg", _INSPECT),
    "heidelberg_vol": ("medfm.io.oct_vendor:read_heidelberg_vol", "medfm.io.oct_vendor:read_heidelberg_vol_slo",
                       _INSPECT),
    "zip": (f"{_THIS}:read_zipped_study",),
}
FORMATS = tuple(READERS)
# NIfTI float images may hold NaN on purpose (masked statistical maps); every other reader promises finite values.
_NAN_ALLOWED = ("medfm.io.nifti:read_nifti",)
# What the worker imports before it caps its address space, so imports are not charged to a reader.
_PRELOAD = ("medfm.io.dicom", "medfm.io.dicom_series", "medfm.io.nifti", "medfm.io.images", "medfm.io.wfdb",
            "medfm.io.oct_vendor", "medfm.io.inspect", "medfm.io.archive", "pydicom.pixels", "PIL.PngImagePlugin")


# ---------------------------------------------------------------------------------------------
# Readers the harness itself provides (run in the worker)
# ---------------------------------------------------------------------------------------------
def inspect_like_cli(path: str | Path) -> dict:
    """What ``medfm inspect PATH`` and ``medfm inspect --json PATH`` compute, without printing it."""
    from medfm.io.inspect import format_inspection, inspect_path

    info = inspect_path(path)
    json.dumps(info, indent=2, default=str)
    format_inspection(info)
    return info


def read_zipped_study(path: str | Path) -> dict:
    """A zip as an upload is handled: unpacked by ``medfm.io.archive``, then its one study inspected."""
    from medfm.io.archive import extract_zip

    with tempfile.TemporaryDirectory(prefix="medfm-fuzz-zip-") as tmp:
        root = extract_zip(path, tmp)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        headers = [p for p in files if p.suffix == ".hea"]
        if len(headers) == 1:
            study = headers[0]
        elif len(files) == 1 or len({p.parent for p in files}) != 1:
            study = files[0] if files else root
        else:
            study = files[0].parent
        return inspect_like_cli(study)


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
@dataclass
class _Tally:
    inputs: int = 0
    calls: int = 0
    outcomes: Counter = field(default_factory=Counter)
    read_errors: Counter = field(default_factory=Counter)
    variants: Counter = field(default_factory=Counter)
    decoded_by_variant: Counter = field(default_factory=Counter)  # which variants still decode, and from which seed


def run(
    n_inputs: int = 150,
    seed: int = 0,
    *,
    formats: tuple[str, ...] | None = None,
    readers: dict[str, tuple[str, ...]] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_cap: int = DEFAULT_MEMORY_CAP,
    jobs: int = 1,
    realdata: Path | None = REALDATA,
    max_seed_bytes: int | None = None,
    failures_dir: Path | None = None,
    only: list[int] | None = None,
    progress: bool = False,
) -> dict:
    """Fuzz ``n_inputs`` inputs (or just the indices in ``only``); returns the JSON-able summary.

    Args:
        formats: formats to draw inputs from (default all of :data:`FORMATS`).
        readers: per format, the "module:function" readers to call (default :data:`READERS`);
            tests inject fake readers here.
        timeout_s: wall-clock bound per reader call.
        memory_cap: address space a reader call may use above the worker's footprint after imports.
        max_seed_bytes: leave out real seeds larger than this (all their files together).
        failures_dir: where each input with a bug is copied, with ``case.json``.
    """
    formats = tuple(formats or FORMATS)
    readers = {**READERS, **(readers or {})}
    start = time.perf_counter()
    tallies: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    bugs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="medfm-fuzz-") as tmp:
        work = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seeds = make_seeds(work / "seeds", realdata, max_seed_bytes)
        indices = list(only) if only is not None else list(range(n_inputs))
        pending: dict[int, tuple[FuzzInput, list[dict]]] = {}

        def calls() -> Iterator[tuple[Any, str, str]]:
            for index in indices:
                item = make_input(index, seed, seeds, formats, work / "inputs")
                specs = readers[item.fmt]
                pending[index] = (item, [])
                tallies[item.fmt, item.strategy].inputs += 1
                if variant := _variant(item):
                    tallies[item.fmt, item.strategy].variants[variant] += 1
                for spec in specs:
                    target = item.path.with_name(item.path.name + ".hea") if (
                        item.fmt == "wfdb" and spec == _INSPECT) else item.path
                    yield (index, spec), spec, str(target)

        preload = _PRELOAD + tuple(sorted({spec for specs in readers.values() for spec in specs}))
        with ReaderPool(jobs, timeout_s, memory_cap, preload=preload, nan_allowed=_NAN_ALLOWED) as pool:
            limits = pool.limits
            done = 0
            for (index, spec), result in pool.run(calls()):
                item, results = pending[index]
                results.append({"reader": spec, **result})
                tally = tallies[item.fmt, item.strategy]
                tally.calls += 1
                tally.outcomes[result["outcome"]] += 1
                if result["outcome"] == "read_error":
                    tally.read_errors[result["error_type"]] += 1
                if result["outcome"] == "decoded" and (variant := _variant(item)):
                    tally.decoded_by_variant[f"{variant} ({Path(item.seed).name})"] += 1
                if len(results) == len(readers[item.fmt]):
                    bugs += _finish_input(item, results, seed, failures_dir)
                    del pending[index]
                    done += 1
                    if progress and done % 100 == 0:
                        print(f"  {done}/{len(indices)} inputs, {len(bugs)} bug(s), "
                              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return _summary(tallies, bugs, seeds, seed, len(indices), time.perf_counter() - start, timeout_s, memory_cap,
                    jobs, limits)


def _variant(item: FuzzInput) -> str | None:
    """Which variant of its strategy an input is (a zip's: the strategy of the input inside it)."""
    return item.params.get("variant") or item.params.get("inner_strategy")


def _finish_input(item: FuzzInput, results: list[dict], seed: int, failures_dir: Path | None) -> list[dict]:
    found = []
    for result in results:
        if result["outcome"] not in BUG_OUTCOMES:
            continue
        found.append({"input": item.index, "format": item.fmt, "seed_file": item.seed, "strategy": item.strategy,
                      "params": item.params, **result})
    if found and failures_dir is not None:
        case = failures_dir / f"{item.index:06d}-{item.fmt}-{item.strategy}"
        if case.exists():
            shutil.rmtree(case)
        shutil.copytree(item.folder, case / "input")
        reader_path = case / "input" / item.path.relative_to(item.folder)
        for bug in found:
            bug["saved_input"] = str(reader_path)
        reproduce = f"python evaluation/bench/fuzz_readers.py --seed {seed} --only {item.index}"
        (case / "case.json").write_text(json.dumps({"reproduce": reproduce, "bugs": found}, indent=2, default=str))
    shutil.rmtree(item.folder, ignore_errors=True)
    return found


def _summary(tallies, bugs, seeds, seed, n_inputs, seconds, timeout_s, memory_cap, jobs, limits) -> dict:
    rows = []
    for (fmt, strategy), tally in sorted(tallies.items()):
        rows.append({
            "format": fmt, "strategy": strategy, "inputs": tally.inputs, "calls": tally.calls,
            "decoded": tally.outcomes["decoded"], "read_error": tally.outcomes["read_error"],
            "bugs": sum(tally.outcomes[o] for o in BUG_OUTCOMES),
            "outcomes": dict(tally.outcomes), "read_error_types": dict(tally.read_errors),
            "variants": dict(sorted(tally.variants.items())),
            "decoded_by_variant": dict(sorted(tally.decoded_by_variant.items())),
        })
    totals = Counter()
    for row in rows:
        totals.update(row["outcomes"])
    return {
        "seed": seed, "inputs": n_inputs, "calls": sum(r["calls"] for r in rows), "seconds": round(seconds, 1),
        "timeout_s": timeout_s, "memory_cap_bytes": memory_cap, "jobs": jobs,
        "worker_baseline_bytes": limits["baseline_bytes"], "worker_limit_bytes": limits["limit_bytes"],
        "seeds": {"generated": sum(not s.real for s in seeds), "real": sum(s.real for s in seeds),
                  "by_format": dict(Counter(s.fmt for s in seeds))},
        "outcomes": dict(totals), "bugs_found": len(bugs), "table": rows, "bugs": bugs,
    }


def format_table(summary: dict) -> str:
    """The summary as a plain-text table: format x mutation, inputs, calls and outcomes."""
    header = f"{'format':<15}{'mutation':<14}{'inputs':>7}{'calls':>7}{'decoded':>9}{'MedfmReadError':>16}{'bugs':>6}"
    lines = [header, "-" * len(header)]
    for row in summary["table"]:
        lines.append(f"{row['format']:<15}{row['strategy']:<14}{row['inputs']:>7}{row['calls']:>7}"
                     f"{row['decoded']:>9}{row['read_error']:>16}{row['bugs']:>6}")
    totals = summary["outcomes"]
    lines.append("-" * len(header))
    lines.append(f"{'total':<29}{summary['inputs']:>7}{summary['calls']:>7}{totals.get('decoded', 0):>9}"
                 f"{totals.get('read_error', 0):>16}{summary['bugs_found']:>6}")
    lines.append(f"{summary['seconds']} s, {summary['jobs']} worker(s), {summary['timeout_s']} s per call, "
                 f"address space capped at {summary['worker_limit_bytes'] / 2**30:.2f} GiB "
                 f"({summary['memory_cap_bytes'] / 2**30:.2f} GiB above the worker's "
                 f"{summary['worker_baseline_bytes'] / 2**30:.2f} GiB)")
    for bug in summary["bugs"]:
        lines.append(f"BUG input {bug['input']} {bug['format']}/{bug['strategy']} {bug['params']} -> {bug['reader']}: "
                     f"{bug['outcome']} {bug.get('error_type', '')} {bug.get('message', '')}"[:400])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=150, help="number of mutated inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, nargs="+", help="run just these input indices (to reproduce a failure)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per reader call")
    parser.add_argument("--memory-cap", type=float, default=DEFAULT_MEMORY_CAP / 2**30,
                        help="GiB of address space a reader call may add to the worker's")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--max-seed-bytes", type=int, help="leave out real seeds larger than this")
    parser.add_argument("--failures", type=Path, default=Path("fuzz-failures"), help="folder for failing inputs")
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args(argv)
    summary = run(args.inputs, args.seed, formats=tuple(args.formats) if args.formats else None,
                  timeout_s=args.timeout, memory_cap=int(args.memory_cap * 2**30), jobs=args.jobs,
                  max_seed_bytes=args.max_seed_bytes, failures_dir=args.failures, only=args.only, progress=True)
    print(format_table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    if summary["bugs_found"]:
        print(f"{summary['bugs_found']} bug(s); failing inputs under {args.failures}/", file=sys.stderr)
    return 1 if summary["bugs_found"] else 0


if __name__ == "__main__":
    sys.exit(main())
