import os

import pytest

from medfm.atomic import write_atomic, write_json_atomic


def test_a_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"auroc": 0.9})

    def crash(tmp):
        tmp.write_text('{"auroc": 0.')  # half written
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, crash)
    assert target.read_text() == '{\n  "auroc": 0.9\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_writer_that_creates_a_private_file_still_gives_the_usual_mode(tmp_path):
    import stat

    from medfm.atomic import _UMASK

    def private(tmp):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors creates its files
        os.write(fd, b"weights")
        os.close(fd)

    written = write_atomic(tmp_path / "model.safetensors", private)
    if _UMASK is None:
        pytest.skip("no /proc/self/status umask on this platform")
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~_UMASK


# -- several files replaced together -------------------------------------------------------------------

COMMIT_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from medfm.atomic import commit_together, write_text_atomic

def write(staging):
    for name in ("weights", "config", "state"):
        write_text_atomic(staging / name, {version!r})
        time.sleep(0.01)
    (staging / "adapters").mkdir()
    write_text_atomic(staging / "adapters" / "a", {version!r})

while True:
    commit_together(Path({folder!r}), write)
"""


def _versions(folder):
    files = [folder / n for n in ("weights", "config", "state")] + [folder / "adapters" / "a"]
    return {f.read_text() if f.is_file() else None for f in files}


def test_files_committed_together_are_old_or_new_after_any_kill(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from medfm.atomic import commit_together, recover_together, write_text_atomic

    from .conftest import REPO

    def write(version):
        def to(staging):
            for name in ("weights", "config", "state"):
                write_text_atomic(staging / name, version)
            (staging / "adapters").mkdir()
            write_text_atomic(staging / "adapters" / "a", version)
        return to

    commit_together(tmp_path, write("old"))
    assert _versions(tmp_path) == {"old"} and not (tmp_path / ".staging").exists()
    rng = __import__("random").Random(0)
    for kill in range(25):
        version = f"v{kill}"
        process = subprocess.Popen([sys.executable, "-c", COMMIT_SCRIPT.format(
            repo=str(REPO), version=version, folder=str(tmp_path))])
        time.sleep(rng.uniform(0.02, 0.15))
        process.send_signal(signal.SIGKILL)
        process.wait()
        before = _versions(tmp_path)
        recover_together(tmp_path)
        after = _versions(tmp_path)
        assert len(after) == 1 and not (tmp_path / ".staging").exists(), (kill, before, after)  # one set, whole


def test_an_uncommitted_staging_is_dropped_and_a_committed_one_finished(tmp_path):
    from medfm.atomic import COMMITTED, STAGING, recover_together, write_text_atomic

    write_text_atomic(tmp_path / "weights", "old")
    (tmp_path / STAGING).mkdir()
    write_text_atomic(tmp_path / STAGING / "weights", "new")
    assert recover_together(tmp_path) and (tmp_path / "weights").read_text() == "old"
    (tmp_path / STAGING).mkdir()
    write_text_atomic(tmp_path / STAGING / "config", "new")
    write_text_atomic(tmp_path / STAGING / COMMITTED, "config\nweights\n")  # weights moved before the kill
    (tmp_path / "weights").write_text("new")
    assert recover_together(tmp_path)
    assert (tmp_path / "config").read_text() == "new" and not (tmp_path / STAGING).exists()
    assert not recover_together(tmp_path)


@pytest.fixture
def fsynced(monkeypatch):
    """The paths os.fsync is called on, in order (files and folders), read from /proc/self/fd."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name the synced descriptors")
    calls = []
    real = os.fsync

    def recording(fd):
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return calls


def test_a_durable_write_syncs_the_file_before_the_rename_and_its_folder_after(tmp_path, fsynced):
    from medfm.atomic import write_text_atomic

    target = tmp_path / "train_state.json"
    write_text_atomic(target, "{}")
    assert len(fsynced) == 2
    assert fsynced[0].startswith(str(tmp_path / ".train_state.json."))  # the temporary file, before its rename
    assert fsynced[1] == str(tmp_path)  # the folder, so the rename survives a power loss
    fsynced.clear()
    write_text_atomic(tmp_path / "regenerable.txt", "x", durable=False)
    assert fsynced == []


def test_a_committed_set_is_on_disk_before_its_mark_even_files_other_code_wrote(tmp_path, fsynced):
    from medfm.atomic import COMMITTED, STAGING, commit_together, write_text_atomic

    def write(staging):
        write_text_atomic(staging / "config.json", "{}")
        (staging / "adapters").mkdir()
        (staging / "adapters" / "adapter_model.safetensors").write_bytes(b"peft wrote me")  # no fsync of its own

    commit_together(tmp_path, write)
    staged = str(tmp_path / STAGING)
    mark = next(i for i, path in enumerate(fsynced) if os.path.basename(path).startswith(f".{COMMITTED}."))
    before_mark = set(fsynced[:mark])
    assert {f"{staged}/adapters/adapter_model.safetensors", f"{staged}/config.json", f"{staged}/adapters",
            staged} <= before_mark
    assert fsynced[-1] == str(tmp_path)  # the renames into place, before the staging folder is removed
    assert (tmp_path / "adapters" / "adapter_model.safetensors").read_bytes() == b"peft wrote me"
