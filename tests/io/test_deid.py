"""De-identification (PS3.15 Annex E Basic Profile): every table row, UIDs, options, keys, and readers after it."""

from __future__ import annotations

import os
import stat

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medfm.io import read_dicom_image, read_dicom_series
from medfm.io.deid import (
    MAX_DATE_SHIFT_DAYS,
    BurnedInAnnotationError,
    DeidKey,
    DeidKeyError,
    DeidOption,
    deidentify,
    load_key,
    load_or_create_key,
)
from medfm.io.deid_profile import BASIC_PROFILE, ROWS, basic_action
from tests.io.test_dicom import write_series

KEY = DeidKey(bytes(range(32)))
OTHER_KEY = DeidKey(bytes(range(1, 33)))
BOTH = (DeidOption.RETAIN_MODIFIED_DATES, DeidOption.RETAIN_PATIENT_CHARACTERISTICS)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
# What the combined codes resolve to (medfm.io.deid._COMBINED: replace rather than remove, always conformant).
EXPECTED = {"X": "X", "Z": "Z", "D": "D", "U": "U", "X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D",
            "X/Z/U*": "U*"}
SECRETS = {  # an identifying-looking value for each VR
    "AE": "SECRETAE", "AS": "042Y", "CS": "SECRET", "DA": "20200131", "DS": "1.5", "DT": "20200131123000",
    "FD": 1.5, "FL": 1.5, "IS": "7", "LO": "SECRET TEXT", "LT": "SECRET TEXT", "PN": "Secret^Person",
    "SH": "SECRET TEXT", "SL": 7, "SS": 7, "ST": "SECRET TEXT", "SV": 7, "TM": "123000", "UC": "SECRET TEXT",
    "UL": 7, "UR": "http://secret.example", "US": 7, "UT": "SECRET TEXT", "UV": 7, "AT": 0x00100010,
}


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:  # newer than pydicom's dictionary: any text VR will do, the table goes by tag
        return "LO"


def _secret_value(tag: int, vr: str):
    if vr == "UI":
        return generate_uid(entropy_srcs=["medfm-test", str(tag)])
    if vr == "SQ":
        item = Dataset()
        item.CodeMeaning = "SECRET TEXT"
        return Sequence([item])
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN"):
        return b"SECRET!!"
    return SECRETS[vr]


def every_table_attribute() -> Dataset:
    ds = Dataset()
    for tag in BASIC_PROFILE:
        if tag >> 16 not in (0x0000, 0x0002):  # command and file meta groups are never in a dataset
            vr = _vr(tag)
            ds.add_new(tag, vr, _secret_value(tag, vr))
    return ds


def test_the_table_is_ps3_15_2026c_e_1_1():
    assert len(ROWS) == 655 and len(BASIC_PROFILE) == 652
    assert basic_action(0x00100010) == "Z" and basic_action(0x00100020) == "Z/D"
    assert basic_action(0x0020000D) == "U" and basic_action(0x00080080) == "X/Z/D"
    assert basic_action(0x00081140) == "X/Z/U*" and basic_action(0x00101010) == "X"
    assert basic_action(0x50021234) == basic_action(0x60023000) == basic_action(0x601E4000) == "X"
    assert basic_action(0x00280010) is None and basic_action(0x60000010) is None


def test_every_table_attribute_gets_its_action():
    original = every_table_attribute()
    out = deidentify(original, KEY)
    assert len(original) > 640
    checked = set()
    for element in original:
        tag, vr, action = element.tag, element.VR, EXPECTED[BASIC_PROFILE[element.tag]]
        name = f"{tag} {element.name} ({BASIC_PROFILE[tag]})"
        if tag in (0x00100010, 0x00100020):  # PatientName and PatientID: the keyed pseudonym
            assert str(out[tag].value) == KEY.patient_pseudonym("SECRET TEXT"), name
        elif action == "X":
            assert tag not in out, name
        elif action == "Z":
            assert tag in out and (out[tag].value in (None, "", b"") or len(out[tag].value) == 0), name
        elif vr == "SQ":  # D: the item stays with dummy values; U*: the item stays, de-identified
            assert len(out[tag].value) == 1, name
            assert out[tag].value[0].CodeMeaning == ("ANONYMIZED" if action == "D" else "SECRET TEXT"), name
        elif vr == "UI" or action in ("U", "U*"):
            assert str(out[tag].value).startswith("2.25.") and out[tag].value != element.value, name
        else:
            assert action == "D", name
            assert out[tag].value not in (None, "", b"") and out[tag].value != element.value, name
        checked.add(action)
    assert checked == {"X", "Z", "D", "U", "U*"}
    pydicom.dcmwrite(pydicom.filebase.DicomBytesIO(), out, implicit_vr=False, little_endian=True)  # still valid


