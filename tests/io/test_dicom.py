"""DICOM images and series: files written here, and real ones from ../shared/realdata."""

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medfm.io import (
    CorruptFileError,
    EmptyFileError,
    UnsupportedFormatError,
    read_dicom_image,
    read_dicom_series,
    read_radiograph,
    to_metatensor,
)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

def write_dicom(path, pixels, *, sop_class=CT_IMAGE, photometric=None, signed=False, bits=16, **fields):
    """Write ``pixels`` ((H, W), (F, H, W), (H, W, 3) or (F, H, W, 3)) uncompressed; ``fields`` go in as is."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    colour = photometric in ("RGB", "YBR_FULL")
    frames = pixels.ndim == (4 if colour else 3)
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric or "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    for name, value in fields.items():
        setattr(ds, name, value)
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
    ds.PixelData = np.ascontiguousarray(pixels.astype(dtype)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_slice(path, value, position, orientation, *, series_uid, instance, spacing=(0.7, 0.8), shape=(6, 5), **kw):
    """One CT slice of constant ``value`` (stored as ``value + 1000`` with intercept -1000)."""
    pixels = np.full(shape, value + 1000, dtype=np.uint16)
    pixels[0, 0] += 1  # mark the first stored pixel, to check the row/column axes
    return write_dicom(
        path, pixels, Modality="CT", SeriesInstanceUID=series_uid, InstanceNumber=instance,
        ImagePositionPatient=[float(v) for v in position], ImageOrientationPatient=[float(v) for v in orientation],
        PixelSpacing=list(spacing), RescaleSlope=1.0, RescaleIntercept=-1000.0, PatientName="Doe^Jane", **kw,
    )


# Oblique plane: rows along (cos a, sin a, 0), columns tilted out of the axial plane.
_A, _B = np.deg2rad(20), np.deg2rad(15)
ROW = np.array([np.cos(_A), np.sin(_A), 0.0])
COL = np.array([-np.sin(_A) * np.cos(_B), np.cos(_A) * np.cos(_B), np.sin(_B)])
NORMAL = np.cross(ROW, COL)
ORIGIN = np.array([-120.0, 35.5, 410.0])
ORIENTATION = [*ROW, *COL]


def write_series(folder, offsets_mm, series_uid=None, seed=0, **kw):
    """Slices at ``ORIGIN + offset * NORMAL``, value = index in ``offsets_mm``; names/instances shuffled."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(seed)
    names = rng.permutation(len(offsets_mm))
    instances = rng.permutation(len(offsets_mm)) + 1
    for index, offset in enumerate(offsets_mm):
        write_slice(folder / f"img{names[index]:03d}.dcm", index * 10, ORIGIN + offset * NORMAL, ORIENTATION,
                    series_uid=series_uid, instance=int(instances[index]), **kw)
    return folder


def test_series_sorted_along_normal_with_exact_affine(tmp_path):
    offsets = [0.0, 2.5, 5.0, 7.5, 10.0, 12.5]
    image = read_dicom_series(write_series(tmp_path / "s", offsets, seed=3))
    assert image.array.shape == (1, 6, 6, 5) and image.array.dtype == np.float32
    assert [image.array[0, k, 3, 3] for k in range(6)] == [k * 10 for k in range(6)]  # rescale applied
    assert image.array[0, 0, 0, 0] == 1 and image.array[0, 0, 5, 4] == 0
    assert image.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert image.meta["slice_warnings"] == []
    for k, h, w in [(0, 0, 0), (3, 5, 4), (5, 2, 1)]:
        expected = ORIGIN + offsets[k] * NORMAL + h * 0.7 * COL + w * 0.8 * ROW
        assert np.allclose(image.affine @ [k, h, w, 1], [*expected, 1], atol=1e-6)


def test_series_from_explicit_paths_and_gap_warning(tmp_path):
    folder = write_series(tmp_path / "s", [0.0, 1.0, 2.0, 4.0, 5.0])
    image = read_dicom_series(sorted(folder.glob("*.dcm")))
    assert image.array.shape[1] == 5 and image.spacing[0] == pytest.approx(1.0)
    assert len(image.meta["slice_warnings"]) == 1 and "gap of 2.000 mm" in image.meta["slice_warnings"][0]
    assert [image.array[0, k, 3, 3] for k in range(5)] == [0, 10, 20, 30, 40]


