"""12-lead ECGs from WFDB records (.hea + signal files)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

from medfm.errors import MedfmReadError
from medfm.io.errors import CorruptFileError
from medfm.keys import STANDARD_LEADS

# Largest float64 signal wfdb may be asked to build (2 GiB: 12 leads x 22 million samples); a
# header declaring more is refused before wfdb allocates it.
MAX_SIGNAL_BYTES = 2 * 1024**3
# Bytes per sample of each uncompressed WFDB storage format (WFDB "signal(5)"); FLAC formats
# (508, 516, 524) are compressed and checked only against MAX_SIGNAL_BYTES.
_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5, "310": 4 / 3,
                     "311": 4 / 3}

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
        MedfmReadError: header or signal file missing or corrupt (as
            :class:`~medfm.io.errors.CorruptFileError`, see :func:`read_wfdb_record`), no
            standard lead, a unit that is not a voltage, or non-finite samples.
    """
    record_path = Path(record_path)
    header = record_path.with_name(record_path.name + ".hea")
    record = read_wfdb_record(record_path)
    if record.p_signal is None or record.p_signal.size == 0:
        raise MedfmReadError(header, "record has no samples")

    n = record.p_signal.shape[0]
    signal = np.zeros((len(STANDARD_LEADS), n), dtype=np.float32)
    mask = np.zeros(len(STANDARD_LEADS), dtype=bool)
    names = record.sig_name or [None] * record.p_signal.shape[1]
    units = record.units or ["mV"] * record.p_signal.shape[1]
    for column, (name, unit) in enumerate(zip(names, units, strict=True)):
        lead = _LEAD_ALIASES.get(str(name or "").strip().lower())
        if lead is None:
            continue
        scale = _UNIT_TO_MV.get(str(unit or "").strip().lower())
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


def read_wfdb_record(record_path: str | Path) -> wfdb.Record:
    """``wfdb.rdrecord`` (physical units) once the header's sizes are known to be sane.

    The header is parsed first: a sampling rate that is not a positive number is refused,
    and so are a number of signals other than the signal lines it describes and a signal
    length the signal files cannot hold (at the bytes per sample of their storage formats)
    or whose float64 signal would exceed :data:`MAX_SIGNAL_BYTES`, before wfdb allocates
    anything from them.

    Raises:
        MedfmReadError: the header is missing.
        CorruptFileError: a header or signal file wfdb cannot read, or the checks above.
    """
    record_path = Path(record_path)
    header = record_path.with_name(record_path.name + ".hea")
    if not header.is_file():
        raise MedfmReadError(header, "WFDB header not found")
    try:
        declared = wfdb.rdheader(str(record_path))
    except Exception as err:  # wfdb raises bare ValueError/IndexError/TypeError on bad headers
        raise CorruptFileError(header, f"not a readable WFDB header ({type(err).__name__}: {err})") from None
    _check_declared_size(declared, header)
    try:
        return wfdb.rdrecord(str(record_path), physical=True)
    except Exception as err:  # wfdb raises bare ValueError/IndexError/OSError on bad files
        raise CorruptFileError(header, f"not a readable WFDB record ({type(err).__name__}: {err})") from None


