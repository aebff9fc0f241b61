"""NIfTI volumes and PNG/JPEG/TIFF/GIF photographs."""

import gzip
import io
import struct
import tracemalloc
import zlib

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from medfm.errors import MedfmReadError
from medfm.io import CorruptFileError, EmptyFileError, UnsupportedFormatError, inspect_path, read_nifti, read_photo

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


# Hostile files (found by evaluation/bench/fuzz_readers.py): a typed error, never a nibabel/zlib/Pillow
# exception, and never an allocation of the size a header declares.
def nifti_with(tmp_path, name, shape=(5, 6, 7), **fields):
    """A small NIfTI-1 file whose header ``fields`` are then overwritten as given (nothing validated)."""
    data = np.random.default_rng(0).integers(0, 16, shape).astype(np.int16)
    img = nib.Nifti1Image(data, RAS_AFFINE)
    nib.save(img, tmp_path / "v.nii")
    raw = (tmp_path / "v.nii").read_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    for key, value in fields.items():
        header[key] = value
    raw = header.binaryblock + raw[348:]
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize(("fields", "reason"), [
    ({"vox_offset": -1000.0}, "header could not be parsed"),
    ({"datatype": 4096}, "header could not be parsed"),
    ({"datatype": 1536, "bitpix": 128}, "header could not be parsed"),
    ({"scl_slope": 2.0, "scl_inter": float("nan")}, "Valid slope but invalid intercept"),
    ({"scl_slope": 3e38}, "infinite values"),
    ({"dim": [3, -5, 6, 7, 1, 1, 1, 1]}, "every one must be positive"),
    ({"dim": [3, 5, 0, 7, 1, 1, 1, 1]}, "every one must be positive"),
    ({"dim": [0, 5, 6, 7, 1, 1, 1, 1]}, "every one must be positive"),
    ({"dim": [3, 5, 6, 70, 1, 1, 1, 1]}, "truncated"),
    ({"datatype": 128, "bitpix": 24}, "only integer and real voxels"),
    ({"srow_x": [0.0] * 4, "srow_y": [0.0] * 4, "srow_z": [0.0] * 4, "sform_code": 1}, "zero or infinite length"),
])
def test_nifti_hostile_headers_are_typed_errors(tmp_path, fields, reason):
    path = nifti_with(tmp_path, "v.nii", **fields)
    for read in (read_nifti, inspect_path):
        with pytest.raises(MedfmReadError, match=reason):
            read(path)


def test_nifti2_affine_whose_voxel_size_overflows(tmp_path):
    affine = np.eye(4)
    affine[:2, 0] = 1e308  # finite entries, infinite column length
    nib.save(nib.Nifti2Image(np.zeros((2, 3, 4), dtype=np.int16), affine), tmp_path / "v.nii")
    with pytest.raises(CorruptFileError, match="zero or infinite length"):
        read_nifti(tmp_path / "v.nii")


def test_nifti_gzip_declaring_more_than_it_can_expand_to_is_refused_unread(tmp_path):
    path = nifti_with(tmp_path, "v.nii.gz", dim=[3, 1024, 1024, 100, 1, 1, 1, 1])  # 200 MiB in a ~1 KiB file
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match="cannot expand to that"):
            read_nifti(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024**2


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_extension_claiming_2_gib_is_refused_unread(tmp_path, name):
    path = nifti_with(tmp_path, "v.nii", vox_offset=4096.0)  # room for extensions before the data
    raw = bytearray(path.read_bytes())
    raw[348:360] = struct.pack("<4Bii", 1, 0, 0, 0, 2**31 - 16, 6)  # extension flag, then esize and ecode
    (tmp_path / name).write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match="header extension of 2147483632 bytes"):
            read_nifti(tmp_path / name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024**2


def test_nifti_gzip_with_a_damaged_deflate_stream(tmp_path):
    payload = bytearray((nifti_with(tmp_path, "v.nii.gz", shape=(32, 32, 32))).read_bytes())
    for offset in range(20, len(payload)):  # the first flip that breaks the deflate stream, not just its CRC
        damaged = bytearray(payload)
        damaged[offset] ^= 0xFF
        try:
            zlib.decompress(bytes(damaged), wbits=31)
        except zlib.error as err:
            if "incorrect" not in str(err):
                break
    (tmp_path / "d.nii.gz").write_bytes(bytes(damaged))
    for read in (read_nifti, inspect_path):
        with pytest.raises(CorruptFileError):
            read(tmp_path / "d.nii.gz")


def png_with_ihdr(tmp_path, width, height, idat_length=None):
    """A valid grey PNG, then its IHDR width/height (CRC fixed) or IDAT length field rewritten."""
    PILImage.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "g.png")
    data = bytearray((tmp_path / "g.png").read_bytes())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    if idat_length is not None:
        struct.pack_into(">I", data, data.index(b"IDAT") - 4, idat_length)
    (tmp_path / "h.png").write_bytes(bytes(data))
    return tmp_path / "h.png"


@pytest.mark.parametrize(("width", "height"), [(65535, 65535), (2**32 - 1, 8), (10_000, 10_000)])
def test_png_declaring_absurd_sizes_is_refused_before_decoding(tmp_path, width, height):
    for read in (read_photo, inspect_path):
        with pytest.raises(CorruptFileError, match=f"{width}x{height}|decompression-bomb"):
            read(png_with_ihdr(tmp_path, width, height))


def test_png_chunk_length_is_never_allocated(tmp_path):
    path = png_with_ihdr(tmp_path, 8, 8, idat_length=2**31 - 16)  # Pillow reads the chunk's "rest" at the end
    tracemalloc.start()
    try:
        image = read_photo(path)  # the pixels are all there, so they decode
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.array.shape == (1, 8, 8) and peak < 64 * 1024**2
