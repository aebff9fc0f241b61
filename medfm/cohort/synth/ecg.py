"""12-lead ECG from a moving cardiac dipole, and the WFDB writer for the cohort.

Each beat is a sum of Gaussian waves (P, septal Q, R, S, T) of a 3-D dipole;
leads are projections of that dipole, so lead relationships hold as in life.
Like a real cart, only I, II and V1-V6 are "recorded" (each with its own
electrode noise); III, aVR, aVL and aVF are derived from I and II.
Axes: x to the patient's left, y to the feet, z anterior.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import butter, sosfiltfilt

from medfm.atomic import write_bytes_atomic
from medfm.keys import STANDARD_LEADS

DURATION_S = 10.0
MARGIN_S = 2.0  # simulated before and after the record so filters start settled


@dataclass(frozen=True)
class EcgDevice:
    """One electrocardiograph: sampling, digitisation, bandwidth and noise."""

    name: str
    fs: int
    adc_gain: float  # digital units per mV
    noise_mv: float  # white electrode noise
    wander_mv: float  # baseline wander amplitude
    band_hz: tuple[float, float]  # amplifier pass band; a low edge of 0 means DC-coupled
    powerline_mv: float  # 60 Hz pickup left in the record


ECG_DEVICES: dict[str, EcgDevice] = {
    d.name: d
    for d in (
        EcgDevice("Cardiolink 500", 500, 1000.0, noise_mv=0.008, wander_mv=0.08,
                  band_hz=(0.0, 150.0), powerline_mv=0.0),
        EcgDevice("PulseWave 250", 250, 200.0, noise_mv=0.025, wander_mv=0.15,
                  band_hz=(0.5, 40.0), powerline_mv=0.04),
    )
}


def _unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


# Recorded leads: I, II (frontal plane) and V1-V6 (precordial, with their own gains
# because the chest electrodes sit at different distances from the heart).
_PRECORDIAL_DEG = np.deg2rad([120.0, 96.0, 75.0, 55.0, 30.0, 5.0])
_PRECORDIAL_GAIN = np.array([1.0, 1.35, 1.4, 1.35, 1.15, 0.9])
_RECORDED_LEADS = np.vstack([
    _unit(1.0, 0.0, 0.0),
    _unit(0.5, np.sqrt(3) / 2, 0.0),
    _PRECORDIAL_GAIN[:, None] * np.stack(
        [np.cos(_PRECORDIAL_DEG), np.full(6, 0.15), np.sin(_PRECORDIAL_DEG)], axis=1),
])


@dataclass(frozen=True)
class Wave:
    """One Gaussian wave of the dipole: timing relative to the R peak, width, size, direction."""

    offset_s: float
    sigma_s: float
    amp_mv: float
    direction: tuple[float, float, float]
    qrs: bool  # scaled by the LVH voltage factor


_WAVES: dict[str, Wave] = {
    "P": Wave(-0.155, 0.022, 0.16, (0.55, 0.8, 0.25), False),
    "Q": Wave(-0.026, 0.008, 0.28, (-0.6, 0.1, 0.8), True),  # septum: rightward, anterior
    "R1": Wave(-0.010, 0.010, 0.74, (0.35, 0.35, 0.85), True),  # early, anterior free wall
    "R2": Wave(0.0, 0.011, 1.8, (0.75, 0.45, -0.5), True),  # main left-ventricular force
    "S": Wave(0.026, 0.010, 0.46, (-0.35, -0.45, -0.6), True),  # terminal basal forces
}
_T = Wave(0.0, 0.045, 0.38, (0.6, 0.55, 0.45), False)  # offset follows the RR (QT)
_T_STRAIN = (-0.75, 0.25, 0.35)  # lateral T inversion of LV strain
_F_WAVE = (0.25, 0.55, 0.8)  # fibrillating atria, seen best in V1 and II


@dataclass(frozen=True)
class HeartPhysiology:
    """Per-patient electrical traits; fixed across the patient's visits."""

    axis_deg: float  # rotation of the frontal plane
    amplitude: float  # body habitus scaling of all voltages
    sinus_rate: float  # bpm
    af_rate: float  # ventricular rate in AF, bpm


def sample_physiology(rng: np.random.Generator) -> HeartPhysiology:
    """Draws a patient's electrical traits."""
    return HeartPhysiology(
        axis_deg=float(rng.uniform(-15.0, 20.0)),
        amplitude=float(rng.uniform(0.92, 1.08)),
        sinus_rate=float(rng.uniform(55.0, 95.0)),
        af_rate=float(rng.uniform(80.0, 130.0)),
    )


