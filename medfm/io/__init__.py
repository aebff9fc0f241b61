"""Readers: files on disk → channel-first float32 arrays with their geometry.

Each reader raises a :class:`~medfm.errors.MedfmReadError` subclass from
:mod:`medfm.io.errors` naming the file and the reason; none returns an array it could
not trust. Image readers return :class:`~medfm.io.images.Image` (affine in LPS mm); OCT vendor files
(Heidelberg ``.vol``, Zeiss ``.img``; ``.e2e``/``.fds``/``.fda`` with the oct-vendor extra) are in
:mod:`medfm.io.oct_vendor`.
"""

from medfm.io.dicom import PATIENT_IDENTIFIER_FIELDS, RadiographImage, read_dicom_image, read_radiograph
from medfm.io.dicom_series import read_dicom_series
from medfm.io.errors import CorruptFileError, EmptyFileError, UnsupportedFormatError
from medfm.io.images import Image, read_photo, to_metatensor
from medfm.io.inspect import detect_format, format_inspection, inspect_path
from medfm.io.nifti import read_nifti
from medfm.io.oct_vendor import (
    oct_volume_to_image,
    read_heidelberg_vol,
    read_heidelberg_vol_slo,
    read_oct_vendor,
    read_zeiss_img,
)
from medfm.io.reports import keep_sections, read_report, split_report_sections
from medfm.io.wfdb import ECGRecord, read_ecg

__all__ = [
    "PATIENT_IDENTIFIER_FIELDS",
    "CorruptFileError",
    "ECGRecord",
    "EmptyFileError",
    "Image",
    "RadiographImage",
    "UnsupportedFormatError",
    "detect_format",
    "format_inspection",
    "inspect_path",
    "oct_volume_to_image",
    "read_dicom_image",
    "read_dicom_series",
    "read_ecg",
    "read_heidelberg_vol",
    "read_heidelberg_vol_slo",
    "read_nifti",
    "read_oct_vendor",
    "read_photo",
    "read_radiograph",
    "keep_sections",
    "read_report",
    "read_zeiss_img",
    "split_report_sections",
    "to_metatensor",
]
