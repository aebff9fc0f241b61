"""OCT vendor readers: real Heidelberg .vol files, generated .vol/.img files, and the oct-converter glue."""

from __future__ import annotations

import json
import struct
import sys
import tracemalloc
import types

import numpy as np
import pytest

from medfm.io import (
    CorruptFileError,
    EmptyFileError,
    UnsupportedFormatError,
    detect_format,
    format_inspection,
    inspect_path,
    oct_vendor,
    read_heidelberg_vol,
    read_heidelberg_vol_slo,
    read_oct_vendor,
    read_zeiss_img,
)

FLT_MAX = np.finfo(np.float32).max
SECRET_PATIENT_ID = "PAT-4711-XYZ"
SECRET_VISIT_ID = "VISIT-0815"

# (file, ScaleX mm, ScanPattern name) from realdata/MANIFEST.tsv rows oct/...
REAL_VOLS = [
    ("heidelberg_Willis_B_716_0_linescan.vol", 0.01182, "line"),
    ("heidelberg_Willis_B_716_2_circle.vol", 0.01472, "circle"),
]


def write_vol(path, bscans, slo, *, scale_x=0.0115, scale_z=0.0039, distance=0.12, bscan_hdr_size=256,
              version=b"HSF-OCT-103", size_override=None, bscan_magic=b"HSF-BS-103", scan_pattern=3,
              patient_id=SECRET_PATIENT_ID, visit_id=SECRET_VISIT_ID):
    """Write a Heidelberg .vol: 2048-byte header, SLO bytes, then per B-scan header + float32 (SizeZ, SizeX)."""
    n, size_z, size_x = bscans.shape
    if size_override is not None:
        n, size_z, size_x = size_override
    header = bytearray(2048)
    struct.pack_into("<12siii3dii2did4sQii", header, 0, version, size_x, n, size_z, scale_x, distance, scale_z,
                     slo.shape[1], slo.shape[0], 0.0114, 0.0114, 30, -1.5, b"OS", 131286184616218310,
                     scan_pattern, bscan_hdr_size)
    struct.pack_into("<16s16si21s3xdi24sd", header, 104, b"716.0", b"", 86, patient_id.encode(), 21000.0, 145,
                     visit_id.encode(), 40000.0)
    parts = [bytes(header), slo.astype(np.uint8).tobytes()]
    for bscan in bscans:
        bscan_header = bytearray(bscan_hdr_size)
        bscan_header[:len(bscan_magic)] = bscan_magic
        struct.pack_into("<i", bscan_header, 12, bscan_hdr_size)
        parts += [bytes(bscan_header), bscan.astype("<f4").tobytes()]
    parts.append(b"\x00" * 20)  # real exports carry trailing bytes after the last B-scan
    path.write_bytes(b"".join(parts))
    return path


@pytest.fixture
def vol_file(tmp_path):
    rng = np.random.default_rng(0)
    bscans = rng.random((3, 8, 16), dtype=np.float32)
    bscans[1, 2, 5] = FLT_MAX  # Heyex's invalid marker
    slo = (np.arange(12 * 10) % 256).reshape(10, 12)
    return write_vol(tmp_path / "scan.vol", bscans, slo), bscans, slo


# ------------------------------------------------------------------ real Heidelberg files