def _rotate_frontal(v: tuple[float, float, float], deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    x, y, z = _unit(*v)
    return np.array([c * x - s * y, s * x + c * y, z])


def beat_times(rng: np.random.Generator, rate_bpm: float, af: bool) -> np.ndarray:
    """R-peak times (s) covering the record and its margins.

    Sinus: ~3 % RR variability with a respiratory swing. AF: independent
    log-normal RR draws (irregularly irregular, CV about 0.2-0.3).
    """
    mean_rr = 60.0 / rate_bpm
    n = int((DURATION_S + 2 * MARGIN_S) / mean_rr * 1.6) + 6
    if af:
        sigma = rng.uniform(0.2, 0.28)
        rr = mean_rr * rng.lognormal(-0.5 * sigma**2, sigma, n)
        rr = np.clip(rr, 0.3, 2.0)
    else:
        resp = 0.025 * np.sin(2 * np.pi * np.arange(n) * mean_rr / rng.uniform(3.5, 5.0))
        rr = mean_rr * (1.0 + resp + 0.02 * rng.standard_normal(n))
    t = -MARGIN_S - rng.uniform(0.3, 1.0) * mean_rr + np.concatenate([[0.0], np.cumsum(rr)])
    return t[t < DURATION_S + MARGIN_S + 0.5]


def _gaussian_train(t: np.ndarray, centres: np.ndarray, sigma: float, amps: np.ndarray) -> np.ndarray:
    """Sum of Gaussians on the regular grid ``t``, each evaluated only within 5 sigma of its centre."""
    fs = 1.0 / (t[1] - t[0])
    half = int(np.ceil(5 * sigma * fs))
    idx = np.rint((centres - t[0]) * fs).astype(np.int64)[:, None] + np.arange(-half, half + 1)
    inside = (idx >= 0) & (idx < t.size)
    values = amps[:, None] * np.exp(-0.5 * ((t[0] + idx / fs - centres[:, None]) / sigma) ** 2)
    return np.bincount(idx[inside], weights=values[inside], minlength=t.size)


def synthesize_ecg(
    device: EcgDevice,
    phys: HeartPhysiology,
    rate_bpm: float,
    af: bool,
    lvh_factor: float,
    strain: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """Simulates one 10-s 12-lead record.

    Args:
        device: sampling rate, bandwidth and noise.
        phys: the patient's electrical traits.
        rate_bpm: target ventricular rate.
        af: atrial fibrillation (irregular RR, no P waves, f-waves) instead of sinus rhythm.
        lvh_factor: QRS voltage multiplier (1 when no LVH).
        strain: invert lateral T waves (repolarisation abnormality of LVH).
        rng: per-visit generator.

    Returns:
        ``(signal, rate)``: float64 ``(12, T)`` in mV, leads in ``STANDARD_LEADS``
        order; and the ventricular rate (bpm) actually in the record.
    """
    fs = device.fs
    n_out, n_pad = int(DURATION_S * fs), int(MARGIN_S * fs)
    t = np.arange(-n_pad, n_out + n_pad) / fs
    beats = beat_times(rng, rate_bpm, af)
    rr_prev = np.diff(beats, prepend=beats[0] - 60.0 / rate_bpm)
    amp_jitter = 1.0 + 0.03 * rng.standard_normal(len(beats))

    dipole = np.zeros((3, t.size))
    waves = [(w, w.offset_s + np.zeros_like(beats)) for k, w in _WAVES.items() if not (af and k == "P")]
    t_dir = _T_STRAIN if strain else _T.direction
    t_amp = _T.amp_mv * (1.4 if strain else 1.0)
    # T peak follows the preceding RR like the QT interval (Bazett-like).
    waves.append((Wave(0.0, _T.sigma_s, t_amp, t_dir, False), 0.27 * np.sqrt(np.clip(rr_prev, 0.3, 2.0))))
    for w, offsets in waves:
        amp = w.amp_mv * phys.amplitude * (lvh_factor if w.qrs else 1.0)
        train = _gaussian_train(t, beats + offsets, w.sigma_s, amp * amp_jitter)
        dipole += np.outer(_rotate_frontal(w.direction, phys.axis_deg), train)

    if af:
        # Fibrillatory waves: 4-8 Hz, slowly wandering in frequency and size.
        f0 = rng.uniform(4.5, 7.5)
        freq = f0 + 0.6 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t + rng.uniform(0, 2 * np.pi))
        phase = 2 * np.pi * np.cumsum(freq) / fs
        size = rng.uniform(0.06, 0.1) * (1.0 + 0.3 * np.sin(2 * np.pi * 0.21 * t + rng.uniform(0, 6)))
        fwave = size * (np.sin(phase) + 0.3 * np.sin(2 * phase + 1.0))
        dipole += np.outer(_unit(*_F_WAVE), fwave)

    recorded = _RECORDED_LEADS @ dipole  # (8, T): I, II, V1-V6
    n_rec = recorded.shape[0]
    resp_hz = rng.uniform(0.15, 0.35)
    wander = device.wander_mv * (
        rng.uniform(0.5, 1.0, (n_rec, 1)) * np.sin(2 * np.pi * resp_hz * t + rng.uniform(0, 6, (n_rec, 1)))
        + 0.5 * rng.uniform(0.3, 1.0, (n_rec, 1)) * np.sin(2 * np.pi * rng.uniform(0.05, 0.12) * t + 1.0)
    )
    recorded = recorded + wander + device.noise_mv * rng.standard_normal(recorded.shape)
    lo, hi = device.band_hz
    hi = min(hi, 0.45 * fs)
    sos = (butter(2, [lo, hi], btype="bandpass", fs=fs, output="sos") if lo > 0
           else butter(2, hi, btype="lowpass", fs=fs, output="sos"))
    # Filter over the margins too, then keep the record: the filter's start-up
    # transient (0.3 s for a 0.5 Hz high-pass) dies out before the record begins.
    recorded = sosfiltfilt(sos, recorded, axis=1)[:, n_pad:n_pad + n_out]
    t = t[n_pad:n_pad + n_out]
    if device.powerline_mv > 0:
        recorded += device.powerline_mv * rng.uniform(0.5, 1.0, (n_rec, 1)) * np.sin(
            2 * np.pi * 60.0 * t + rng.uniform(0, 2 * np.pi))

    lead_i, lead_ii = recorded[0], recorded[1]
    limb = np.stack([
        lead_i, lead_ii, lead_ii - lead_i,
        -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2,
    ])
    signal = np.concatenate([limb, recorded[2:]])
    inside = beats[(beats >= 0) & (beats < DURATION_S)]
    rate = 60.0 * (len(inside) - 1) / (inside[-1] - inside[0])
    return signal, float(rate)


def wfdb_format16(
    record_name: str,
    digital: np.ndarray,
    device: EcgDevice,
    comments: list[str],
    start: dt.datetime,
) -> tuple[str, bytes]:
    """Encodes a 12-lead record as the ``.hea`` text and ``.dat`` bytes wfdb.wrsamp would write.

    ``wfdb.wrsamp`` spends ~0.1 s per record validating its header tables
    (pandas look-ups), which alone would break the cohort's time budget; this
    writes the same bytes (format 16, baseline 0) directly. A test checks the
    output against ``wfdb.wrsamp`` byte for byte.

    Args:
        record_name: record (and data file) name, without extension.
        digital: int16 ``(12, T)`` samples in ``STANDARD_LEADS`` order.
        device: gives fs and ADC gain.
        comments: header comment lines, without the leading ``#``.
        start: base date and time of the record.
    """
    n_sig, n_samp = digital.shape
    lines = [f"{record_name} {n_sig} {device.fs} {n_samp} {start:%H:%M:%S} {start:%d/%m/%Y}"]
    checksums = digital.astype(np.int64).sum(axis=1) % 65536
    for name, first, check in zip(STANDARD_LEADS, digital[:, 0], checksums, strict=True):
        lines.append(f"{record_name}.dat 16 {float(device.adc_gain)!r}(0)/mV 16 0 {first} {check} 0 {name}")
    lines.extend(f"# {c}" for c in comments)
    return "\n".join(lines) + "\n", np.ascontiguousarray(digital.T, dtype="<i2").tobytes()


def write_ecg_record(
    folder: Path,
    record_name: str,
    signal_mv: np.ndarray,
    device: EcgDevice,
    comments: list[str],
    start: dt.datetime,
) -> None:
    """Quantises to the device's ADC gain and writes ``record_name.hea``/``.dat`` atomically.

    Each file goes to a temp name in the same folder and is renamed into place,
    data first, header last, so a reader never sees a header without its data.
    """
    digital = np.clip(np.rint(signal_mv * device.adc_gain), -32767, 32767).astype(np.int16)
    header, data = wfdb_format16(record_name, digital, device, comments, start)
    for ext, payload in ((".dat", data), (".hea", header.encode("ascii"))):
        write_bytes_atomic(folder / f"{record_name}{ext}", payload, durable=False)