def ct_instance(number: int, *, patient: str = "PID-884213", study_date: str = "20200131",
                burned_in: str | None = None) -> Dataset:
    """A CT slice with the identifiers synthetic and real headers carry, referencing the slice before it."""
    uid = lambda name: generate_uid(entropy_srcs=["medfm-deid-test", patient, name])  # noqa: E731
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = uid(f"sop{number}")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "STELSEWHERE_CT"
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, uid(f"sop{number}")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uid("study"), uid("series"), uid("for")
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", patient, "19610704"
    ds.PatientSex, ds.PatientAge, ds.PatientWeight = "F", "058Y", "71"
    ds.AccessionNumber, ds.StudyID = "ACC-55231", "STUDY-77"
    ds.InstitutionName, ds.InstitutionAddress = "St. Elsewhere Hospital", "1 Secret Road"
    ds.ReferringPhysicianName, ds.OperatorsName = "House^Gregory", "Tech^Tina"
    ds.StudyDate, ds.StudyTime, ds.SeriesDate = study_date, "101500", study_date
    ds.AcquisitionDateTime = study_date + "101512.250000+0100"
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName, ds.InstanceNumber = "CT", "ACME", "CT-9", number
    ds.StudyDescription = "CT chest for Jane Doe"
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = CT_IMAGE, uid(f"sop{number - 1}")
    ds.ReferencedImageSequence = Sequence([reference])
    operator = Dataset()  # Operator Identification Sequence: X/D → the item is de-identified
    operator.InstitutionName = "St. Elsewhere Hospital"
    person = Dataset()
    person.CodeValue, person.CodingSchemeDesignator, person.CodeMeaning = "E-4411", "L", "Tina Tech"
    operator.PersonIdentificationCodeSequence = Sequence([person])
    operator.add_new(0x00110010, "LO", "ACME PRIVATE")
    operator.add_new(0x00111001, "LO", "secret inside an item")
    ds.OperatorIdentificationSequence = Sequence([operator])
    series = Dataset()  # not in the table: its UIDs are remapped all the same
    series.SeriesInstanceUID = uid("series")
    ds.ReferencedSeriesSequence = Sequence([series])
    ds.add_new(0x00090010, "LO", "ACME PRIVATE")
    ds.add_new(0x00091001, "LO", "Jane Doe private copy")
    ds.add_new(0x50000005, "US", 2)  # curve
    ds.add_new(0x50003000, "OW", b"\x01\x00" * 4)
    ds.add_new(0x60000010, "US", 2)  # overlay plane
    ds.add_new(0x60000011, "US", 2)
    ds.add_new(0x60003000, "OW", b"\xff\xff")
    ds.add_new(0x60020010, "US", 2)
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.arange(4, dtype=np.uint16).tobytes()
    return ds


def identifiers_of(ds: Dataset) -> list[str]:
    values = [str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber, ds.InstitutionName,
              "1 Secret Road", "House^Gregory", "Tech^Tina", "Jane Doe", "STELSEWHERE", "Tina Tech", ds.StudyDate,
              ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID,
              ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID, "STUDY-77"]
    return [v for v in values if v]


def test_private_curve_and_overlay_groups_go_and_the_input_is_untouched():
    original = ct_instance(2)
    before = original.to_json_dict()
    out = deidentify(original, KEY, options=BOTH)
    assert original.to_json_dict() == before and original.PatientName == "Doe^Jane"
    assert not [e for e in out.iterall() if e.tag.is_private]
    assert not [e for e in out.iterall() if 0x5000 <= e.tag.group <= 0x60FF]
    assert out.PixelData == original.PixelData


