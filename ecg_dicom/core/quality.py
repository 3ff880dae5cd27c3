"""Signal-quality gate: is one measured ECG lead good enough to reconstruct 11 more from?

Pure numpy/scipy, run on the input lead (µV, its own rate) before the model. It measures

=================  ==================================================================
flat               seconds without cardiac activity: runs of a constant value (data
                   drop-out, saturation at an ADC rail) or 2 s windows whose QRS band
                   (5–30 Hz) swings less than ``flat_band_uv`` (lead off, flat line)
clipping           how many separate plateaus (>= 2 samples) sit exactly at the
                   record's maximum or minimum: an ADC rail cuts many beats at one value
emg                high-frequency (>= 20 Hz) noise between the QRS complexes: robust RMS
                   in µV and the signal-to-noise ratio against the QRS (dB, MIT-BIH
                   Noise Stress Test convention: S = QRS p-p² / 8)
baseline wander    peak-to-peak of the baseline (two-stage median filter, 0.2 s + 0.6 s)
                   in any 10 s stretch, mV; a lead-off step shows here too
mains              50 and 60 Hz line amplitude above the neighbouring spectrum, µV RMS
                   (only where the rate can carry it: fs > 2 × (f + 4 Hz))
heart rate         R peaks found with a Pan–Tompkins-style detector (5–15 Hz band,
                   derivative energy, 150 ms integration, adaptive threshold); bpm
=================  ==================================================================

Two outcomes beside ``ok``. **reject**: the lead is unusable (flat or lead-off over at least
half the record, or the QRS drowned in noise); the input is refused with the reason.
**warn**: the lead is processed and every flag with its measured value travels with the
result (``<stem>.json``, a waveform annotation in the DICOM object, the report page).

The thresholds were chosen on data (``python -m bench.quality`` prints the table): on lead I
of the 2,238 real 12-lead records of ../shared/data/ecg12 and on the same records with
faults injected. Why scipy and not NeuroKit2: the detector needs a band-pass, a peak search
and a median filter, all in scipy, which the core already imports; NeuroKit2 pulls in pandas,
scikit-learn, matplotlib and PyWavelets (~500 MB installed) and took 3–7 s to import on
this machine against 2 s for scipy.signal, paid by every ``convert`` and every service start.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage
from scipy import signal as sps

GATE_VERSION = "quality-gate 1"


@dataclass(frozen=True)
class Thresholds:
    """Where a measure turns into a flag. Units in the names; chosen in bench/quality.py."""

    # flat / lead-off
    flat_run_s: float = 0.8            # a value held this long is a drop-out or a rail (LUDB's
                                       # filtered isoelectric lines hold one value for up to 0.5 s)
    flat_window_s: float = 2.0         # windows long enough to hold a beat at 30 bpm
    flat_band_uv: float = 25.0         # QRS-band (5–30 Hz) peak-to-peak under this: no cardiac activity
    flat_warn_s: float = 0.8           # flat this long in all: warn
    flat_reject_fraction: float = 0.5  # flat over this share of the record: reject
    # clipping
    clip_plateaus: int = 2             # sharp plateaus of 2 samples at the extreme (one of >= 3 is enough)
    clip_touches: int = 3              # separate visits of exactly the extreme value
    # high-frequency (EMG) noise
    emg_warn_snr_db: float = 15.0
    emg_reject_snr_db: float = -3.0
    # baseline wander
    wander_warn_mv: float = 1.5
    step_warn_mv: float = 1.2          # baseline change within 0.2 s
    offset_warn_mv: float = 2.0        # median of the lead
    # mains
    mains_warn_uv: float = 15.0
    # heart rate
    hr_min_bpm: float = 25.0
    hr_max_bpm: float = 250.0


DEFAULT_THRESHOLDS = Thresholds()

FLAG_TEXT = {
    "flat": "flat line / lead off",
    "clipping": "clipping / saturation",
    "emg": "high-frequency (EMG) noise",
    "baseline": "baseline wander or step",
    "offset": "DC offset",
    "mains": "mains interference",
    "heart_rate": "implausible heart rate",
}


@dataclass(frozen=True)
class Flag:
    """One finding: ``code`` (a key of FLAG_TEXT), ``severity`` ("warn" or "reject"),
    ``text`` (one line a clinician reads, with the value and the threshold)."""

    code: str
    severity: str
    text: str


@dataclass
class QualityReport:
    """The gate's verdict on one lead.

    status: "ok", "warn" or "reject"; flags: what was found; measures: every measured
    value (units in the key names), flagged or not.
    """

    status: str
    flags: list[Flag] = field(default_factory=list)
    measures: dict[str, float | int | None] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """One line naming the rejecting flags (for the reason file)."""
        rejecting = [f.text for f in self.flags if f.severity == "reject"]
        return "signal quality too poor to reconstruct from: " + "; ".join(rejecting)

    def summary(self) -> str:
        """One line for the page and the DICOM annotation: 'WARN: a; b' or 'OK'."""
        if not self.flags:
            return "Signal quality of the measured lead: OK (no flag raised)"
        return f"Signal quality of the measured lead: {self.status.upper()}: " + "; ".join(f.text for f in self.flags)

    def to_json(self) -> dict:
        return {"gate": GATE_VERSION, "status": self.status, "flags": [asdict(f) for f in self.flags],
                "measures": self.measures}

    @classmethod
    def from_json(cls, data: dict) -> "QualityReport":
        flags = [Flag(**f) for f in data.get("flags", [])]
        return cls(str(data.get("status", "ok")), flags, dict(data.get("measures", {})))


# --- filters and detectors ------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _butter_sos(order: int, band: float | tuple[float, float], btype: str, fs: float) -> np.ndarray:
    """A Butterworth design, made once per rate (designing costs as much as filtering 10 s)."""
    sos = sps.butter(order, list(band) if isinstance(band, tuple) else band, btype=btype, fs=fs, output="sos")
    return sos


@functools.lru_cache(maxsize=64)
def _notch(f0: float, fs: float) -> tuple[np.ndarray, np.ndarray]:
    return sps.iirnotch(f0, 10.0, fs)


def _bandpass(x: np.ndarray, fs: float, lo: float, hi: float, order: int = 2) -> np.ndarray:
    hi = min(hi, 0.45 * fs)
    return sps.sosfiltfilt(_butter_sos(order, (lo, hi), "bandpass", fs), x)


def _highpass(x: np.ndarray, fs: float, cutoff: float, order: int = 4) -> np.ndarray:
    return sps.sosfiltfilt(_butter_sos(order, cutoff, "highpass", fs), x)


def detect_r_peaks(x_uv: np.ndarray, fs: float) -> np.ndarray:
    """Sample indices of R peaks (QRS complexes) in one lead: (N,) µV -> (beats,) int.

    Pan–Tompkins-style: 5–15 Hz band-pass, squared derivative, 150 ms moving integration,
    peaks at least 200 ms apart (300 bpm; a split QRS or a pacing spike is one beat) above 30 % of
    the median of the per-2-s maxima
    (robust to one huge artefact), each placed at the largest |band-passed| sample nearby.
    """
    x = np.asarray(x_uv, dtype=np.float64)
    if x.size < int(fs):
        return np.zeros(0, dtype=int)
    band = _bandpass(x - np.median(x), fs, 5.0, 15.0)
    energy = np.gradient(band) ** 2
    width = max(1, int(round(0.15 * fs)))
    integrated = ndimage.uniform_filter1d(energy, width)
    block = int(2 * fs)
    maxima = [integrated[i:i + block].max() for i in range(0, max(1, integrated.size - block // 2), block)]
    level = float(np.median(maxima))
    if level <= 0:
        return np.zeros(0, dtype=int)
    refractory = max(1, int(0.2 * fs))
    peaks, _ = sps.find_peaks(integrated, height=0.3 * level, distance=refractory)
    half = max(1, int(0.075 * fs))
    refined = np.unique([max(0, p - half) + int(np.argmax(np.abs(band[max(0, p - half):p + half]))) for p in peaks])
    kept: list[int] = []
    for p in refined.astype(int):  # refinement may bring two peaks closer than the refractory period
        if kept and p - kept[-1] < refractory:
            if abs(band[p]) > abs(band[kept[-1]]):
                kept[-1] = p
            continue
        kept.append(p)
    return np.asarray(kept, dtype=int)


def _notch_mains(x: np.ndarray, fs: float) -> np.ndarray:
    """``x`` without 50 and 60 Hz lines (zero-phase notches), so mains is not counted as EMG."""
    for f0 in (50.0, 60.0):
        if f0 < 0.48 * fs:
            b, a = _notch(f0, float(fs))
            x = sps.filtfilt(b, a, x)
    return x


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of the runs of True in a boolean array."""
    padded = np.r_[False, mask, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


def _flat_mask(x: np.ndarray, fs: float, th: Thresholds) -> np.ndarray:
    """Samples with no cardiac activity: constant runs, or dead 2 s windows of the QRS band."""
    n = x.size
    dead = np.zeros(n, dtype=bool)
    same = np.abs(np.diff(x)) <= 1e-6 * max(1.0, float(np.ptp(x)))
    for start, stop in _runs(same):
        if (stop - start + 1) / fs >= th.flat_run_s:
            dead[start:stop + 1] = True
    band = _bandpass(x, fs, 5.0, 30.0)
    win = int(th.flat_window_s * fs)
    if n >= win:
        # peak-to-peak of every window of ``win`` samples, each window marked dead as a whole
        swing = ndimage.maximum_filter1d(band, win) - ndimage.minimum_filter1d(band, win)
        centres = swing < th.flat_band_uv
        centres[: win // 2] = centres[n - (win - 1) // 2:] = False  # windows running off the ends
        dead |= ndimage.maximum_filter1d(centres.astype(np.uint8), win).astype(bool)
    return dead


def _plateaus_at(x: np.ndarray, value: float, tol: float, step: float, span: float) -> tuple[int, int, int]:
    """How an extreme ``value`` is reached: (sharp plateaus of >= 3 samples, sharp plateaus of
    >= 2 samples, separate touches of any length).

    A sharp plateau is a run of samples within ``tol`` of ``value`` entered and left by a jump
    of at least 3 quantisation steps (``step``) and 3 % of the signal's range (``span``): what
    an ADC rail does to a steep R wave, unlike the rounded top of a wave, whose neighbours
    differ by a step or two. Touches count every run; at a low rate a clipped R wave may keep
    a single sample at the rail, but several beats then share exactly the same extreme.
    """
    long = short = touches = 0
    for a, b in _runs(np.abs(x - value) <= tol):
        touches += 1
        if b - a < 2:
            continue
        before = abs(x[a - 1] - value) if a > 0 else np.inf
        after = abs(x[b] - value) if b < x.size else np.inf
        if min(before, after) >= max(3 * step, 0.03 * span):
            short += 1
            long += b - a >= 3
    return long, short, touches


def _baseline(x: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
    """Baseline by two median filters (0.2 s, 0.6 s) on a 50 Hz copy; returns it and its rate."""
    step = max(1, int(fs // 50))
    small = x[: x.size - x.size % step].reshape(-1, step).mean(axis=1) if step > 1 else x
    rate = fs / step
    first = ndimage.median_filter(small, size=max(1, int(0.2 * rate)) | 1, mode="nearest")
    return ndimage.median_filter(first, size=max(1, int(0.6 * rate)) | 1, mode="nearest"), rate


def _mains_uv(x: np.ndarray, fs: float) -> tuple[float | None, float | None]:
    """Largest 50/60 Hz line amplitude above its neighbourhood, µV RMS, and its frequency."""
    best: tuple[float | None, float | None] = (None, None)
    nper = int(min(x.size, 4 * fs))
    freqs, psd = sps.welch(x - np.mean(x), fs=fs, nperseg=nper, detrend="linear")
    df = freqs[1] - freqs[0]
    for f0 in (50.0, 60.0):
        if fs <= 2 * (f0 + 4.0):
            continue
        line = (freqs >= f0 - 1.0) & (freqs <= f0 + 1.0)
        near = ((freqs >= f0 - 6.0) & (freqs < f0 - 2.0)) | ((freqs > f0 + 2.0) & (freqs <= f0 + 6.0))
        if not line.any() or not near.any():
            continue
        excess = float(np.sum(psd[line]) - np.median(psd[near]) * line.sum()) * df
        amp = float(np.sqrt(max(0.0, excess)))
        if best[0] is None or amp > best[0]:
            best = (amp, f0)
    return best


def assess_quality(x_uv: np.ndarray, fs: float, th: Thresholds = DEFAULT_THRESHOLDS) -> QualityReport:
    """Measure one lead and decide: (N,) µV at ``fs`` Hz -> :class:`QualityReport`.

    The lead has passed ``check_single_lead`` (finite, 2 s to 1 h, plausible amplitude).
    """
    x = np.asarray(x_uv, dtype=np.float64)
    n = x.size
    duration = n / fs
    m: dict[str, float | int | None] = {"duration_s": round(duration, 3), "fs_hz": float(fs)}
    flags: list[Flag] = []

    # flat line / lead off / held value
    dead = _flat_mask(x, fs, th)
    flat_s = float(dead.sum()) / fs
    m["flat_s"] = round(flat_s, 2)
    m["flat_fraction"] = round(flat_s / duration, 4)
    if flat_s / duration >= th.flat_reject_fraction:
        flags.append(Flag("flat", "reject", f"no ECG signal over {flat_s:.1f} of {duration:.1f} s"
                                            " (flat line or lead off)"))
    elif flat_s >= th.flat_warn_s:
        flags.append(Flag("flat", "warn", f"flat line / lead off for {flat_s:.1f} s of {duration:.1f} s"))

    # clipping at the record's extremes
    tol = 1e-6 * max(1.0, float(np.ptp(x)))
    diffs = np.abs(np.diff(x))
    step = float(np.percentile(diffs[diffs > tol], 10)) if np.any(diffs > tol) else tol
    plateaus = [_plateaus_at(x, float(v), tol, step, float(np.ptp(x))) for v in (x.max(), x.min())]
    long_plateaus = max(p[0] for p in plateaus)
    short_plateaus = max(p[1] for p in plateaus)
    touches = max(p[2] for p in plateaus)
    m["clip_plateaus"] = int(short_plateaus)
    m["clip_touches"] = int(touches)
    if long_plateaus >= 1 or short_plateaus >= th.clip_plateaus or touches >= th.clip_touches:
        flags.append(Flag("clipping", "warn", f"clipped: {short_plateaus} flat-topped peak(s) at the"
                                              f" signal's limit ({x.max() / 1000:.2f} / {x.min() / 1000:.2f} mV)"))

    # R peaks and heart rate (on the live part of the record)
    peaks = detect_r_peaks(x, fs)
    peaks = peaks[~dead[peaks]] if peaks.size else peaks
    m["beats"] = int(peaks.size)
    rr = np.diff(peaks) / fs if peaks.size >= 2 else np.zeros(0)
    if rr.size:  # an interval across a flat stretch is not an RR interval
        rr = rr[[not dead[a:b].any() for a, b in zip(peaks[:-1], peaks[1:])]]
    hr = float(60.0 / np.median(rr)) if rr.size else None
    m["heart_rate_bpm"] = None if hr is None else round(hr, 1)
    live = duration - flat_s
    if hr is None and live >= 4.0:
        flags.append(Flag("heart_rate", "warn", "no QRS complexes found"))
    elif hr is not None and not (th.hr_min_bpm <= hr <= th.hr_max_bpm):
        flags.append(Flag("heart_rate", "warn", f"implausible heart rate {hr:.0f} bpm (R-peak detection;"
                                                f" plausible {th.hr_min_bpm:g}-{th.hr_max_bpm:g})"))

    # high-frequency (EMG) noise between the QRS complexes, against the QRS amplitude
    hf = _highpass(_notch_mains(x, fs), fs, 20.0) if fs > 50.0 else np.zeros_like(x)
    quiet = ~dead
    half = int(0.12 * fs)
    wide = _bandpass(x, fs, 0.5, 40.0)
    qrs_amp = []
    for p in peaks:
        quiet[max(0, p - half):p + half] = False
        seg = wide[max(0, p - int(0.06 * fs)):p + int(0.06 * fs)]
        qrs_amp.append(seg.max() - seg.min())
    pool = hf[quiet] if quiet.sum() > fs else hf[~dead] if (~dead).sum() > fs else hf
    noise = float(1.4826 * np.median(np.abs(pool - np.median(pool))))
    qrs = float(np.median(qrs_amp)) if qrs_amp else float(np.percentile(wide, 99) - np.percentile(wide, 1))
    m["emg_noise_uv"] = round(noise, 2)
    m["qrs_uv"] = round(qrs, 1)
    snr = 10 * np.log10((qrs ** 2 / 8) / noise ** 2) if noise > 0 else float("inf")
    m["snr_db"] = round(float(snr), 2) if np.isfinite(snr) else None
    if flat_s / duration < th.flat_reject_fraction:
        if snr < th.emg_reject_snr_db:
            flags.append(Flag("emg", "reject", f"QRS drowned in high-frequency noise: SNR {snr:.1f} dB"
                                               f" (noise {noise:.0f} µV RMS)"))
        elif snr < th.emg_warn_snr_db:
            flags.append(Flag("emg", "warn", f"high-frequency (EMG) noise {noise:.0f} µV RMS,"
                                             f" SNR {snr:.1f} dB"))

    # baseline wander, steps and offset
    base, rate = _baseline(x, fs)
    win = int(10 * rate)
    spans = [base[i:i + win] for i in range(0, max(1, base.size - win // 2), win)] or [base]
    wander = max(float(np.ptp(s)) for s in spans if s.size) / 1000.0
    lag = max(1, int(0.2 * rate))
    jump = float(np.max(np.abs(base[lag:] - base[:-lag]))) / 1000.0 if base.size > lag else 0.0
    offset = float(np.median(x)) / 1000.0
    m["baseline_wander_mv"] = round(wander, 3)
    m["baseline_step_mv"] = round(jump, 3)
    m["offset_mv"] = round(offset, 3)
    if jump >= th.step_warn_mv:
        flags.append(Flag("baseline", "warn", f"baseline step of {jump:.1f} mV within 0.2 s"
                                              " (electrode moved or came off)"))
    elif wander >= th.wander_warn_mv:
        flags.append(Flag("baseline", "warn", f"baseline wander {wander:.1f} mV peak-to-peak within 10 s"))
    if abs(offset) >= th.offset_warn_mv:
        flags.append(Flag("offset", "warn", f"DC offset {offset:+.1f} mV (raw ADC counts, or an unfiltered"
                                            " DC-coupled lead?)"))

    # mains interference
    mains, mains_f = _mains_uv(x, fs)
    m["mains_uv"] = None if mains is None else round(mains, 2)
    m["mains_hz"] = mains_f
    if mains is not None and mains >= th.mains_warn_uv:
        flags.append(Flag("mains", "warn", f"mains interference {mains:.0f} µV RMS at {mains_f:g} Hz"))

    status = "reject" if any(f.severity == "reject" for f in flags) else "warn" if flags else "ok"
    return QualityReport(status, flags, m)