@pytest.mark.parametrize(("name", "scale_x", "pattern"), REAL_VOLS)
def test_real_vol_matches_manifest(realdata, name, scale_x, pattern):
    image = read_heidelberg_vol(realdata / "oct" / name)
    assert image.array.shape == (1, 1, 496, 768) and image.array.dtype == np.float32
    assert round(image.spacing[2], 5) == scale_x and round(image.spacing[1], 6) == 0.003872
    assert image.spacing[0] == image.spacing[2] and image.meta["slice_spacing_nominal"]  # Distance 0, one B-scan
    assert float(image.array.min()) == 0.0 and float(image.array.max()) == 1.0
    assert image.meta["invalid_voxels"] == 0 and image.meta["trailing_bytes"] == 132
    assert image.meta["format_version"] == "HSF-OCT-103" and image.meta["laterality"] == "OD"
    assert image.meta["scan_pattern"] == pattern and image.meta["slo_shape"] == [768, 768]
    assert image.meta["modality"] == "OPT" and image.meta["manufacturer"] == "Heidelberg Engineering"
    # scan-local affine: d → z, h (depth) → y, w (A-scan) → x
    assert image.affine[2, 0] == image.spacing[0] and image.affine[1, 1] == image.spacing[1]
    assert image.affine[0, 2] == image.spacing[2] and image.affine[0, 0] == 0.0
    slo = read_heidelberg_vol_slo(realdata / "oct" / name)
    assert slo.array.shape == (1, 768, 768) and 0 <= slo.array.min() < slo.array.max() <= 255


def test_real_vol_inspect_names_identifier_fields_only(realdata):
    path = realdata / "oct" / REAL_VOLS[0][0]
    info = inspect_path(path)
    assert info["format"] == "heidelberg_vol" and info["shape"] == [1, 1, 496, 768]
    assert info["value_range"] == [0.0, 1.0] and info["scan_pattern"] == "line" and info["laterality"] == "OD"
    assert "PatientID" in info["patient_identifier_fields"] and "DOB" in info["patient_identifier_fields"]
    dump = json.dumps(info) + format_inspection(info)
    assert "01234" not in dump  # the PatientID value stored in this sample file (bytes 140..161)
    assert "scan pattern: line" in format_inspection(info)


def test_real_empty_vol(realdata):
    path = realdata / "oct" / "heidelberg_invalid_empty.vol"
    for read in (read_heidelberg_vol, read_oct_vendor, inspect_path):
        with pytest.raises(EmptyFileError, match="empty"):
            read(path)


# ------------------------------------------------------------------ generated .vol files


def test_generated_vol_round_trip(vol_file):
    path, bscans, slo = vol_file
    image = read_heidelberg_vol(path)
    expected = bscans.copy()
    expected[1, 2, 5] = 0.0
    np.testing.assert_array_equal(image.array[0], expected)
    assert image.meta["invalid_voxels"] == 1 and image.meta["n_bscans"] == 3
    assert image.spacing == pytest.approx((0.12, 0.0039, 0.0115)) and not image.meta["slice_spacing_nominal"]
    assert image.meta["laterality"] == "OS" and image.meta["scan_pattern"] == "volume (ART)"
    assert image.meta["slo_shape"] == [10, 12] and image.meta["trailing_bytes"] == 20
    np.testing.assert_allclose(image.affine[:3, 0], [0, 0, 0.12])
    slo_image = read_heidelberg_vol_slo(path)
    np.testing.assert_array_equal(slo_image.array[0], slo)
    assert slo_image.spacing == pytest.approx((0.0114, 0.0114))
    assert read_oct_vendor(path).array.shape == (1, 3, 8, 16)


def test_generated_vol_identifiers_never_leak(vol_file):
    path, _, _ = vol_file
    info = inspect_path(path)
    dump = json.dumps(info) + format_inspection(info) + repr(read_heidelberg_vol(path).meta)
    dump += repr(read_heidelberg_vol_slo(path).meta)
    for secret in (SECRET_PATIENT_ID, SECRET_VISIT_ID, "716.0"):
        assert secret not in dump
    assert {"PatientID", "VisitID", "DOB", "ID", "PID", "VID"} <= set(info["patient_identifier_fields"])
    assert "ReferenceID" not in info["patient_identifier_fields"]  # written empty
    assert info["invalid_voxels"] == 1 and "invalid voxels (set to 0): 1" in format_inspection(info)


