"""12-lead ECGs from WFDB records (.hea + signal files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

from medfm.errors import MedfmReadError
from medfm.keys import STANDARD_LEADS

_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "v": 1e3}
_LEAD_ALIASES = {name.lower(): name for name in STANDARD_LEADS}
# Modified limb leads (Mason-Likar torso placement, as in Holter and MIT-BIH records) are
# read as the limb lead they approximate; their morphology is close but not identical.
_LEAD_ALIASES |= {"mli": "I", "mlii": "II", "mliii": "III"}


@dataclass(frozen=True)
class ECGRecord:
    """An ECG in the standard 12-lead order, ``(12, T)`` float32 in mV.

    Attributes:
        signal: leads absent from the record are zero rows, flagged by ``lead_mask``.
        fs: sampling rate in Hz.
        lead_mask: ``(12,)`` bool, True where the lead was recorded.
    """

    signal: np.ndarray
    fs: float
    lead_mask: np.ndarray


def read_ecg(record_path: str | Path) -> ECGRecord:
    """Read a WFDB record (path without extension) into the standard lead order.

    Raises:
        MedfmReadError: header or signal file missing or corrupt, no standard lead,
            a unit that is not a voltage, or non-finite samples.
    """
    record_path = Path(record_path)
    header = record_path.with_name(record_path.name + ".hea")
    if not header.is_file():
        raise MedfmReadError(header, "WFDB header not found")
    try:
        record = wfdb.rdrecord(str(record_path), physical=True)
    except Exception as err:  # wfdb raises bare ValueError/IndexError/OSError on bad files
        raise MedfmReadError(header, f"not a readable WFDB record ({err})") from None
    if record.p_signal is None or record.p_signal.size == 0:
        raise MedfmReadError(header, "record has no samples")

    n = record.p_signal.shape[0]
    signal = np.zeros((len(STANDARD_LEADS), n), dtype=np.float32)
    mask = np.zeros(len(STANDARD_LEADS), dtype=bool)
    for column, (name, unit) in enumerate(zip(record.sig_name, record.units, strict=True)):
        lead = _LEAD_ALIASES.get(name.strip().lower())
        if lead is None:
            continue
        scale = _UNIT_TO_MV.get(unit.strip().lower())
        if scale is None:
            raise MedfmReadError(header, f"lead {name} has unit {unit!r}, expected mV, uV or V")
        row = STANDARD_LEADS.index(lead)
        signal[row] = record.p_signal[:, column] * scale
        mask[row] = True
    if not mask.any():
        raise MedfmReadError(header, f"no standard ECG lead among {record.sig_name}")
    if not np.isfinite(signal).all():
        raise MedfmReadError(header, "signal has missing (NaN) samples")
    return ECGRecord(signal, float(record.fs), mask)
