"""The SIGKILL harness (evaluation/bench/kill_harness.py): it catches torn files and wrong resumes, and medfm's
training and index building survive a few kills (the full runs, 20+ kills each, are in docs/reliability.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .conftest import REPO

sys.path.insert(0, str(REPO / "evaluation/bench"))
import kill_harness  # noqa: E402

# A job that writes its one output in place, slowly: a kill can catch it half written.
TORN_WRITER = """
import json, sys, time
from pathlib import Path
out = Path(sys.argv[1])
for step in range(40):
    text = json.dumps({"step": step, "pad": "x" * 2000})
    with out.open("w") as f:
        f.write(text[:1000]); f.flush(); time.sleep(0.01); f.write(text[1000:])
"""


def _toy_job(script: str, result=lambda folder: json.loads((folder / "out.json").read_text())["step"]):
    def prepare(shared: Path, episode: Path) -> list[str]:
        (episode / "job.py").write_text(script)
        return [sys.executable, str(episode / "job.py"), str(episode / "out.json")]

    def check(episode: Path) -> None:
        if (episode / "out.json").is_file():
            kill_harness._must(lambda: json.loads((episode / "out.json").read_text()), episode / "out.json")

    return kill_harness.Job("toy", prepare, check, result, lambda a, b: None if a == b else f"{a} != {b}")


def test_the_harness_reports_a_file_torn_by_a_kill(tmp_path):
    report = kill_harness.run_job(_toy_job(TORN_WRITER), tmp_path, tmp_path, kills=12, seed=1)
    assert report.kills >= 12 and report.failures
    assert all("unreadable after a kill" in f for f in report.failures)


def test_the_harness_reports_a_resume_that_ends_elsewhere(tmp_path):
    # Atomic writes (nothing is ever torn), but every run starts over with a new random mark: not a resume.
    script = """
import json, os, random, sys, time
from pathlib import Path
out, mark = Path(sys.argv[1]), random.randrange(10**9)
for step in range(40):
    (out.parent / "tmp").write_text(json.dumps({"step": step, "mark": mark}))
    os.replace(out.parent / "tmp", out)
    time.sleep(0.01)
"""
    job = _toy_job(script, result=lambda folder: json.loads((folder / "out.json").read_text())["mark"])
    report = kill_harness.run_job(job, tmp_path, tmp_path, kills=3, seed=2)
    assert report.kills >= 3 and not any("unreadable" in f for f in report.failures)
    assert any("differs from the uninterrupted run" in f for f in report.failures)


@pytest.mark.parametrize("job", ["train", "index", "ingest"])
def test_medfm_jobs_survive_kills_and_resume_to_the_same_result(tmp_path_factory, job):
    workdir = tmp_path_factory.getbasetemp() / "kill-harness"
    shared = kill_harness.shared_inputs(workdir / "shared", patients=16)
    if job == "index":
        kill_harness.trained_model(shared, workdir)
    if job == "ingest":  # from a real Orthanc, started and stopped by the harness
        report = kill_harness.run_ingest(shared, workdir, kills=3, seed=0)
    else:
        report = kill_harness.run_job(kill_harness.JOBS[job], shared, workdir, kills=3, seed=0)
    assert report.kills >= 3 and report.checks_passed == report.kills
    assert report.failures == []