def test_single_bscan_without_distance_uses_nominal_thickness(tmp_path):
    path = write_vol(tmp_path / "line.vol", np.full((1, 4, 6), 0.5, np.float32), np.zeros((2, 2)), distance=0.0)
    image = read_heidelberg_vol(path)
    assert image.spacing[0] == pytest.approx(0.0115) and image.meta["slice_spacing_nominal"]
    assert "nominal" in image.meta["slice_spacing_note"]


def test_truncated_vol(vol_file, tmp_path):
    path, _, _ = vol_file
    cut = tmp_path / "cut.vol"
    cut.write_bytes(path.read_bytes()[:-200])  # loses the trailer and part of the last B-scan
    with pytest.raises(CorruptFileError, match="truncated") as err:
        read_heidelberg_vol(cut)
    assert str(cut) in str(err.value)
    header_only = tmp_path / "header_only.vol"
    header_only.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_heidelberg_vol(header_only)


@pytest.mark.parametrize(("sizes", "reason"), [
    ((100_000, 100_000, 1000), "cap"),  # 40 TB of float32 claimed
    ((100, 1000, 1000), "truncated"),  # under the cap, but far more than the file holds
    ((3, -8, 16), "SizeZ"),
    ((0, 8, 16), "NumBScans"),
])
def test_absurd_header_is_refused_before_allocating(tmp_path, sizes, reason):
    path = write_vol(tmp_path / "absurd.vol", np.zeros((1, 2, 2), np.float32), np.zeros((2, 2)),
                     size_override=sizes)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match=reason):
            read_heidelberg_vol(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # nothing sized from the header was allocated


def test_bad_bscan_magic(tmp_path):
    path = write_vol(tmp_path / "bad.vol", np.zeros((2, 4, 4), np.float32), np.zeros((2, 2)), bscan_magic=b"XXXXXXX")
    with pytest.raises(CorruptFileError, match="B-scan 0 .*magic"):
        read_heidelberg_vol(path)


def test_wrong_magic_or_version(tmp_path):
    other = tmp_path / "other.vol"
    other.write_bytes(b"NOT-A-VOL" + b"\x00" * 3000)
    with pytest.raises(UnsupportedFormatError, match="HSF-OCT"):
        read_heidelberg_vol(other)
    with pytest.raises(UnsupportedFormatError):
        inspect_path(other)  # detected as heidelberg_vol by extension; the reader says why it is not one
    future = write_vol(tmp_path / "v2.vol", np.zeros((1, 2, 2), np.float32), np.zeros((2, 2)), version=b"HSF-OCT-201")
    with pytest.raises(UnsupportedFormatError, match="HSF-OCT-201"):
        read_heidelberg_vol(future)


def test_detection_by_magic_then_extension(vol_file, tmp_path):
    path, _, _ = vol_file
    renamed = tmp_path / "export.bin"
    renamed.write_bytes(path.read_bytes())
    assert detect_format(renamed) == "heidelberg_vol"
    assert read_oct_vendor(renamed).array.shape == (1, 3, 8, 16)
    for suffix, fmt in ((".img", "zeiss_img"), (".e2e", "heidelberg_e2e"), (".FDS", "topcon_fds"),
                        (".fda", "topcon_fda")):
        (tmp_path / f"x{suffix}").write_bytes(b"\x01" * 64)
        assert detect_format(tmp_path / f"x{suffix}") == fmt


# ------------------------------------------------------------------ Zeiss Cirrus .img


def test_zeiss_img_cube_200x200(tmp_path):
    stored = (np.arange(200 * 1024 * 200, dtype=np.uint32) % 251).astype(np.uint8).reshape(200, 1024, 200)
    path = tmp_path / "cube_raw.img"
    stored.tofile(path)
    image = read_zeiss_img(path)
    assert image.array.shape == (1, 200, 1024, 200)
    assert image.spacing == pytest.approx((0.03, 2.0 / 1024, 0.03))
    assert image.meta["protocol"].startswith("Cube 200x200") and image.meta["spacing_nominal"]
    # each stored B-scan is rotated 180°: deepest row and last A-scan come first
    np.testing.assert_array_equal(image.array[0, 7], stored[7, ::-1, ::-1])
    assert inspect_path(path)["protocol"] == image.meta["protocol"]


def test_zeiss_img_layout_and_flip_on_small_protocol(tmp_path, monkeypatch):
    tiny = oct_vendor.CirrusProtocol("tiny", n_bscans=2, depth=3, n_ascans=4, field_mm=(1.0, 0.3, 2.0))
    monkeypatch.setattr(oct_vendor, "CIRRUS_PROTOCOLS", (tiny,))
    path = tmp_path / "tiny.img"
    np.arange(24, dtype=np.uint8).tofile(path)
    raw = read_zeiss_img(path, flip_bscans=False).array[0]
    np.testing.assert_array_equal(raw[1, 0], [12, 13, 14, 15])  # B-scan-major, A-scan fastest
    flipped = read_zeiss_img(path).array[0]
    np.testing.assert_array_equal(flipped[0, 0], [11, 10, 9, 8])
    assert read_zeiss_img(path).spacing == pytest.approx((0.5, 0.1, 0.5))


def test_zeiss_img_unknown_size_and_empty(tmp_path):
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"\x00" * 12345)
    with pytest.raises(UnsupportedFormatError, match="12345 bytes"):
        read_zeiss_img(odd)
    with pytest.raises(UnsupportedFormatError, match="12345 bytes"):
        read_oct_vendor(odd)
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFileError):
        read_zeiss_img(empty)


