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
