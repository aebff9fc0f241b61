"""The preprocessing cache serves exactly what would be computed, and nothing stale."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
import wfdb

from medfm.cohort.manifest import Cohort, CohortConfig
from medfm.data import dataset as dataset_module
from medfm.data.cache import PreprocessCache, wfdb_record_files
from medfm.data.dataset import CohortDataset, materialize
from medfm.data.transforms import ecg_to_input
from medfm.keys import Modality

SPEC = {"transform": "test", "size": 8}


class Counter:
    def __init__(self, value):
        self.calls, self.value = 0, value

    def __call__(self):
        self.calls += 1
        return self.value


def test_miss_then_hit(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"pixels")
    cache = PreprocessCache(tmp_path / "cache")
    compute = Counter(torch.arange(6.0).reshape(2, 3))
    first = cache.get_or_compute("cxr", [source], SPEC, compute)
    second = cache.get_or_compute("cxr", [source], SPEC, compute)
    assert compute.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(first, second)


def test_changed_content_or_spec_is_a_new_entry(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"version 1")
    cache = PreprocessCache(tmp_path / "cache")
    cache.get_or_compute("cxr", [source], SPEC, Counter(torch.zeros(2)))
    source.write_bytes(b"version 2, longer")
    assert torch.equal(cache.get_or_compute("cxr", [source], SPEC, Counter(torch.ones(2))), torch.ones(2))
    changed_spec = {**SPEC, "size": 16}
    assert torch.equal(cache.get_or_compute("cxr", [source], changed_spec, Counter(torch.full((2,), 7.0))),
                       torch.full((2,), 7.0))
    assert cache.get_or_compute("ecg", [source], SPEC, Counter(torch.full((2,), 9.0)))[0] == 9.0
    assert cache.misses == 4


def test_same_size_same_mtime_edit_is_the_documented_blind_spot_but_touch_is_not(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"AAAA")
    cache = PreprocessCache(tmp_path / "cache")
    cache.get_or_compute("cxr", [source], SPEC, Counter(torch.zeros(1)))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, content unchanged
    assert cache.get_or_compute("cxr", [source], SPEC, Counter(torch.ones(1)))[0] == 0  # re-hashed, still a hit
    source.write_bytes(b"BBBB")
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # size and mtime restored by hand
    assert cache.get_or_compute("cxr", [source], SPEC, Counter(torch.ones(1)))[0] == 0


def test_a_damaged_entry_is_recomputed_not_served(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"x")
    cache = PreprocessCache(tmp_path / "cache")
    cache.get_or_compute("cxr", [source], SPEC, Counter(torch.zeros(3)))
    cache.flush()
    entry = cache.entry_path("cxr", [source], SPEC)
    entry.write_bytes(entry.read_bytes()[:10])
    compute = Counter(torch.zeros(3))
    assert torch.equal(cache.get_or_compute("cxr", [source], SPEC, compute), torch.zeros(3))
    assert compute.calls == 1


def test_wfdb_record_files_cover_every_signal_file(realdata):
    files = wfdb_record_files(realdata / "ecg_wfdb/ptbdb_s0010_re/s0010_re")
    assert [f.name for f in files] == ["s0010_re.hea", "s0010_re.dat", "s0010_re.xyz"]
    files = wfdb_record_files(realdata / "ecg_wfdb/binformats/binformats")
    assert [f.name for f in files] == ["binformats.hea", *(f"binformats.d{i}" for i in range(10))]
    assert all(f.is_file() for f in files)


@pytest.fixture
def ecg_cohort(tmp_path):
    rows = []
    for i in range(6):
        t = np.arange(1000) / 250
        signal = np.stack([np.sin(2 * np.pi * (i + 1) * t)] * 12, axis=1)
        wfdb.wrsamp(f"r{i}", fs=250, units=["mV"] * 12, p_signal=signal, fmt=["16"] * 12,
                    sig_name=["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"],
                    write_dir=str(tmp_path))
        rows.append({"patient_id": f"P{i}", "study_id": f"S{i}", "ecg_path": f"r{i}", "y": i % 2})
    (tmp_path / "bad.hea").write_text("garbage\n")
    rows.append({"patient_id": "P9", "study_id": "S9", "ecg_path": "bad", "y": 0})
    table = pd.DataFrame(rows)
    table.to_csv(tmp_path / "manifest.csv", index=False)
    config = CohortConfig(name="t", manifest="manifest.csv", modalities={"ecg": "ecg_path"}, labels=["y"])
    return Cohort(config, tmp_path / "c.yaml", tmp_path / "manifest.csv", table)


def test_second_epoch_reads_no_file_and_matches_the_first(ecg_cohort, tmp_path, monkeypatch):
    def preprocess(record):
        return ecg_to_input(record, 100, 10)

    spec = {"transform": "ecg_to_input", "sample_rate": 100, "duration_s": 10}
    cache = PreprocessCache(tmp_path / "cache")
    rows = list(ecg_cohort.table.index)
    first, quarantine = materialize(CohortDataset(ecg_cohort, rows, {Modality.ECG: preprocess}, on_error="skip",
                                                  cache=cache, specs={Modality.ECG: spec}), workers=2)
    assert len(quarantine) == 1 and quarantine[0].study_id == "S9"
    assert len(list((tmp_path / "cache/entries").rglob("*.safetensors"))) == 6  # written by the worker processes

    def no_reading(path):
        raise AssertionError(f"read {path} although it is cached")

    monkeypatch.setitem(dataset_module.READERS, Modality.ECG, no_reading)
    hot = PreprocessCache(tmp_path / "cache")
    dataset = CohortDataset(ecg_cohort, rows[:6], {Modality.ECG: preprocess}, cache=hot, specs={Modality.ECG: spec})
    for i in range(6):
        sample, _ = dataset[i]
        assert torch.equal(sample[Modality.ECG], first[i][Modality.ECG])
    assert hot.hits == 6 and hot.misses == 0


def _fill(directory, sources, barrier):
    cache = PreprocessCache(directory)
    barrier.wait()  # both processes hit the same missing entries at the same moment
    for i, source in enumerate(sources):
        cache.get_or_compute("ecg", [source], SPEC, lambda i=i: torch.full((256, 256), float(i)))


def test_two_processes_filling_the_same_entries_leave_valid_entries(tmp_path):
    """Two independent processes (as torchrun ranks are: spawned, not forked) share one cache."""
    import multiprocessing as mp

    sources = []
    for i in range(20):
        sources.append(tmp_path / f"s{i}.bin")
        sources[-1].write_bytes(bytes([i]) * 100)
    context = mp.get_context("spawn")
    barrier = context.Barrier(2, timeout=120)
    workers = [context.Process(target=_fill, args=(tmp_path / "cache", sources, barrier)) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for w in workers:
            w.join(timeout=180)
        assert [w.exitcode for w in workers] == [0, 0]
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
    cache = PreprocessCache(tmp_path / "cache")
    for i, source in enumerate(sources):
        value = cache.get_or_compute("ecg", [source], SPEC, lambda: torch.zeros(1))
        assert value.shape == (256, 256) and value[0, 0] == i
    assert cache.misses == 0
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_first_sight_of_a_large_set_hashes_beside_the_decode_and_stores_under_the_content_key(tmp_path, monkeypatch):
    monkeypatch.setattr("medfm.data.cache.INDEX_MIN_BYTES", 8)
    sources = [tmp_path / f"slice{i}.dcm" for i in range(3)]
    for i, source in enumerate(sources):
        source.write_bytes(bytes([i]) * 64)
    cache = PreprocessCache(tmp_path / "cache")
    compute = Counter(torch.arange(4.0))
    assert torch.equal(cache.get_or_compute("ct", sources, SPEC, compute), torch.arange(4.0))
    cache.flush()
    assert PreprocessCache(tmp_path / "cache").entry_path("ct", sources, SPEC).is_file()  # a fresh process agrees
    assert len(list((tmp_path / "cache" / "index").iterdir())) == 1
    fresh = PreprocessCache(tmp_path / "cache")
    assert torch.equal(fresh.get_or_compute("ct", sources, SPEC, compute), torch.arange(4.0))
    assert compute.calls == 1 and fresh.hits == 1


def test_a_failing_decode_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("medfm.data.cache.INDEX_MIN_BYTES", 8)
    source = tmp_path / "broken.dcm"
    source.write_bytes(b"x" * 64)
    cache = PreprocessCache(tmp_path / "cache")

    def fail():
        raise ValueError("cannot decode")

    with pytest.raises(ValueError, match="cannot decode"):
        cache.get_or_compute("ct", [source], SPEC, fail)
    assert not (tmp_path / "cache" / "entries").exists()


def test_changing_a_returned_tensor_in_place_does_not_change_the_entry(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"pixels")
    cache = PreprocessCache(tmp_path / "cache")
    returned = cache.get_or_compute("cxr", [source], SPEC, Counter(torch.zeros(3)))
    returned += 5  # e.g. an in-place augmentation
    assert torch.equal(cache.get_or_compute("cxr", [source], SPEC, Counter(torch.ones(3))), torch.zeros(3))
    cache.flush()
    assert torch.equal(PreprocessCache(tmp_path / "cache").get_or_compute("cxr", [source], SPEC, Counter(None)),
                       torch.zeros(3))


def test_a_series_folder_is_keyed_by_every_visible_file_in_it(tmp_path):
    from medfm.data.cache import source_files

    folder = tmp_path / "series"
    folder.mkdir()
    for name in ("2.dcm", "1.dcm", ".DS_Store"):
        (folder / name).write_bytes(b"x")
    assert source_files("ct", folder) == [folder / "1.dcm", folder / "2.dcm"]
    assert source_files("cxr", folder / "1.dcm") == [folder / "1.dcm"]