def test_duplicate_positions_raise_unless_allowed(tmp_path):
    folder = write_series(tmp_path / "s", [0.0, 1.0, 1.0, 2.0])
    with pytest.raises(CorruptFileError, match="duplicate slice position"):
        read_dicom_series(folder)
    image = read_dicom_series(folder, allow_duplicates=True)
    assert image.array.shape[1] == 3 and "duplicate" in image.meta["slice_warnings"][0]


def test_several_series_need_a_choice(tmp_path):
    uid_a, uid_b = generate_uid(), generate_uid()
    write_series(tmp_path / "s", [0.0, 1.0], series_uid=uid_a)
    write_slice(tmp_path / "s" / "other.dcm", 0, ORIGIN, ORIENTATION, series_uid=uid_b, instance=1)
    with pytest.raises(UnsupportedFormatError) as err:
        read_dicom_series(tmp_path / "s")
    assert uid_a in str(err.value) and uid_b in str(err.value)
    assert read_dicom_series(tmp_path / "s", series_uid=uid_a).array.shape[1] == 2


def test_inconsistent_orientation_or_spacing_raise(tmp_path):
    uid = generate_uid()
    write_series(tmp_path / "a", [0.0, 1.0], series_uid=uid)
    write_slice(tmp_path / "a" / "z.dcm", 0, ORIGIN + 2 * NORMAL, [1, 0, 0, 0, 1, 0], series_uid=uid, instance=9)
    with pytest.raises(CorruptFileError, match="ImageOrientationPatient differs"):
        read_dicom_series(tmp_path / "a")
    write_series(tmp_path / "b", [0.0, 1.0], series_uid=uid)
    write_slice(tmp_path / "b" / "z.dcm", 0, ORIGIN + 2 * NORMAL, ORIENTATION, series_uid=uid, instance=9,
                spacing=(0.5, 0.5))
    with pytest.raises(CorruptFileError, match="PixelSpacing differs"):
        read_dicom_series(tmp_path / "b")


def test_single_images_bit_depths_and_rescale(tmp_path):
    signed = np.array([[-1000, 0], [500, 32767]], dtype=np.int16)
    image = read_dicom_image(write_dicom(tmp_path / "s.dcm", signed, signed=True, RescaleSlope=0.5,
                                         RescaleIntercept=10.0, PixelSpacing=[0.3, 0.4]))
    assert image.array.shape == (1, 2, 2) and np.allclose(image.array[0], signed * 0.5 + 10)
    assert image.spacing == (0.3, 0.4) and image.meta["stored_dtype"] == "int16"
    assert np.allclose(image.affine @ [1, 1, 0, 1], [0.4, 0.3, 0, 1])  # (h, w) -> x = w*col, y = h*row
    big = np.array([[0, 4_000_000_000]], dtype=np.uint32)
    assert read_dicom_image(write_dicom(tmp_path / "u32.dcm", big, bits=32)).array[0, 0, 1] == pytest.approx(4e9)
    u8 = np.array([[0, 255]], dtype=np.uint8)
    mono1 = read_dicom_image(write_dicom(tmp_path / "m1.dcm", u8, bits=8, photometric="MONOCHROME1"))
    assert mono1.array[0].tolist() == [[255, 0]] and mono1.meta["spacing_known"] is False


def test_ophthalmic_photography_colour_and_tomography_volume(tmp_path):
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0], rgb[1, 2] = 200, (10, 20, 30)
    photo = read_dicom_image(write_dicom(tmp_path / "op.dcm", rgb, bits=8, photometric="RGB", Modality="OP",
                                         sop_class="1.2.840.10008.5.1.4.1.1.77.1.5.1"))
    assert photo.array.shape == (3, 4, 5) and photo.array[:, 1, 2].tolist() == [10, 20, 30]
    assert photo.meta["object_kind"] == "ophthalmic_photography"
    ybr = np.zeros((2, 2, 3), dtype=np.uint8)
    ybr[...] = (128, 128, 128)  # YBR_FULL mid-grey is RGB (128, 128, 128)
    converted = read_dicom_image(write_dicom(tmp_path / "ybr.dcm", ybr, bits=8, photometric="YBR_FULL"))
    assert np.allclose(converted.array, 128, atol=1)

    scans = np.arange(3 * 4 * 6, dtype=np.uint16).reshape(3, 4, 6)
    shared = pydicom.Dataset()
    measures = pydicom.Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.0039, 0.0117], 0.12
    shared.PixelMeasuresSequence = pydicom.Sequence([measures])
    oct_path = write_dicom(tmp_path / "oct.dcm", scans, Modality="OPT", sop_class="1.2.840.10008.5.1.4.1.1.77.1.5.4",
                           SharedFunctionalGroupsSequence=pydicom.Sequence([shared]))
    volume = read_dicom_image(oct_path)
    assert volume.array.shape == (1, 3, 4, 6) and np.array_equal(volume.array[0], scans)
    assert volume.spacing == pytest.approx((0.12, 0.0039, 0.0117)) and volume.meta["frames_are"] == "slices"
    assert volume.meta["object_kind"] == "ophthalmic_tomography"
    tensor = to_metatensor(volume)
    # w runs along +x (L in LPS), i.e. -x in MONAI's RAS
    assert tuple(tensor.shape) == (1, 3, 4, 6) and np.isclose(tensor.affine[0, 2].item(), -0.0117)