def test_identity_and_method_are_recorded():
    out = deidentify(ct_instance(1), KEY, options=BOTH)
    assert out.PatientIdentityRemoved == "YES" and "PS3.15 Annex E 2026c" in out.DeidentificationMethod
    codes = [(item.CodeValue, item.CodingSchemeDesignator) for item in out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113107", "DCM"), ("113108", "DCM")]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    plain = deidentify(ct_instance(1), KEY)
    assert [i.CodeValue for i in plain.DeidentificationMethodCodeSequence] == ["113100"]
    assert plain.LongitudinalTemporalInformationModified == "REMOVED"
    assert out.PatientID == out.PatientName == KEY.patient_pseudonym("PID-884213") != OTHER_KEY.patient_pseudonym(
        "PID-884213")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != ct_instance(1).SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and "SourceApplicationEntityTitle" not in \
        out.file_meta


def test_nested_sequences_are_de_identified():
    first, second = ct_instance(1), ct_instance(2)
    new_first, new_second = deidentify(first, KEY), deidentify(second, KEY)
    # A reference inside a sequence follows the instance it names; class UIDs are not identifiers.
    assert new_second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == new_first.SOPInstanceUID
    assert new_second.ReferencedImageSequence[0].ReferencedSOPClassUID == CT_IMAGE == new_second.SOPClassUID
    assert new_second.ReferencedSeriesSequence[0].SeriesInstanceUID == new_second.SeriesInstanceUID
    operator = new_second.OperatorIdentificationSequence[0]
    assert operator.InstitutionName == "ANONYMIZED" and 0x00111001 not in operator
    assert operator.PersonIdentificationCodeSequence[0].CodeMeaning != "Tina Tech"


def test_uids_are_remapped_consistently_by_key():
    first, second = ct_instance(1), ct_instance(2)
    a, b = deidentify(first, KEY), deidentify(second, KEY)
    assert a.SeriesInstanceUID == b.SeriesInstanceUID != first.SeriesInstanceUID
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    again = deidentify(first, DeidKey(bytes(range(32))))  # same secret, new object: same UIDs
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (a.SOPInstanceUID, a.SeriesInstanceUID)
    other = deidentify(first, OTHER_KEY)
    assert other.SeriesInstanceUID != a.SeriesInstanceUID and other.SOPInstanceUID != a.SOPInstanceUID
    for uid in (a.SOPInstanceUID, a.SeriesInstanceUID, a.StudyInstanceUID):
        assert uid.startswith("2.25.") and len(uid) <= 64 and uid.is_valid
        value = int(uid[5:])
        assert value < 1 << 128 and (value >> 76) & 0xF == 8 and (value >> 62) & 0x3 == 2  # UUID v8, RFC variant


@pytest.mark.parametrize("options", [(), BOTH])
def test_no_original_identifier_in_the_written_file(tmp_path, options):
    original = ct_instance(2)
    deidentify(original, KEY, options=options).save_as(tmp_path / "out.dcm", enforce_file_format=True)
    data = (tmp_path / "out.dcm").read_bytes()
    for value in identifiers_of(original):
        assert value.encode() not in data, value
    assert b"ACME PRIVATE" not in data and b"secret" not in data.lower()


def test_modified_dates_keep_each_patients_intervals():
    early, late = ct_instance(1, study_date="20200131"), ct_instance(2, study_date="20210315")
    a, b = (deidentify(ds, KEY, options=BOTH) for ds in (early, late))
    shift = KEY.date_shift_days("PID-884213")
    assert -MAX_DATE_SHIFT_DAYS <= shift <= -1
    days = lambda text: np.datetime64(f"{text[:4]}-{text[4:6]}-{text[6:8]}")  # noqa: E731
    assert days(b.StudyDate) - days(a.StudyDate) == days("20210315") - days("20200131")
    assert days(a.StudyDate) - days("20200131") == shift and a.SeriesDate == a.StudyDate
    assert a.AcquisitionDateTime == a.StudyDate + "101512.250000+0100" and a.StudyTime == "101500"
    assert a.PatientBirthDate == ""  # birth is not retained by the option
    other = deidentify(ct_instance(1, patient="PID-000001"), KEY, options=BOTH)
    assert KEY.date_shift_days("PID-000001") != shift and other.StudyDate != a.StudyDate
    partial = ct_instance(1)
    partial.AcquisitionDateTime = "2020"  # no full date to shift: emptied
    assert deidentify(partial, KEY, options=BOTH).AcquisitionDateTime == ""


def test_basic_profile_alone_removes_dates_and_characteristics():
    out = deidentify(ct_instance(1), KEY)
    assert out.StudyDate == "" and out.StudyTime == "" and out.PatientBirthDate == ""
    assert out.SeriesDate == "19000101" and out.AcquisitionDateTime == "19000101000000"  # X/D, X/Z/D: dummies
    assert "PatientAge" not in out and "PatientWeight" not in out and out.PatientSex == ""
    kept = deidentify(ct_instance(1), KEY, options=[DeidOption.RETAIN_PATIENT_CHARACTERISTICS])
    assert (kept.PatientAge, kept.PatientSex, kept.PatientWeight) == ("058Y", "F", 71) and kept.StudyDate == ""


def test_burned_in_annotation_is_refused_unless_allowed():
    flagged = ct_instance(1, burned_in="YES")
    with pytest.raises(BurnedInAnnotationError, match="BurnedInAnnotation is YES") as err:
        deidentify(flagged, KEY)
    assert flagged.SOPInstanceUID not in str(err.value) and KEY.uid(flagged.SOPInstanceUID) in str(err.value)
    assert deidentify(flagged, KEY, allow_burned_in=True).BurnedInAnnotation == "YES"
    assert deidentify(ct_instance(1, burned_in="NO"), KEY).PatientIdentityRemoved == "YES"


def test_key_file_is_owner_only_and_stable(tmp_path):
    path = tmp_path / "cohort" / "private" / "deid.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_key(path) == key == load_key(path) and key.secret.hex() not in repr(key)
    assert load_or_create_key(tmp_path / "another.key") != key  # a new cohort, a new key
    os.chmod(path, 0o644)
    with pytest.raises(DeidKeyError, match="chmod 600"):
        load_key(path)
    (tmp_path / "bad.key").write_text("not a key\n")
    os.chmod(tmp_path / "bad.key", 0o600)
    with pytest.raises(DeidKeyError, match="64 hex digits"):
        load_key(tmp_path / "bad.key")
    with pytest.raises(DeidKeyError, match="no de-identification key"):
        load_key(tmp_path / "missing.key")


def test_a_de_identified_series_reads_as_the_same_volume(tmp_path):
    source = write_series(tmp_path / "source", [0.0, 2.5, 5.0, 7.5], PatientID="PID-884213",
                          StudyInstanceUID=generate_uid(), InstitutionName="St. Elsewhere Hospital")
    (tmp_path / "out").mkdir()
    for path in sorted(source.iterdir()):
        out = deidentify(pydicom.dcmread(path), KEY, options=BOTH)
        out.save_as(tmp_path / "out" / path.name, enforce_file_format=True)
    before, after = read_dicom_series(source), read_dicom_series(tmp_path / "out")  # one series, one volume
    assert np.array_equal(before.array, after.array) and np.allclose(before.affine, after.affine)
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in (tmp_path / "out").iterdir()}) == 1


