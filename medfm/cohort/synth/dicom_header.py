"""The patient, study and equipment header every synthetic DICOM object shares."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid


@dataclass(frozen=True)
class StudyHeader:
    """Patient and study fields written into the DICOM header."""

    patient_id: str
    study_id: str
    site: str
    sex: str
    age: int
    birth_date: dt.date
    study_date: dt.date
    study_time: str  # HHMMSS
    uid_entropy: tuple[str, ...]  # makes UIDs deterministic from (seed, study)


def base_dataset(header: StudyHeader, sop_class_uid: str, modality: str, manufacturer: str, model: str,
                 series_key: str = "series") -> Dataset:
    """Patient, study, series and equipment fields shared by every modality's writer."""
    uids = {k: generate_uid(entropy_srcs=[*header.uid_entropy, k]) for k in ("study", series_key)}
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UID(sop_class_uid)
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids[series_key]
    ds.StudyID = header.study_id
    ds.AccessionNumber = header.study_id
    ds.SeriesNumber = 1
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = header.study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = header.study_time
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.InstitutionName = header.site
    ds.PatientName = f"SYNTH^{header.patient_id}"
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = header.birth_date.strftime("%Y%m%d")
    ds.PatientSex = header.sex
    ds.PatientAge = f"{header.age:03d}Y"
    return ds


def set_instance_uid(ds: Dataset, header: StudyHeader, key: str) -> None:
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[*header.uid_entropy, key])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