def test_broken_files_raise_typed_errors(tmp_path):
    path = write_dicom(tmp_path / "t.dcm", np.ones((64, 64), dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(CorruptFileError, match="pixel data could not be decoded") as err:
        read_dicom_image(path)
    assert str(path) in str(err.value)
    header_cut = tmp_path / "h.dcm"
    header_cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptFileError):
        read_dicom_image(header_cut)
    (tmp_path / "e.dcm").write_bytes(b"")
    with pytest.raises(EmptyFileError):
        read_dicom_image(tmp_path / "e.dcm")
    (tmp_path / "p.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(UnsupportedFormatError, match="PNG image"):
        read_dicom_image(tmp_path / "p.dcm")


def test_real_series(realdata):
    lung = read_dicom_series(realdata / "dicom_ct_series/lungmask_ct_2slices")
    assert lung.array.shape == (1, 2, 512, 512) and lung.spacing[1:] == (0.625, 0.625)
    assert np.diff(lung.meta["slice_positions_mm"]).min() > 0 and lung.array.min() >= -2048
    folder = realdata / "dicom_ct_series/totalseg_siemens_ct_j2k"
    ct = read_dicom_series(folder)
    assert ct.array.shape == (1, 20, 512, 512) and ct.meta["manufacturer"] == "SIEMENS"
    assert ct.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))  # step 2 mm although SliceThickness is 3
    assert np.allclose(np.diff(ct.meta["slice_positions_mm"]), 2.0) and ct.meta["slice_warnings"] == []
    first = min((pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()),
                key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert np.allclose(ct.affine[:3, 3], [float(v) for v in first.ImagePositionPatient])
    assert -1100 < ct.array.min() and ct.array.max() < 4000  # Hounsfield units, not raw


def test_real_transfer_syntaxes_decode_to_the_same_image(realdata):
    files = sorted((realdata / "dicom_misc/dcm_qa_ts").glob("*.dcm"))
    reference = read_dicom_image(files[0])  # 1.dcm: explicit VR little endian
    syntaxes = set()
    for path in files[1:]:
        image = read_dicom_image(path)
        syntaxes.add(image.meta["transfer_syntax_uid"])
        assert np.array_equal(image.array, reference.array), path.name
    expected = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                "1.2.840.10008.1.2.4.90"}
    assert expected <= syntaxes


@pytest.mark.parametrize(("name", "shape", "photometric"), [
    ("fodicom_D_CLUNIE_CT1_RLE_FRAGS.dcm", (1, 512, 512), "MONOCHROME2"),
    ("fodicom_CT1_J2KI", (1, 512, 512), "MONOCHROME2"),
    ("pydicom_MR_small_bigendian.dcm", (1, 64, 64), "MONOCHROME2"),
    ("fodicom_JPEGwithIcon.dcm", (3, 600, 600), "YBR_FULL_422"),
    ("pydicom_GDCMJ2K_TextGBR.dcm", (3, 400, 400), "YBR_RCT"),
    ("fodicom_mr_brucker.dcm", (1, 4, 128, 256), "MONOCHROME2"),
    ("pydicom_rtdose.dcm", (1, 15, 10, 10), "MONOCHROME2"),
])
def test_real_fo_dicom_and_pydicom_samples(realdata, name, shape, photometric):
    image = read_dicom_image(realdata / "dicom_misc" / name)
    assert image.array.shape == shape and image.meta["photometric"] == photometric
    assert np.isfinite(image.array).all() and image.array.max() > image.array.min()


