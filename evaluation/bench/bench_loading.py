"""Second-epoch loading through the preprocessing cache vs decoding every epoch.

Baselines, same files, same run:
- volumes: MONAI ``LoadImaged`` (pydicom reader) on a 200-slice CT series folder,
  then ``Spacingd`` to 2 mm and ``ScaleIntensityRanged`` (lung window), no cache;
- ECGs: ``wfdb.rdrecord`` plus medfm's ``ecg_to_input`` (500 Hz → 100 Hz), no cache.
medfm runs the very same transforms inside ``PreprocessCache.get_or_compute``:
the first epoch computes and stores, the second reads the stored tensors.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import wfdb
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged, Spacingd
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medfm.data.cache import PreprocessCache, wfdb_record_files
from medfm.data.transforms import ecg_to_input
from medfm.io import read_ecg
from medfm.keys import STANDARD_LEADS

N_SERIES, N_SLICES, SIZE = 4, 200, 256
N_ECGS = 120


def write_ct_series(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    series = generate_uid()
    for k in rng.permutation(N_SLICES):  # files written in shuffled order, as a PACS export may be
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, series
        ds.InstanceNumber = int(k) + 1
        ds.ImagePositionPatient = [-160.0, -160.0, float(k) * 1.25]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.25, 1.25], 1.25
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 2000, (SIZE, SIZE), dtype=np.int16).tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)


def write_ecgs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(N_ECGS):
        signal = rng.normal(0, 0.3, (5000, 12))
        wfdb.wrsamp(f"e{i:03d}", fs=500, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=signal,
                    fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
        records.append(folder / f"e{i:03d}")
    return records


def per_item(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items)


def flush_seconds(cache: PreprocessCache) -> float:
    start = time.perf_counter()
    cache.flush()
    return time.perf_counter() - start


def paired_per_item(baseline, candidate, items) -> tuple[float, float]:
    """Mean seconds per item of two functions, alternated item by item.

    Alternating puts both under the same machine load at each moment, so a busy
    neighbour cannot favour whichever ran second.
    """
    totals = [0.0, 0.0]
    for item in items:
        for k, fn in enumerate((baseline, candidate)):
            start = time.perf_counter()
            fn(item)
            totals[k] += time.perf_counter() - start
    return totals[0] / len(items), totals[1] / len(items)


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = [tmp / f"ct{i}" for i in range(N_SERIES)]
        for i, folder in enumerate(folders):
            write_ct_series(folder, i)
        records = write_ecgs(tmp / "ecg")

        volume_transform = Compose([
            LoadImaged(keys="ct", reader="PydicomReader"), EnsureChannelFirstd(keys="ct"),
            Spacingd(keys="ct", pixdim=(2.0, 2.0, 2.0), mode="bilinear"),
            ScaleIntensityRanged(keys="ct", a_min=-1000, a_max=400, b_min=0.0, b_max=1.0, clip=True),
        ])
        volume_spec = {"transform": "bench-ct", "pixdim": 2.0, "window": [-1000, 400]}
        cache = PreprocessCache(tmp / "cache")

        def volume_baseline(folder):
            return volume_transform({"ct": str(folder)})["ct"]

        def volume_cached(folder):
            files = sorted(folder.glob("*.dcm"))
            return cache.get_or_compute("ct", files, volume_spec, lambda: volume_baseline(folder).as_tensor())

        shape = tuple(volume_baseline(folders[0]).shape)
        baseline_s, first_epoch_s = paired_per_item(volume_baseline, volume_cached, folders)
        first_epoch_s += flush_seconds(cache) / len(folders)  # the background writes belong to the first epoch
        volumes = {"baseline_s": baseline_s, "first_epoch_s": first_epoch_s,
                   "second_epoch_s": per_item(volume_cached, folders)}

        ecg_spec = {"transform": "ecg_to_input", "sample_rate": 100, "duration_s": 10}

        def ecg_baseline(record):
            return ecg_to_input(read_ecg(record), 100, 10)

        def ecg_cached(record):
            return cache.get_or_compute("ecg", wfdb_record_files(record), ecg_spec, lambda: ecg_baseline(record))

        baseline_s, first_epoch_s = paired_per_item(ecg_baseline, ecg_cached, records)
        first_epoch_s += flush_seconds(cache) / len(records)
        ecgs = {"baseline_s": baseline_s, "first_epoch_s": first_epoch_s,
                "second_epoch_s": per_item(ecg_cached, records)}
    for row in (volumes, ecgs):
        row["second_epoch_speedup"] = row["baseline_s"] / row["second_epoch_s"]
        row["first_epoch_ratio"] = row["baseline_s"] / row["first_epoch_s"]
    return {"volumes": {**volumes, "items": N_SERIES, "source": f"{N_SLICES}-slice CT series {SIZE}x{SIZE} int16",
                        "output_shape": shape},
            "ecgs": {**ecgs, "items": N_ECGS, "source": "12-lead 500 Hz 10 s WFDB format 16"}}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
