"""The reader fuzz harness (evaluation/bench/fuzz_readers.py): a short run finds no bug, and the
harness itself reports each kind of bug, shown with fake readers injected into it."""

import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medfm.errors import MedfmReadError
from medfm.io.errors import CorruptFileError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "evaluation" / "bench"))
fuzz_readers = importlib.import_module("fuzz_readers")  # by this name, so spawned workers import it too

HERE = "tests.io.test_fuzz"


# Fake readers, each run in the harness's worker process.
def fake_hangs(path):
    time.sleep(60)


def fake_allocates(path):
    return np.ones(4 * 1024**3, dtype=np.uint8)  # over the test's 256 MiB cap


def fake_raises_key_error(path):
    raise KeyError("Rows")


def fake_hides_memory_error(path):
    try:
        np.empty(4 * 1024**3, dtype=np.uint8)
    except MemoryError:
        raise CorruptFileError(path, "could not decode") from None


def fake_killed(path):
    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does


def fake_segfaults(path):
    os.kill(os.getpid(), signal.SIGSEGV)


def fake_returns_nan(path):
    from medfm.io.images import Image, affine_2d

    return Image(np.full((1, 2, 2), np.nan, dtype=np.float32), affine_2d(1.0, 1.0), (1.0, 1.0))


def fake_typed_error(path):
    raise MedfmReadError(path, "not today")


FAKES = ("fake_hangs", "fake_allocates", "fake_raises_key_error", "fake_hides_memory_error", "fake_killed",
         "fake_segfaults", "fake_returns_nan", "fake_typed_error")


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """One input through every fake reader, then the real PNG reader: the harness must survive them all."""
    failures = tmp_path_factory.mktemp("failures")
    readers = {"png": (*(f"{HERE}:{name}" for name in FAKES), "medfm.io.images:read_photo")}
    summary = fuzz_readers.run(1, seed=0, formats=("png",), readers=readers, timeout_s=3.0, memory_cap=256 * 1024**2,
                               realdata=None, failures_dir=failures)
    by_reader = {bug["reader"].split(":")[1]: bug for bug in summary["bugs"]}
    return summary, by_reader, failures


@pytest.mark.parametrize(("reader", "outcome"), [
    ("fake_hangs", "timeout"),
    ("fake_allocates", "memory"),
    ("fake_hides_memory_error", "memory"),
    ("fake_killed", "memory"),
    ("fake_raises_key_error", "exception"),
    ("fake_segfaults", "crash"),
    ("fake_returns_nan", "bad_array"),
])
def test_each_kind_of_bug_is_reported(fake_run, reader, outcome):
    _, by_reader, _ = fake_run
    assert by_reader[reader]["outcome"] == outcome


def test_a_foreign_exception_keeps_its_type_message_and_traceback(fake_run):
    _, by_reader, _ = fake_run
    bug = by_reader["fake_raises_key_error"]
    assert bug["error_type"] == "builtins.KeyError" and "Rows" in bug["message"]
    assert "fake_raises_key_error" in bug["traceback"]


def test_typed_errors_and_decoded_arrays_are_not_bugs_and_the_run_goes_on_after_each_bug(fake_run):
    summary, by_reader, _ = fake_run
    assert "fake_typed_error" not in by_reader and "read_photo" not in by_reader
    assert summary["calls"] == len(FAKES) + 1 and summary["bugs_found"] == 7
    assert summary["outcomes"]["read_error"] + summary["outcomes"].get("decoded", 0) == 2


def test_failing_input_is_saved_with_how_to_reproduce_it(fake_run):
    _, by_reader, failures = fake_run
    (case,) = failures.iterdir()
    saved = json.loads((case / "case.json").read_text())
    assert saved["reproduce"].endswith("--seed 0 --only 0") and len(saved["bugs"]) == 7
    assert Path(by_reader["fake_hangs"]["saved_input"]).is_file()


def test_inputs_are_deterministic(tmp_path):
    seeds = fuzz_readers.make_seeds(tmp_path / "seeds", realdata=None)
    made = []
    for attempt in ("a", "b"):
        items = [fuzz_readers.make_input(i, 7, seeds, fuzz_readers.FORMATS, tmp_path / attempt) for i in range(14)]
        made.append([(item.fmt, item.strategy, json.dumps(item.params, default=str),
                      sorted((p.relative_to(item.folder).as_posix(), p.read_bytes()) for p in item.folder.rglob("*")
                             if p.is_file())) for item in items])
    assert made[0] == made[1]
    assert {fmt for fmt, *_ in made[0]} == set(fuzz_readers.FORMATS)


def test_short_fuzz_run_finds_no_bug():
    """300 mutated inputs (generated seeds and the real files under 600 kB) through every reader and inspect."""
    summary = fuzz_readers.run(300, seed=0, jobs=2, max_seed_bytes=600_000)
    assert summary["bugs_found"] == 0, fuzz_readers.format_table(summary)
    assert summary["inputs"] == 300 and summary["seeds"]["generated"] > 0
    # not vacuous: every format was tried, and both good outcomes occurred
    assert {row["format"] for row in summary["table"]} == set(fuzz_readers.FORMATS)
    assert summary["outcomes"]["decoded"] > 0 and summary["outcomes"]["read_error"] > 0