def _check_declared_size(declared: wfdb.Record, header: Path) -> None:
    fs = declared.fs
    lines = _header_lines(header)  # read once: the record line here, the signal lines' gains below
    record_line = lines[0] if lines else []
    # wfdb reads a field it cannot parse as its default (fs 250 Hz, or 1 for "1e300"; no length for "-5"),
    # so the fields as written are checked, and must be what wfdb understood.
    written = record_line[2].split("/")[0] if len(record_line) > 2 else None
    if written is not None:
        try:
            fs = float(written)
        except ValueError:
            fs = written
    if not (isinstance(fs, int | float) and math.isfinite(fs) and fs > 0):
        raise CorruptFileError(header, f"sampling frequency {fs!r}: must be a positive number of Hz")
    if not math.isclose(fs, float(declared.fs), rel_tol=1e-9):
        raise CorruptFileError(header, f"sampling frequency {written!r}: not a WFDB number (wfdb reads it as "
                                       f"{declared.fs} Hz)")
    if len(record_line) > 3 and not record_line[3].isdigit():
        raise CorruptFileError(header, f"signal length {record_line[3]!r}: must be a whole number of samples")
    if not isinstance(declared, wfdb.Record):
        return  # multi-segment records are read segment by segment
    _check_written_gains(header, lines[1:1 + len(declared.file_name or [])])
    n_sig, sig_len = declared.n_sig or 0, declared.sig_len
    described = len(declared.file_name or [])
    if described != n_sig:
        raise CorruptFileError(header, f"header declares {n_sig} signals but describes {described}")
    if not n_sig:
        return
    if not sig_len:
        return  # no length in the header: wfdb takes it from the signal file's size
    per_frame = [spf or 1 for spf in (declared.samps_per_frame or [1] * n_sig)]
    skew = max([s or 0 for s in (declared.skew or [])] + [0])
    samples = (sig_len + skew) * sum(per_frame)
    if samples * 8 > MAX_SIGNAL_BYTES:
        raise CorruptFileError(header, f"header declares {sig_len} samples of {n_sig} signals: {samples * 8} bytes "
                                       f"as float64, over the {MAX_SIGNAL_BYTES}-byte cap")
    needed: dict[str, float] = {}
    offsets: dict[str, int] = {}
    layouts: dict[str, set[tuple[str, int]]] = {}
    counts: dict[str, int] = {}
    for index, name in enumerate(declared.file_name or []):
        fmt = str((declared.fmt or [None] * n_sig)[index])
        if fmt not in _BYTES_PER_SAMPLE:
            continue
        needed[name] = needed.get(name, 0.0) + sig_len * per_frame[index] * _BYTES_PER_SAMPLE[fmt]
        offsets[name] = max(offsets.get(name, 0), (declared.byte_offset or [None] * n_sig)[index] or 0)
        layouts.setdefault(name, set()).add((fmt, per_frame[index]))
        counts[name] = counts.get(name, 0) + 1
    for name, data_bytes in needed.items():
        file = header.parent / name
        if not file.is_file():
            continue  # wfdb names the missing file
        size = file.stat().st_size
        if offsets[name] + int(data_bytes) > size + 4:  # formats 310/311 may end on a partial group
            raise CorruptFileError(header, f"header declares {sig_len} samples per signal, {int(data_bytes)} bytes "
                                           f"from byte {offsets[name]} of {name}, which has {size} bytes")
        _check_signal_count(header, name, size - offsets[name], sig_len, counts[name], layouts[name])


def _check_signal_count(header: Path, name: str, data_size: int, sig_len: int, described: int,
                        layout: set[tuple[str, int]]) -> None:
    """Refuse a signal file that holds exactly a whole number of other signals than the header describes.

    A header that lists fewer signals than its data file interleaves (a lead line deleted or
    a second header edited from the first) reads without error as scrambled leads. Trailing
    bytes of any other size are tolerated: some writers pad the last block.
    """
    if len(layout) != 1:
        return  # mixed formats in one file: no single per-signal size to count by
    (fmt, per_frame), = layout
    per_signal = sig_len * per_frame * _BYTES_PER_SAMPLE[fmt]
    if per_signal <= 0 or data_size <= described * per_signal + 4:
        return
    held = data_size / per_signal
    if held == int(held) and int(held) != described:
        raise CorruptFileError(header, f"header describes {described} signal(s) of {sig_len} samples in {name}, "
                                       f"but its {data_size} data bytes hold exactly {int(held)}: "
                                       "lead lines missing from the header")


def _check_written_gains(header: Path, signal_lines: list[list[str]]) -> None:
    """Each signal line's ADC gain, where written, must be a finite non-zero number.

    wfdb replaces a gain of 0 (WFDB's "uncalibrated"), "nan" or text by its default of 200 units
    per mV without a word, and reads "1e400" as infinity, which scales the signal to zeros.
    """
    for number, fields in enumerate(signal_lines, start=1):
        if len(fields) < 3:
            continue  # no gain written: WFDB's default of 200 per mV applies
        text = fields[2].split("(")[0].split("/")[0]
        try:
            gain = float(text)
        except ValueError:
            gain = math.nan
        if not math.isfinite(gain) or gain == 0:
            why = "uncalibrated (wfdb would assume 200 per mV)" if gain == 0 else "not a finite number"
            raise CorruptFileError(header, f"signal {number} ({fields[0]}): ADC gain {text!r}: {why}; "
                                           "medfm needs signals in physical units")


def _header_lines(header: Path) -> list[list[str]]:
    """The fields of each line that is not a comment: the record line
    (``name[/segments] n_sig [fs[/counter[(base)]] [sig_len ...]]``), then the signal lines."""
    return [line.split() for line in header.read_text(encoding="latin-1").splitlines()
            if line.strip() and not line.startswith("#")]