def test_real_big_endian_and_dose_scaling_values(realdata):
    big = pydicom.dcmread(realdata / "dicom_misc/pydicom_MR_small_bigendian.dcm")
    assert np.array_equal(read_dicom_image(realdata / "dicom_misc/pydicom_MR_small_bigendian.dcm").array[0],
                          big.pixel_array.astype(np.float32))
    assert big.pixel_array.max() < 4096  # not byte-swapped
    dose = pydicom.dcmread(realdata / "dicom_misc/pydicom_rtdose.dcm")
    image = read_dicom_image(realdata / "dicom_misc/pydicom_rtdose.dcm")
    assert np.allclose(image.array[0], dose.pixel_array * float(dose.DoseGridScaling), rtol=1e-6)


@pytest.mark.parametrize("name", ["pydicom_MR_truncated.dcm", "fodicom_GH1376.dcm", "fodicom_GH1146.dcm",
                                  "dicomecgplot_anonymous_ecg.dcm"])
def test_real_corrupt_or_pixel_less_files(realdata, name):
    with pytest.raises(CorruptFileError):
        read_dicom_image(realdata / "dicom_misc" / name)


def test_real_monochrome1_matches_radiograph_reader(realdata):
    path = realdata / "cxr/txv_Fake_MONOHR1.dcm"
    assert np.array_equal(read_dicom_image(path).array, read_radiograph(path).array)


