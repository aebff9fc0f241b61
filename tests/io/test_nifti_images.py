"""NIfTI volumes and PNG/JPEG/TIFF/GIF photographs."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from medfm.io import CorruptFileError, EmptyFileError, UnsupportedFormatError, read_nifti, read_photo

RAS_AFFINE = np.array([[0.0, -1.5, 0.0, 30.0], [2.0, 0.0, 0.0, -12.0], [0.0, 0.0, 3.0, 7.5], [0, 0, 0, 1]])


def test_nifti_layout_affine_in_lps_and_scaling(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(data, RAS_AFFINE)
    img.header.set_slope_inter(2.0, -10.0)
    nib.save(img, tmp_path / "v.nii.gz")
    image = read_nifti(tmp_path / "v.nii.gz")
    assert image.array.shape == (1, 6, 5, 4) and image.array.dtype == np.float32
    assert image.spacing == pytest.approx((3.0, 1.5, 2.0))  # (k, j, i) voxel sizes
    for i, j, k in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        assert image.array[0, k, j, i] == data[i, j, k] * 2.0 - 10.0
        ras = RAS_AFFINE @ [i, j, k, 1]
        assert np.allclose(image.affine @ [k, j, i, 1], [-ras[0], -ras[1], ras[2], 1])


def test_nifti_4d_to_channels_and_errors(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 2), dtype=np.float32), np.eye(4)), tmp_path / "f.nii")
    assert read_nifti(tmp_path / "f.nii").array.shape == (2, 5, 4, 3)
    payload = gzip.compress((tmp_path / "f.nii").read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(CorruptFileError):
        read_nifti(tmp_path / "cut.nii.gz")
    (tmp_path / "short.nii").write_bytes((tmp_path / "f.nii").read_bytes()[:600])  # header intact, data cut
    with pytest.raises(CorruptFileError, match="truncated"):
        read_nifti(tmp_path / "short.nii")
    (tmp_path / "e.nii").write_bytes(b"")
    with pytest.raises(EmptyFileError):
        read_nifti(tmp_path / "e.nii")
    (tmp_path / "t.nii").write_text("not an image\n" * 40)
    with pytest.raises((UnsupportedFormatError, CorruptFileError)):
        read_nifti(tmp_path / "t.nii")


@pytest.mark.parametrize(("name", "shape", "spacing"), [
    ("nibabel_anatomical.nii", (1, 25, 41, 33), (2.0, 2.0, 2.0)),  # big-endian int16
    ("nibabel_example4d.nii.gz", (2, 24, 96, 128), (2.2, 2.0, 2.0)),
    ("nibabel_functional.nii", (20, 3, 21, 17), (8.0, 4.0, 4.0)),
    ("totalseg_example_ct_sm.nii.gz", (1, 30, 101, 122), (3.0, 3.0, 3.0)),
])
def test_real_nifti(realdata, name, shape, spacing):
    image = read_nifti(realdata / "nifti" / name)
    assert image.array.shape == shape and image.spacing == pytest.approx(spacing, abs=1e-4)
    ras = nib.load(realdata / "nifti" / name).affine
    assert np.allclose(image.affine[:3, 3], ras[:3, 3] * [-1, -1, 1])


def test_real_big_endian_nifti_values(realdata):
    image = read_nifti(realdata / "nifti/nibabel_anatomical.nii")
    assert image.meta["byte_order"] == "big" and (image.array.min(), image.array.max()) == (-610, 30393)


def test_photo_modes(tmp_path):
    grey16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000) + 5000
    PILImage.fromarray(grey16).save(tmp_path / "g16.png")
    image = read_photo(tmp_path / "g16.png")
    assert image.array.shape == (1, 3, 4) and image.array.max() == 60000  # full 16-bit range kept
    assert image.meta["spacing_known"] is False and image.spacing == (1.0, 1.0)
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 90, 255
    PILImage.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    colour = read_photo(tmp_path / "a.png")
    assert colour.array.shape == (3, 2, 3) and colour.array[0].max() == 90 and not colour.meta["grey_as_rgb"]


def test_photo_errors(tmp_path):
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "x.png").read_bytes()[:3000])
    with pytest.raises(CorruptFileError):
        read_photo(tmp_path / "cut.png")
    (tmp_path / "junk.png").write_bytes(b"definitely not an image" * 10)
    with pytest.raises(UnsupportedFormatError):
        read_photo(tmp_path / "junk.png")
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(EmptyFileError):
        read_photo(tmp_path / "e.jpg")


@pytest.mark.parametrize(("relpath", "shape", "grey_as_rgb"), [
    ("cxr/txv_00000001_000.png", (1, 512, 512), False),
    ("cxr/txv_16747_3_1.jpg", (3, 885, 1036), True),
    ("fundus/drive_21_training.tif", (3, 584, 565), False),
    ("fundus/drive_21_manual1.gif", (1, 584, 565), False),
])
def test_real_photos(realdata, relpath, shape, grey_as_rgb):
    image = read_photo(realdata / relpath)
    assert image.array.shape == shape and image.meta["grey_as_rgb"] is grey_as_rgb
    assert 0 <= image.array.min() < image.array.max() <= 255
