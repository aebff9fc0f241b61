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