# ------------------------------------------------------------------ .e2e / .fds / .fda via oct-converter


class FakeOCTVolumeWithMetaData:
    """Mimics oct_converter.image_types.OCTVolumeWithMetaData 0.7.0's attributes."""

    def __init__(self, volume, pixel_spacing=None, laterality=None):
        self.volume = volume
        self.patient_id, self.first_name, self.surname = SECRET_PATIENT_ID, "Jane", "Doe"
        self.DOB, self.sex, self.acquisition_date = "1961-02-03", "F", "2020-01-01"
        self.laterality = laterality
        self.num_slices = len(volume)
        self.pixel_spacing = pixel_spacing
        self.metadata = {"patient_info": {"patient_id": SECRET_PATIENT_ID}}


def install_fake_oct_converter(monkeypatch, result):
    """Put an ``oct_converter`` package whose E2E/FDS/FDA readers return ``result`` into sys.modules."""

    class Reader:
        def __init__(self, filepath):
            self.filepath = filepath

        def read_oct_volume(self):
            if isinstance(result, Exception):
                raise result
            return result

    readers = types.ModuleType("oct_converter.readers")
    readers.E2E = readers.FDS = readers.FDA = Reader
    package = types.ModuleType("oct_converter")
    package.readers = readers
    monkeypatch.setitem(sys.modules, "oct_converter", package)
    monkeypatch.setitem(sys.modules, "oct_converter.readers", readers)


@pytest.fixture
def vendor_files(tmp_path):
    paths = {}
    for suffix in (".e2e", ".fds", ".fda"):
        paths[suffix] = tmp_path / f"scan{suffix}"
        paths[suffix].write_bytes(b"\x01" * 32)  # content is the fake reader's business
    return paths


def bscans(n=4, rows=6, cols=5):
    return [np.full((rows, cols), i, dtype=np.uint16) + np.arange(cols, dtype=np.uint16) for i in range(n)]


