"""inspect_path / format_inspection: content-based detection, no identifier values leak."""

import json
import shutil

import numpy as np
import pytest
from pydicom.uid import generate_uid

from medfm.io import EmptyFileError, UnsupportedFormatError, detect_format, format_inspection, inspect_path
from tests.io.test_dicom import write_dicom, write_slice

SECRETS = {"PatientName": "Doe^Jane", "PatientID": "MRN-7731", "PatientBirthDate": "19610203",
           "AccessionNumber": "ACC99881", "InstitutionName": "St Elsewhere Hospital"}


def test_dicom_identifier_names_reported_values_never(tmp_path):
    path = write_dicom(tmp_path / "noext", np.arange(12, dtype=np.uint16).reshape(3, 4), Modality="CR",
                       Manufacturer="ACME", PixelSpacing=[0.2, 0.2], RescaleSlope=2.0, RescaleIntercept=1.0,
                       **SECRETS)
    info = inspect_path(path)
    dump = json.dumps(info) + format_inspection(info)
    for name, value in SECRETS.items():
        assert value not in dump and value.replace("^", " ") not in dump
        assert name in info["patient_identifier_fields"]
    assert info["format"] == "dicom" and info["modality"] == "CR" and info["manufacturer"] == "ACME"
    assert info["shape"] == [1, 3, 4] and info["spacing"] == [0.2, 0.2] and info["stored_dtype"] == "uint16"
    assert info["value_range"] == [1.0, 23.0]


def test_series_folder(tmp_path):
    uid = generate_uid()
    for k in range(3):
        write_slice(tmp_path / f"{k}.dcm", k, (0, 0, 2.0 * k), [1, 0, 0, 0, 1, 0], series_uid=uid, instance=3 - k)
    info = inspect_path(tmp_path)
    assert info["format"] == "dicom_series" and info["shape"] == [1, 3, 6, 5]
    assert info["spacing"] == [2.0, 0.7, 0.8] and info["patient_identifier_fields"] == ["PatientName"]
    assert "Doe" not in json.dumps(info)


def test_detection_by_content_then_extension(tmp_path, realdata):
    shutil.copy(realdata / "cxr/txv_00000001_000.png", tmp_path / "image.dcm")
    assert detect_format(tmp_path / "image.dcm") == "png"
    (tmp_path / "x.bin").write_bytes(b"\x00\x01 nothing known here" * 30)
    with pytest.raises(UnsupportedFormatError):
        inspect_path(tmp_path / "x.bin")
    (tmp_path / "e.nii").write_bytes(b"")
    with pytest.raises(EmptyFileError):
        inspect_path(tmp_path / "e.nii")


def test_real_wfdb(realdata):
    for path in (realdata / "ecg_wfdb/ptbdb_s0010_re/s0010_re.hea", realdata / "ecg_wfdb/ptbdb_s0010_re/s0010_re"):
        info = inspect_path(path)
        assert info["format"] == "wfdb" and info["sampling_rate_hz"] == 1000 and info["duration_s"] == 38.4
        assert len(info["lead_names"]) == 15 and len(info["standard_leads_present"]) == 12
    json.dumps(info)
    assert "sampling rate (Hz): 1000.0" in format_inspection(info)


def test_real_nifti_png_and_compressed_dicom(realdata):
    nifti = inspect_path(realdata / "nifti/nibabel_anatomical.nii")
    assert nifti["format"] == "nifti" and nifti["shape"] == [1, 25, 41, 33] and nifti["stored_dtype"] == ">i2"
    assert nifti["value_range"] == [-610.0, 30393.0]
    png = inspect_path(realdata / "cxr/txv_00000001_000.png")
    assert png["format"] == "png" and png["shape"] == [1, 512, 512] and png["spacing_known"] is False
    assert "placeholder" in format_inspection(png)
    cxr = inspect_path(realdata / "cxr/txv_Fake_MONOHR1.dcm")
    assert cxr["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.50" and cxr["photometric"] == "MONOCHROME1"
    assert set(cxr["patient_identifier_fields"]) >= {"PatientName", "PatientID"}
    for text in (json.dumps(nifti), json.dumps(png), json.dumps(cxr)):
        assert text


def test_real_heidelberg_vol_is_read_and_empty_vol_is_empty(realdata):
    # .vol is read since medfm.io.oct_vendor exists (details in tests/io/test_oct_vendor.py)
    info = inspect_path(realdata / "oct/heidelberg_Willis_B_716_0_linescan.vol")
    assert info["format"] == "heidelberg_vol" and info["shape"] == [1, 1, 496, 768]
    with pytest.raises(EmptyFileError):
        inspect_path(realdata / "oct/heidelberg_invalid_empty.vol")
