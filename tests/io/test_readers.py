"""Readers on files the tests write, and on real files from ../shared/realdata."""

import numpy as np
import pydicom
import pytest
import wfdb
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medfm.errors import MedfmReadError
from medfm.io import read_ecg, read_radiograph, read_report
from medfm.keys import STANDARD_LEADS


def write_radiograph(path, pixels, photometric="MONOCHROME2", slope=1.0, intercept=0.0, spacing=(0.5, 0.5)):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if spacing:
        ds.PixelSpacing = list(spacing)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_rescale_and_monochrome1_inversion(tmp_path):
    pixels = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100
    mono2 = read_radiograph(write_radiograph(tmp_path / "a.dcm", pixels, slope=2.0, intercept=-10))
    assert np.allclose(mono2.array[0], pixels * 2.0 - 10)
    assert mono2.spacing == (0.5, 0.5)
    mono1 = read_radiograph(write_radiograph(tmp_path / "b.dcm", pixels, photometric="MONOCHROME1"))
    assert mono1.array[0, 0, 0] == pixels.max() and mono1.array[0, -1, -1] == pixels.min()


def test_missing_spacing_and_truncated_pixels_are_errors(tmp_path):
    pixels = np.ones((4, 4), dtype=np.uint16)
    with pytest.raises(MedfmReadError, match="PixelSpacing"):
        read_radiograph(write_radiograph(tmp_path / "a.dcm", pixels, spacing=None))
    path = write_radiograph(tmp_path / "b.dcm", np.ones((64, 64), dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(MedfmReadError) as err:
        read_radiograph(path)
    assert str(path) in str(err.value)


def test_not_dicom(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"hello")
    with pytest.raises(MedfmReadError, match="not a readable DICOM"):
        read_radiograph(path)


def test_real_cxr_monochrome1_is_the_inverse_of_monochrome2(realdata):
    mono2 = read_radiograph(next((realdata / "cxr").glob("txv_siim_*.dcm")))
    mono1 = read_radiograph(realdata / "cxr/txv_Fake_MONOHR1.dcm")
    assert mono2.array.shape == (1, 1024, 1024) and mono2.spacing == (0.168, 0.168)
    assert np.corrcoef(mono1.array.ravel(), mono2.array.ravel())[0, 1] < -0.999


def test_ecg_leads_are_reordered_by_name_and_scaled_to_mv(tmp_path):
    fs, n = 250, 500
    t = np.arange(n) / fs
    names = ["V1", "II", "I"]
    signals = np.stack([np.sin(2 * np.pi * (k + 1) * t) for k in range(3)], axis=1)
    wfdb.wrsamp("rec", fs=fs, units=["uV", "mV", "mV"], sig_name=names, p_signal=signals * [1000, 1, 1],
                fmt=["16"] * 3, adc_gain=[10, 1000, 1000], baseline=[0, 0, 0], write_dir=str(tmp_path))
    record = read_ecg(tmp_path / "rec")
    assert record.fs == fs and record.signal.shape == (12, n)
    assert record.lead_mask.tolist() == [name in names for name in STANDARD_LEADS]
    assert np.allclose(record.signal[STANDARD_LEADS.index("V1")], signals[:, 0], atol=0.002)
    assert np.allclose(record.signal[STANDARD_LEADS.index("I")], signals[:, 2], atol=0.002)
    assert not record.signal[STANDARD_LEADS.index("aVR")].any()


def test_real_ptb_record_with_lowercase_lead_names(realdata):
    record = read_ecg(realdata / "ecg_wfdb/ptbdb_s0010_re/s0010_re")
    assert record.fs == 1000 and record.lead_mask.all() and record.signal.shape == (12, 38400)
    assert 0.2 < np.abs(record.signal).max() < 10  # millivolts, not microvolts


def test_ecg_without_standard_leads_and_missing_header(realdata, tmp_path):
    with pytest.raises(MedfmReadError, match="no standard ECG lead"):
        read_ecg(realdata / "ecg_wfdb/test01_00s/test01_00s")
    with pytest.raises(MedfmReadError, match="header not found"):
        read_ecg(tmp_path / "absent")


def test_report_whitespace_and_errors(tmp_path):
    (tmp_path / "r.txt").write_text("FINDINGS:\n  Heart  normal.\n\n")
    assert read_report(tmp_path / "r.txt") == "FINDINGS: Heart normal."
    (tmp_path / "e.txt").write_text("   \n")
    with pytest.raises(MedfmReadError, match="empty"):
        read_report(tmp_path / "e.txt")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(MedfmReadError, match="UTF-8"):
        read_report(tmp_path / "b.txt")


def test_mit_bih_modified_lead_ii_is_read_as_lead_ii(realdata):
    record = read_ecg(realdata / "ecg_wfdb/mitdb_100/100")
    assert record.fs == 360
    assert [STANDARD_LEADS[i] for i in np.flatnonzero(record.lead_mask)] == ["II", "V5"]


# Hostile WFDB headers (found by evaluation/bench/fuzz_readers.py): refused before wfdb allocates
# what they declare, with a typed error naming the header.
def write_12_lead_record(folder):
    folder.mkdir(parents=True, exist_ok=True)
    signals = np.stack([np.sin(np.arange(250) / (k + 2)) for k in range(12)], axis=1)
    wfdb.wrsamp("rec", fs=250, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=signals, fmt=["16"] * 12,
                adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    return folder / "rec"


def edit_header(record, record_field=None, signal_field=None, extra_signal_lines=False):
    """Set field ``(index, value)`` of the record line and/or of every signal line."""
    header = record.with_name("rec.hea")
    lines = header.read_text().splitlines()
    if extra_signal_lines:  # every signal listed twice: the data hold half the leads the header declares
        lines += lines[1:]
        record_field = (1, str(2 * (len(lines) - 1) // 2))
    for index in range(len(lines)):
        fields = lines[index].split(" ")
        change = record_field if index == 0 else signal_field
        if change is not None:
            fields[change[0]] = change[1]
        lines[index] = " ".join(fields)
    header.write_text("\n".join(lines) + "\n")
    return record


@pytest.mark.parametrize(("edit", "reason"), [
    ({"record_field": (2, "0")}, "sampling frequency 0"),
    ({"record_field": (2, "nan")}, "sampling frequency nan"),
    ({"record_field": (1, "100000000")}, "declares 100000000 signals but describes 12"),
    ({"signal_field": (1, "16x100000")}, "header declares 250 samples"),
    ({"extra_signal_lines": True}, "header declares 250 samples per signal"),
    ({"record_field": (2, "abc")}, "sampling frequency 'abc'"),
    # Fields wfdb misparses without error: fs "1e300" is read as 1 Hz, a negative length as none.
    ({"record_field": (2, "1e300")}, "'1e300': not a WFDB number \\(wfdb reads it as 1 Hz\\)"),
    ({"record_field": (3, "-250")}, "signal length '-250'"),
    ({"record_field": (1, "0")}, "declares 0 signals but describes 12"),
    # ADC gains wfdb replaces by 200 per mV without a word (0 is WFDB's "uncalibrated"), or reads as infinity.
    ({"signal_field": (2, "0/mV")}, "signal 1 \\(rec.dat\\): ADC gain '0': uncalibrated"),
    ({"signal_field": (2, "nan/mV")}, "ADC gain 'nan': not a finite number"),
    ({"signal_field": (2, "1e400/mV")}, "ADC gain '1e400': not a finite number"),
])
def test_hostile_wfdb_headers_are_refused(tmp_path, edit, reason):
    from medfm.io import inspect_path

    record = edit_header(write_12_lead_record(tmp_path / "record"), **edit)
    for read in (read_ecg, lambda path: inspect_path(path.with_name("rec.hea"))):
        with pytest.raises(MedfmReadError, match=reason) as err:
            read(record)
        assert not isinstance(err.value.__context__, MemoryError)


def test_wfdb_header_listing_fewer_leads_than_its_data_is_refused(tmp_path):
    # Six of the twelve lead lines deleted: wfdb itself reads the interleaved data as six scrambled leads.
    record = write_12_lead_record(tmp_path / "record")
    header = record.with_name("rec.hea")
    lines = header.read_text().splitlines()
    header.write_text("\n".join([lines[0].replace(" 12 ", " 6 ", 1), *lines[1:7]]) + "\n")
    assert wfdb.rdrecord(str(record)).p_signal.shape == (250, 6)  # the silent misreading this check prevents
    with pytest.raises(MedfmReadError, match=r"rec.hea.*6 signal\(s\) of 250 samples in rec.dat.*hold exactly 12"):
        read_ecg(record)


def test_wfdb_signal_file_with_a_padded_last_block_still_reads(tmp_path):
    record = write_12_lead_record(tmp_path / "record")
    with record.with_name("rec.dat").open("ab") as data:
        data.write(b"\0" * 512)
    assert read_ecg(record).signal.shape == (12, 250)


def test_wfdb_signals_without_names_are_not_a_crash(tmp_path):
    (tmp_path / "rec.hea").write_text("rec 1 250 4\nrec.dat 16 200/mV\n")
    np.zeros(4, dtype="<i2").tofile(tmp_path / "rec.dat")
    with pytest.raises(MedfmReadError, match="no standard ECG lead"):
        read_ecg(tmp_path / "rec")