def test_topcon_spacing_order_and_no_identifiers(monkeypatch, vendor_files):
    # FDS/FDA pixel_spacing is [width (col), slice thickness, height (row)]
    install_fake_oct_converter(monkeypatch, FakeOCTVolumeWithMetaData(bscans(), [0.0117, 0.047, 0.0026], "R"))
    for suffix in (".fds", ".fda"):
        image = read_oct_vendor(vendor_files[suffix])
        assert image.array.shape == (1, 4, 6, 5) and image.array.dtype == np.float32
        np.testing.assert_array_equal(image.array[0, 2, 0], [2, 3, 4, 5, 6])
        assert image.spacing == pytest.approx((0.047, 0.0026, 0.0117))
        assert image.meta["laterality"] == "OD" and image.meta["manufacturer"] == "Topcon"
        assert image.meta["stored_dtype"] == "uint16"
        assert SECRET_PATIENT_ID not in repr(image.meta) and "Doe" not in repr(image.meta)
    info = inspect_path(vendor_files[".fds"])
    assert info["format"] == "topcon_fds" and info["shape"] == [1, 4, 6, 5]
    assert SECRET_PATIENT_ID not in json.dumps(info)


def test_e2e_several_volumes_and_spacing_order(monkeypatch, vendor_files):
    # E2E pixel_spacing is [scalex (col, reader default), scaley (row, from the file), slice (reader default)]
    volumes = [FakeOCTVolumeWithMetaData(bscans(2), [0.01, 0.0039, 0.05], "L"),
               FakeOCTVolumeWithMetaData(bscans(3, 7, 4), [0.01, 0.0039, 0.05], None)]
    install_fake_oct_converter(monkeypatch, volumes)
    with pytest.raises(UnsupportedFormatError, match="2 OCT volumes"):
        read_oct_vendor(vendor_files[".e2e"])
    first = read_oct_vendor(vendor_files[".e2e"], volume_index=0)
    assert first.array.shape == (1, 2, 6, 5) and first.meta["laterality"] == "OS"
    assert first.spacing == pytest.approx((0.05, 0.0039, 0.01))
    assert first.meta["spacing_nominal_axes"] == ["slice", "col"]
    second = read_oct_vendor(vendor_files[".e2e"], volume_index=1)
    assert second.array.shape == (1, 3, 7, 4) and second.meta["laterality"] is None
    with pytest.raises(UnsupportedFormatError, match="out of range"):
        read_oct_vendor(vendor_files[".e2e"], volume_index=2)


def test_missing_spacing_is_flagged(monkeypatch, vendor_files):
    install_fake_oct_converter(monkeypatch, FakeOCTVolumeWithMetaData(bscans(), None, "R"))
    image = read_oct_vendor(vendor_files[".fda"])
    assert image.spacing == (1.0, 1.0, 1.0) and image.meta["spacing_known"] is False


@pytest.mark.parametrize(("result", "error", "match"), [
    (ValueError("Could not find OCT header @IMG_SCAN_03"), CorruptFileError, "IMG_SCAN_03"),
    (FakeOCTVolumeWithMetaData([np.zeros((6, 5)), np.zeros((6, 4))], None), CorruptFileError, "differing"),
    (FakeOCTVolumeWithMetaData(bscans(), [0.01, -1.0, 0.003]), CorruptFileError, "pixel_spacing"),
    (FakeOCTVolumeWithMetaData([], None), EmptyFileError, "without B-scans"),
    ([], EmptyFileError, "no OCT volume"),
])
def test_converter_errors_are_typed(monkeypatch, vendor_files, result, error, match):
    install_fake_oct_converter(monkeypatch, result)
    with pytest.raises(error, match=match) as err:
        read_oct_vendor(vendor_files[".fds"])
    assert str(vendor_files[".fds"]) in str(err.value)


def test_without_oct_converter_the_error_names_the_extra(monkeypatch, vendor_files):
    monkeypatch.setitem(sys.modules, "oct_converter", None)  # makes the import fail whether or not it is installed
    with pytest.raises(UnsupportedFormatError, match=r"Heidelberg \.e2e needs the optional extra") as err:
        read_oct_vendor(vendor_files[".e2e"])
    assert "pip install 'medfm[oct-vendor]'" in str(err.value) and "opencv-python" in str(err.value)
    with pytest.raises(UnsupportedFormatError, match=r"Topcon \.fda .*medfm\[oct-vendor\]"):
        inspect_path(vendor_files[".fda"])