# Hostile headers (found by evaluation/bench/fuzz_readers.py): a typed error naming the field, never
# a ValueError/TypeError/AttributeError from deep inside, never an allocation of the declared size.
def rewrite(path, monkeypatch, **elements):
    """Rewrite ``path`` with each keyword set to ``(VR, value)`` (a wrong VR is fine), unvalidated."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    ds = pydicom.dcmread(path)
    for keyword, (vr, value) in elements.items():
        tag = tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, vr, value)
    ds.save_as(path)
    return path


@pytest.mark.parametrize(("keyword", "vr", "value"), [
    ("Rows", "LO", "abc"), ("NumberOfFrames", "LO", "abc"), ("BitsAllocated", "CS", "SIXTEEN"),
    ("PixelSpacing", "LO", "abc\\def"), ("ImagePositionPatient", "LO", "a\\b\\c"), ("RescaleSlope", "LO", "slope"),
    ("PerFrameFunctionalGroupsSequence", "LO", "groups"), ("RescaleSlope", "DS", "nan"),
    ("ImageOrientationPatient", "DS", ["nan", 0, 0, 0, 1, 0]), ("DoseGridScaling", "DS", "nan"),
    ("ImageOrientationPatient", "DS", [0, 0, 0, 0, 0, 0]),
])
def test_header_values_of_a_wrong_type_or_not_finite_are_typed_errors(tmp_path, monkeypatch, keyword, vr, value):
    from medfm.io import inspect_path

    path = rewrite(write_dicom(tmp_path / "x.dcm", np.ones((4, 4), np.uint16)), monkeypatch, **{keyword: (vr, value)})
    for read in (read_dicom_image, inspect_path):
        with pytest.raises(CorruptFileError, match=keyword):
            read(path)


def test_radiograph_reader_types_its_header_errors(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "x.dcm", np.ones((4, 4), np.uint16), PixelSpacing=[0.2, 0.2])
    with pytest.raises(CorruptFileError, match="SamplesPerPixel"):
        read_radiograph(rewrite(path, monkeypatch, SamplesPerPixel=("LO", "x")))
    path = write_dicom(tmp_path / "y.dcm", np.ones((4, 4), np.uint16), PixelSpacing=["nan", "1"])
    with pytest.raises(CorruptFileError, match="PixelSpacing is not finite"):
        read_radiograph(path)


@pytest.mark.parametrize(("fields", "reason"), [
    ({"NumberOfFrames": ("US", 65535)}, "PixelData holds 32 bytes"),
    ({"Rows": ("US", 65535), "Columns": ("US", 65535), "NumberOfFrames": ("IS", "10000")}, "cap"),
    ({"Rows": ("US", 0)}, "Rows is 0"),
    ({"BitsAllocated": ("US", 64)}, "PixelData holds 32 bytes"),
])
def test_absurd_sizes_are_refused_before_anything_is_decoded(tmp_path, monkeypatch, fields, reason):
    path = rewrite(write_dicom(tmp_path / "x.dcm", np.ones((4, 4), np.uint16)), monkeypatch, **fields)
    with pytest.raises(CorruptFileError, match=reason) as err:
        read_dicom_image(path)
    assert not isinstance(err.value.__context__, MemoryError)


def test_compressed_frames_without_fragments_are_refused(tmp_path, monkeypatch):
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(write_dicom(tmp_path / "x.dcm", np.ones((8, 8), np.uint16)))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(tmp_path / "rle.dcm")
    path = rewrite(tmp_path / "rle.dcm", monkeypatch, NumberOfFrames=("IS", "500"))
    with pytest.raises(CorruptFileError, match="declares 500 frames but the encapsulated PixelData holds 2 items"):
        read_dicom_image(path)


def test_a_corrupt_length_field_is_never_allocated(tmp_path):
    import tracemalloc

    path = write_dicom(tmp_path / "x.dcm", np.ones((64, 64), np.uint16), ICCProfile=bytes(16))
    data = bytearray(path.read_bytes())
    at = data.index(b"\x28\x00\x00\x20OB\x00\x00") + 8  # ICCProfile's 4-byte length, before PixelData
    data[at:at + 4] = (0x7FFFFFF0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError):
            read_dicom_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024**2


def test_parser_failures_are_typed_errors(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    pixels = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    unknown_vr = write_dicom(tmp_path / "vr.dcm", pixels, PixelSpacing=[0.2, 0.2])
    unknown_vr.write_bytes(unknown_vr.read_bytes().replace(b"\x02\x00\x10\x00UI", b"\x02\x00\x10\x00U\xbb"))
    odd_length = write_dicom(tmp_path / "odd.dcm", pixels, PixelSpacing=[0.2, 0.2])  # 3 bytes for a US value
    odd_length.write_bytes(odd_length.read_bytes().replace(b"\x28\x00\x02\x00US\x02\x00\x01\x00",
                                                           b"\x28\x00\x02\x00US\x03\x00\x01\x00\x00"))
    ds = pydicom.dcmread(write_dicom(tmp_path / "d.dcm", pixels, PixelSpacing=[0.2, 0.2]))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "d.dcm")
    deflated = tmp_path / "d.dcm"
    deflated.write_bytes(deflated.read_bytes()[:-500])
    for path in (unknown_vr, odd_length, deflated):
        for read in (read_dicom_image, read_radiograph):
            with pytest.raises(CorruptFileError, match="header is corrupt or truncated"):
                read(path)


def test_palette_colour_without_a_palette_and_per_frame_groups_of_the_wrong_count(tmp_path):
    from pydicom.sequence import Sequence

    path = write_dicom(tmp_path / "p.dcm", np.ones((4, 4), np.uint8), bits=8, photometric="PALETTE COLOR")
    with pytest.raises(CorruptFileError, match="PALETTE COLOR without a usable palette"):
        read_dicom_image(path)
    groups = Sequence([Dataset()])
    path = write_dicom(tmp_path / "f.dcm", np.ones((3, 4, 4), np.uint16), PerFrameFunctionalGroupsSequence=groups)
    with pytest.raises(CorruptFileError, match="PerFrameFunctionalGroupsSequence has 1 items for 3 frames"):
        read_dicom_image(path)


def test_series_slice_with_a_position_that_is_not_finite(tmp_path, monkeypatch):
    from medfm.io import inspect_path

    folder = write_series(tmp_path / "s", [0.0, 1.0, 2.0])
    rewrite(sorted(folder.iterdir())[1], monkeypatch, ImagePositionPatient=("DS", ["nan", "0", "0"]))
    for read in (read_dicom_series, inspect_path):
        with pytest.raises(CorruptFileError, match="ImagePositionPatient is not finite"):
            read(folder)


def test_rle_decoder_panic_is_a_typed_error(realdata, tmp_path):
    """One flipped byte in an RLE segment makes pylibjpeg-rle panic (a pyo3 BaseException, not an Exception)."""
    data = bytearray((realdata / "dicom_misc/fodicom_D_CLUNIE_CT1_RLE_FRAGS.dcm").read_bytes())
    data[53728] = 198
    (tmp_path / "rle.dcm").write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="pixel data could not be decoded"):
        read_dicom_image(tmp_path / "rle.dcm")
