import time

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image, ImageFilter
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medfm.cohort import LeakageError, check_near_duplicate_leakage
from medfm.cohort.leakage import image_phash, near_duplicate_pairs
from medfm.errors import MedfmReadError


def blobs(seed, size=128):
    """A smooth random grayscale picture: unrelated seeds give unrelated hashes."""
    noise = np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)
    return Image.fromarray(noise).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(3))


@pytest.fixture
def images(tmp_path):
    blobs(1).save(tmp_path / "a.png")
    # The same picture re-scaled, lightly noised and re-encoded as JPEG.
    copy = np.asarray(blobs(1).resize((100, 100)), dtype=float)
    copy += np.random.default_rng(9).normal(0, 3, copy.shape)
    Image.fromarray(np.clip(copy, 0, 255).astype(np.uint8)).save(tmp_path / "a_copy.jpg", quality=90)
    blobs(2).save(tmp_path / "b.png")
    blobs(3).save(tmp_path / "c.png")
    return tmp_path


def table(splits, paths=("a.png", "a_copy.jpg", "b.png", "c.png")):
    return pd.DataFrame({"study_id": [f"S{i}" for i in range(len(paths))], "path": list(paths), "split": splits})


def test_copy_in_another_split_is_reported_with_ids_paths_and_distance(images):
    with pytest.raises(LeakageError, match=r"1 near-duplicate.*S0 \(a\.png, train\) ~ S1 \(a_copy\.jpg, test\)") as err:
        check_near_duplicate_leakage(table(["train", "test", "train", "test"]), "path", images)
    (pair,) = err.value.pairs
    assert pair[:4] == ("S0", "S1", "a.png", "a_copy.jpg") and 0 <= pair[4] <= 4


def test_copy_in_the_same_split_is_returned_not_raised(images):
    within = check_near_duplicate_leakage(table(["train", "train", "test", "test"]), "path", images)
    assert [p[:2] for p in within] == [("S0", "S1")]


def test_unrelated_images_pass(images):
    t = table(["train", "test", "val"], paths=("a.png", "b.png", "c.png"))
    assert check_near_duplicate_leakage(t, "path", images) == []


def test_empty_paths_are_skipped_and_unreadable_files_raise(images):
    t = table(["train", "test", "val"], paths=("a.png", None, "b.png"))
    assert check_near_duplicate_leakage(t, "path", images) == []
    (images / "broken.png").write_bytes(b"not an image")
    with pytest.raises(MedfmReadError, match="broken.png"):
        check_near_duplicate_leakage(table(["train", "test"], paths=("a.png", "broken.png")), "path", images)


def test_dicom_is_hashed_like_the_same_picture_as_png(tmp_path):
    pixels = (np.asarray(blobs(1), dtype=np.uint16) * 16)  # 12-bit range
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.PhotometricInterpretation = "DX", "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PixelSpacing = [0.2, 0.2]
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    blobs(1).save(tmp_path / "a.png")
    distance = int(np.bitwise_count(image_phash(tmp_path / "a.dcm") ^ image_phash(tmp_path / "a.png")))
    assert distance <= 2


def test_pair_search_scales_to_2000_hashes():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 2000, dtype=np.int64).astype(np.uint64)
    hashes[1500] = hashes[7] ^ np.uint64(0b1011)  # 3 bits apart
    start = time.perf_counter()
    pairs = near_duplicate_pairs(hashes, 4)
    assert time.perf_counter() - start < 2.0
    assert pairs == [(7, 1500, 3)]