@pytest.mark.parametrize("name", ["fodicom_JPEGwithIcon.dcm", "pydicom_CT_small.dcm", "fodicom_CT1_J2KI",
                                  "pydicom_MR_small_bigendian.dcm"])
def test_real_files_read_to_the_same_pixels(realdata, tmp_path, name):
    path = realdata / "dicom_misc" / name
    original = pydicom.dcmread(path)
    deidentify(original, KEY, options=BOTH).save_as(tmp_path / "out.dcm", enforce_file_format=True)
    assert np.array_equal(read_dicom_image(path).array, read_dicom_image(tmp_path / "out.dcm").array)
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert not [e for e in out.iterall() if e.tag.is_private] and "IconImageSequence" not in out
    data = (tmp_path / "out.dcm").read_bytes()
    for value in (str(original.get("PatientName") or ""), original.get("PatientID"), original.SOPInstanceUID,
                  original.StudyInstanceUID):
        if value and len(value) > 3:
            assert value.encode() not in data, value


def test_real_ct_series_reads_as_one_volume(realdata, tmp_path):
    source = realdata / "dicom_ct_series" / "lungmask_ct_2slices"
    for path in source.iterdir():
        deidentify(pydicom.dcmread(path), KEY, options=BOTH).save_as(tmp_path / path.name, enforce_file_format=True)
    before, after = read_dicom_series(source), read_dicom_series(tmp_path)
    assert np.array_equal(before.array, after.array) and np.allclose(before.affine, after.affine)
