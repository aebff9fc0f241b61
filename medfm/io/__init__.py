"""Readers: files on disk → channel-first float32 arrays with their geometry.

Each reader raises a :class:`~medfm.errors.MedfmReadError` subclass naming the
file and the reason; none returns an array it could not trust.
"""

from medfm.io.dicom import RadiographImage, read_radiograph
from medfm.io.reports import read_report
from medfm.io.wfdb import ECGRecord, read_ecg

__all__ = ["ECGRecord", "RadiographImage", "read_ecg", "read_radiograph", "read_report"]
