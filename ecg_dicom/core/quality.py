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
rate               whether the signal contradicts its sampling rate (a ``.npy`` without a
                   sidecar read at an assumed rate): the median frequency of the
                   derivative of the median beat (QRS energy, 13–26 Hz in 90 % of real
                   records) with the heart rate; a rate half the true one puts it below
                   12 Hz at under 55 bpm, a rate 2–5 times too high above 35 Hz at over
                   90 bpm
=================  ==================================================================

Two outcomes beside ``ok``. **reject**: the lead is unusable (flat or lead-off over at least
half the record, or the QRS drowned in noise); the input is refused with the reason.
A lead that is on but **near-isoelectric** (beats that stand out of the noise, QRS under
``isoelectric_qrs_uv`` peak-to-peak: the heart's axis at right angles to the lead) is refused
with its own reason, its measured QRS amplitude, not as a flat line or lead off.
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
from typing import Sequence

import numpy as np

GATE_VERSION = "quality-gate 3"


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
    # near-isoelectric: QRS (0.5–40 Hz p-p, median over every detected beat) under this...
    isoelectric_qrs_uv: float = 50.0   # (the smallest lead I or II of the 2,127 physical records: 124 µV)
    # ...while the beats' QRS band (5–30 Hz p-p) stands this many times above the noise RMS
    # (amplifier noise alone, a lead off: 1.3–2; a real lead scaled down to 12–37 µV: 7–10)
    isoelectric_snr: float = 4.0
    isoelectric_min_beats: int = 3
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
    # a sampling rate the signal contradicts (chosen on lead I of 658 real records at their own
    # rate, 1.1 % flagged, and the same read at 1/2, 2 and 5 times their rate: 85 %, 70 % and
    # 73 % flagged; issue 20 item 5)
    rate_hr_low_bpm: float = 55.0      # under this with the QRS energy under rate_qrs_low_hz: rate too low
    rate_qrs_low_hz: float = 12.0
    rate_hr_high_bpm: float = 90.0     # over this with the QRS energy over rate_qrs_high_hz: rate too high
    rate_qrs_high_hz: float = 35.0
    rate_hr_alone_low_bpm: float = 30.0    # beyond these the heart rate alone says it
    rate_hr_alone_high_bpm: float = 220.0


DEFAULT_THRESHOLDS = Thresholds()

FLAG_TEXT = {
    "flat": "flat line / lead off",
    "isoelectric": "near-isoelectric lead",
    "clipping": "clipping / saturation",
    "emg": "high-frequency (EMG) noise",
    "baseline": "baseline wander or step",
    "offset": "DC offset",
    "mains": "mains interference",
    "heart_rate": "implausible heart rate",
    "rate": "sampling rate probably wrong",
}
QRS_TYPICAL_HZ = 20.0  # median frequency of the median beat's derivative in real records (median)
COMMON_RATES_HZ = (100.0, 125.0, 128.0, 200.0, 250.0, 256.0, 300.0, 360.0, 400.0, 500.0, 1000.0, 2000.0)
RATE_BEATS = 32  # beats in the median beat at most


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
        return self.reason_for(None)

    def reason_for(self, lead: str | None) -> str:
        """:attr:`reason`, for ``lead`` (I or II; None: unknown): a near-isoelectric lead is
        named, with its QRS amplitude, and the other lead asked for."""
        rejecting = [f for f in self.flags if f.severity == "reject"]
        if any(f.code == "isoelectric" for f in rejecting):
            flag = next(f for f in rejecting if f.code == "isoelectric")
            other = {"I": "lead II", "II": "lead I"}.get(lead or "", "another lead")
            return f"{'lead ' + lead if lead else 'the lead'} is {flag.text}: no signal to reconstruct from; send {other}"
        return "signal quality too poor to reconstruct from: " + "; ".join(f.text for f in rejecting)

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


# --- zero-phase filtering in the frequency domain -------------------------------------------
# Every band the gate looks at is cut from one FFT of the lead: a zero-phase (forward-backward)
# IIR filter's response is |H(f)|², which for a Butterworth or notch design is known in closed
# form, so multiplying the spectrum by it and transforming back gives what scipy's
# sosfiltfilt / filtfilt give, up to the first and last few hundred ms (tested against scipy).
# One rfft plus one short irfft per band, in numpy, for all the leads of a batch at once.
_PAD_S = 0.5  # extension at each end, so the ends' transients do not meet round the circle
_ODD_PAD = 15  # of which an odd reflection as long as filtfilt's (3 x (2 x sections + 1))
DETECTOR_HZ = 100.0  # the R-peak detector works on its 5–15 Hz band at fs / k >= this rate
BATCH_SAMPLES = 1 << 20  # leads measured together hold at most this many samples (memory)


@functools.lru_cache(maxsize=512)
def _fast_length(n: int) -> int:
    """The smallest 5-smooth number (2^a 3^b 5^c) >= n: a length pocketfft transforms fast."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


@functools.lru_cache(maxsize=64)
def _response(kind: str, params: tuple[float, ...], fs: float, length: int) -> np.ndarray:
    """|H(f)|² on the rfft grid of ``length`` samples at ``fs`` Hz: the magnitude response of
    the zero-phase filter (applied forward and backward) that scipy designs as

    ``("bandpass", (order, lo, hi))``: ``butter(order, [lo, hi], "bandpass", fs=fs)``;
    ``("highpass", (order, cutoff))``: ``butter(order, cutoff, "highpass", fs=fs)``;
    ``("notch", (f0, q))``: ``iirnotch(f0, q, fs)``.
    Butterworth designs are bilinear transforms with pre-warping, so with t = tan(π f / fs) a
    low-pass prototype of order N gives 1 / (1 + W^2N), W = t_c / t (high-pass) or
    (t² - t_lo t_hi) / (t (t_hi - t_lo)) (band-pass). Read-only (cached).
    """
    freqs = np.arange(length // 2 + 1) * fs / length
    t = np.tan(np.pi * np.minimum(freqs, 0.5 * fs) / fs)
    if kind == "bandpass":
        order, lo, hi = params
        t_lo, t_hi = np.tan(np.pi * lo / fs), np.tan(np.pi * hi / fs)
        num = (t * (t_hi - t_lo)) ** (2 * order)
        out = num / (num + (t * t - t_lo * t_hi) ** (2 * order))
    elif kind == "highpass":
        order, cutoff = params
        num = t ** (2 * order)
        out = num / (num + np.tan(np.pi * cutoff / fs) ** (2 * order))
    elif kind == "notch":
        f0, q = params
        w0 = 2 * np.pi * f0 / fs
        beta = np.tan(w0 / q / 2)                           # iirnotch: -3 dB bandwidth f0 / q
        gain = 1.0 / (1.0 + beta)
        z = np.exp(-1j * 2 * np.pi * freqs / fs)
        b = gain * (1 - 2 * np.cos(w0) * z + z * z)
        a = 1 - 2 * gain * np.cos(w0) * z + (2 * gain - 1) * z * z
        out = np.abs(b / a) ** 2                            # forward and backward: |H|²
    else:
        raise ValueError(kind)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=64)
def _central_difference(length: int, bins: int) -> np.ndarray:
    """i sin(2π f / fs) on the first ``bins`` of an rfft of ``length``: the response of the
    central difference (x[i + 1] - x[i - 1]) / 2 (np.gradient) at the lead's rate."""
    out = 1j * np.sin(2 * np.pi * np.arange(bins) / length)
    out.setflags(write=False)
    return out


class _Spectra:
    """The spectra of R leads of N samples at ``fs`` Hz, (R, N) µV, from which zero-phase
    band-limited copies are cut, (R, N) each.

    Each lead is extended at both ends as filtfilt extends it (odd reflection of 15 samples,
    then its steady state: the end value held), a straight line joining the two ends is taken
    off (every band here has a high-pass edge, which a line does not pass) so the circular
    transform sees no jump, and zero-padded to a fast length.
    """

    def __init__(self, x: np.ndarray, fs: float) -> None:
        rows, n = x.shape
        # k: the decimation of :meth:`decimated_bandpass`; the padding and the transform length
        # are multiples of it, so sample j of a decimated band is sample j * k of the lead
        self.k = k = max(1, int(fs // DETECTOR_HZ))
        pad = -(-max(int(_PAD_S * fs), _ODD_PAD) // k) * k
        odd = min(n - 1, _ODD_PAD)
        ext = np.empty((rows, n + 2 * pad))
        ext[:, pad:pad + n] = x
        ext[:, pad - odd:pad] = 2 * x[:, :1] - x[:, odd:0:-1]
        ext[:, pad + n:pad + n + odd] = 2 * x[:, -1:] - x[:, -2:-odd - 2:-1]
        ext[:, :pad - odd] = ext[:, pad - odd:pad - odd + 1]
        ext[:, pad + n + odd:] = ext[:, pad + n + odd - 1:pad + n + odd]
        ext -= np.linspace(ext[:, 0], ext[:, -1], ext.shape[1], axis=1)
        self.n, self.pad, self.fs = n, pad, float(fs)
        self.length = k * _fast_length(-(-ext.shape[1] // k))
        self.spectrum = np.fft.rfft(ext, self.length, axis=1)

    def band(self, *responses: tuple[str, tuple[float, ...]]) -> np.ndarray:
        """The leads through the zero-phase filters ``responses`` (see :func:`_response`)."""
        spec = self.spectrum
        for kind, params in responses:
            spec = spec * _response(kind, params, self.fs, self.length)
        return np.fft.irfft(spec, self.length, axis=1)[:, self.pad:self.pad + self.n]

    def bandpass(self, lo: float, hi: float, order: int = 2) -> np.ndarray:
        return self.band(("bandpass", (order, lo, min(hi, 0.45 * self.fs))))

    def decimated_bandpass(self, lo: float, hi: float, order: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`bandpass` at fs / k (:attr:`k`), for a band well below that rate's Nyquist
        frequency (the spectrum cut there, a short inverse transform), and its slope as
        np.gradient gives it at the lead's own rate (µV per sample). 2 x (R, ceil(N / k))."""
        short = self.length // self.k
        bins = short // 2 + 1
        response = _response("bandpass", (order, lo, min(hi, 0.45 * self.fs)), self.fs, self.length)
        spec = self.spectrum[:, :bins] * response[:bins]
        start = self.pad // self.k
        stop = start + -(-self.n // self.k)
        band = np.fft.irfft(spec, short, axis=1)[:, start:stop] / self.k
        slope = np.fft.irfft(spec * _central_difference(self.length, bins), short, axis=1)[:, start:stop] / self.k
        return band, slope


# --- small numpy helpers ----------------------------------------------------------------------
def _run_bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) of the runs of True in a boolean array (stop exclusive)."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    return edges[::2], edges[1::2]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of the runs of True in a boolean array."""
    starts, stops = _run_bounds(mask)
    return list(zip(starts.tolist(), stops.tolist()))


def _sparse_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_run_bounds` for a mask with few True samples."""
    at = np.flatnonzero(mask)
    if at.size == 0:
        return at, at
    breaks = np.flatnonzero(np.diff(at) > 1)
    return np.concatenate(([at[0]], at[breaks + 1])), np.concatenate((at[breaks] + 1, [at[-1] + 1]))


def _cover(n: int, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """(n,) bool: True inside any of the spans [starts, stops) (clipped to the array)."""
    if starts.size < 64:
        out = np.zeros(n, dtype=bool)
        for a, b in zip(np.clip(starts, 0, n).tolist(), np.clip(stops, 0, n).tolist()):
            out[a:b] = True
        return out
    count = (np.bincount(np.clip(starts, 0, n), minlength=n + 1)
             - np.bincount(np.clip(stops, 0, n), minlength=n + 1))
    return np.cumsum(count[:n]) > 0


def _sliding_swing(a: np.ndarray, width: int) -> np.ndarray:
    """max - min of a[s:s + width] for every s in 0..N-width: (N - width + 1,).

    van Herk / Gil–Werman: running maxima from both ends of blocks of ``width`` samples, so
    O(N) whatever the width; maximum and minimum (the maximum of -a) in one pass.
    """
    n = a.size
    blocks = -(-n // width)
    padded = np.full((2, blocks * width), -np.inf)
    padded[0, :n] = a
    np.negative(a, out=padded[1, :n])
    padded = padded.reshape(2, blocks, width)
    prefix = np.maximum.accumulate(padded, axis=2).reshape(2, -1)
    suffix = np.maximum.accumulate(padded[:, :, ::-1], axis=2)[:, :, ::-1].reshape(2, -1)
    both = np.maximum(suffix[:, :n - width + 1], prefix[:, width - 1:n])
    return both[0] + both[1]


def _running_extreme(a: np.ndarray, width: int, pick) -> np.ndarray:
    """pick (np.maximum or np.minimum) over a[..., s:s + width] for every s, along the last
    axis: (..., N) -> (..., N - width + 1), by doubling spans (log2(width) passes)."""
    out, span = a, 1
    while span * 2 <= width:
        out = pick(out[..., :-span], out[..., span:])
        span *= 2
    if span < width:
        out = pick(out[..., :out.shape[-1] - (width - span)], out[..., width - span:])
    return out


def _may_be_quiet(a: np.ndarray, width: int, limit: float) -> np.ndarray:
    """(R,) bool for (R, N) rows: False where no window a[r, s:s + width] can swing less than
    ``limit`` (a cheap screen before :func:`_sliding_swing`). Each window holds whole blocks of
    width // 40 samples; the swing of those blocks is a lower bound of the window's."""
    rows, n = a.shape
    block = max(1, width // 40)
    blocks = n // block
    inner = width // block - 1                 # whole blocks inside any window
    if inner < 1 or blocks < inner + 1:
        return np.ones(rows, dtype=bool)
    tiles = a[:, :blocks * block].reshape(rows, blocks, block)
    highs = _running_extreme(tiles.max(axis=2)[:, 1:], inner, np.maximum)
    lows = _running_extreme(tiles.min(axis=2)[:, 1:], inner, np.minimum)
    starts = (n - width) // block + 1          # block indices k of the window starts
    return np.any(highs[:, :starts] - lows[:, :starts] < limit, axis=1)


def _median(values: np.ndarray) -> float:
    """np.median of a 1-D array (the same value), without its overhead."""
    size = values.size
    k = size // 2
    if size <= 32:
        v = sorted(values.tolist())
        return float(v[k]) if size % 2 else (v[k - 1] + v[k]) / 2.0
    if size % 2:
        return float(np.partition(values, k)[k])
    part = np.partition(values, (k - 1, k))
    return float((part[k - 1] + part[k]) / 2.0)


def _moving_mean(a: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along the last axis with mirrored ends (scipy.ndimage's
    uniform_filter1d, "reflect" mode): (..., N) -> (..., N)."""
    left, right = width // 2, width - 1 - width // 2
    padded = np.concatenate([a[..., left - 1::-1] if left else a[..., :0], a,
                             a[..., :-right - 1:-1] if right else a[..., :0]], axis=-1)
    c = np.cumsum(padded, axis=-1)
    out = c[..., width - 1:].copy()
    out[..., 1:] -= c[..., :-width]
    return out / width


def _running_median(a: np.ndarray, size: int, chunk: int = 8192) -> np.ndarray:
    """Centred running median of odd ``size`` along the last axis of (R, N), ends extended by
    their edge values (scipy.ndimage.median_filter's "nearest" mode). Bounded memory."""
    if size <= 1:
        return a.copy()
    half = size // 2
    padded = np.concatenate([np.repeat(a[:, :1], half, axis=1), a, np.repeat(a[:, -1:], half, axis=1)], axis=1)
    s0, s1 = padded.strides
    windows = np.lib.stride_tricks.as_strided(padded, (a.shape[0], a.shape[1], size), (s0, s1, s1),
                                              writeable=False)
    out = np.empty(a.shape)
    for start in range(0, a.shape[1], chunk):
        out[:, start:start + chunk] = np.sort(windows[:, start:start + chunk], axis=2)[..., half]
    return out


def _local_maxima(a: np.ndarray) -> np.ndarray:
    """Indices of local maxima (a flat top counts once, at its middle), as scipy's find_peaks."""
    d = np.diff(a)
    moves = np.flatnonzero(d)
    if moves.size < 2:
        return np.zeros(0, dtype=np.int64)
    up = d[moves[:-1]] > 0
    down = d[moves[1:]] < 0
    k = np.flatnonzero(up & down)
    return (moves[k] + 1 + moves[k + 1]) // 2


def _thin_by_distance(peaks: np.ndarray, heights: np.ndarray, distance: int) -> np.ndarray:
    """Keep the highest peaks first and drop any peak closer than ``distance`` samples to a
    kept one (scipy's find_peaks ``distance``)."""
    keep = np.ones(peaks.size, dtype=bool)
    p = peaks.tolist()
    for i in np.argsort(heights)[::-1].tolist():
        if not keep[i]:
            continue
        j = i - 1
        while j >= 0 and p[i] - p[j] < distance:
            keep[j] = False
            j -= 1
        j = i + 1
        while j < len(p) and p[j] - p[i] < distance:
            keep[j] = False
            j += 1
    return peaks[keep]


# --- detectors ---------------------------------------------------------------------------------
def _peaks_in_bands(band: np.ndarray, slope: np.ndarray, fs: float) -> list[np.ndarray]:
    """R peaks of each row of ``band``, (R, M) 5–15 Hz band at ``fs`` Hz with its ``slope``
    (see :func:`detect_r_peaks`), in samples of ``band``."""
    rows, n = band.shape
    integrated = _moving_mean(slope * slope, max(1, int(round(0.15 * fs))))
    block = int(2 * fs)
    blocks = len(range(0, max(1, n - block // 2), block))
    tiled = np.full((rows, blocks * block), -np.inf)
    stop = min(n, blocks * block)
    tiled[:, :stop] = integrated[:, :stop]
    levels = np.median(tiled.reshape(rows, blocks, block).max(axis=2), axis=1)
    d = np.diff(integrated, axis=1)
    strict = np.zeros((rows, n), dtype=bool)
    strict[:, 1:-1] = (d[:, :-1] > 0) & (d[:, 1:] < 0)
    candidates = strict & (integrated >= 0.3 * levels[:, None])
    plateaus = np.any(d == 0, axis=1)           # rows where a flat top may be a peak: scipy's rule
    refractory = max(1, int(0.2 * fs))
    half = max(1, int(0.075 * fs))
    mag = np.abs(band)
    out = []
    for r in range(rows):
        if levels[r] <= 0:
            out.append(np.zeros(0, dtype=int))
            continue
        if plateaus[r]:
            peaks = _local_maxima(integrated[r])
            peaks = peaks[integrated[r, peaks] >= 0.3 * levels[r]]
        else:
            peaks = np.flatnonzero(candidates[r])
        peaks = _thin_by_distance(peaks, integrated[r, peaks], refractory)
        if peaks.size == 0:
            out.append(np.zeros(0, dtype=int))
            continue
        # each peak moved to the largest |band| within ±75 ms
        idx = np.clip(peaks[:, None] + np.arange(-half, half)[None, :], 0, n - 1)
        refined = np.unique(idx[np.arange(peaks.size), np.argmax(mag[r, idx], axis=1)])
        kept: list[int] = []
        row = mag[r]
        for p in refined.tolist():  # refinement may bring two peaks closer than the refractory period
            if kept and p - kept[-1] < refractory:
                if row[p] > row[kept[-1]]:
                    kept[-1] = p
                continue
            kept.append(p)
        out.append(np.asarray(kept, dtype=int))
    return out


def _r_peaks(spectra: _Spectra) -> list[np.ndarray]:
    """R peaks of each lead behind ``spectra``, in its samples (see :func:`detect_r_peaks`)."""
    if spectra.n < int(spectra.fs):
        return [np.zeros(0, dtype=int) for _ in range(spectra.spectrum.shape[0])]
    k = spectra.k
    band, slope = spectra.decimated_bandpass(5.0, 15.0)
    found = _peaks_in_bands(band, slope, spectra.fs / k)
    if k == 1:
        return found
    # back to the lead's rate: the vertex of a parabola through |band| around each peak
    mag = np.abs(band)
    last = band.shape[1] - 1
    out = []
    for r, peaks in enumerate(found):
        a, b, c = mag[r, np.maximum(peaks - 1, 0)], mag[r, peaks], mag[r, np.minimum(peaks + 1, last)]
        curve = a - 2 * b + c
        ok = (peaks > 0) & (peaks < last) & (curve < 0)
        offset = np.zeros(peaks.size)
        offset[ok] = np.clip(0.5 * (a[ok] - c[ok]) / curve[ok], -0.5, 0.5)
        out.append(np.clip(np.rint((peaks + offset) * k).astype(int), 0, spectra.n - 1))
    return out


RR_IRREGULAR = 0.10  # rr_variation above this: the rhythm is called irregular on the page


def rr_variation(rr_s: np.ndarray) -> float | None:
    """How irregular the RR intervals (s) are: their robust spread (1.4826 × median absolute
    deviation) over their median; None with fewer than 3 intervals. Sinus rhythm stays well
    under :data:`RR_IRREGULAR`; atrial fibrillation lies far above it."""
    rr = np.asarray(rr_s, dtype=np.float64)
    if rr.size < 3:
        return None
    middle = _median(rr)
    return float(1.4826 * _median(np.abs(rr - middle)) / middle) if middle > 0 else None


def rhythm(x_uv: np.ndarray, fs: float) -> tuple[float | None, float | None, int]:
    """Heart rate (bpm), RR variation (:func:`rr_variation`) and beats of one lead, as the
    gate measures them: (N,) µV at ``fs`` Hz."""
    peaks = detect_r_peaks(x_uv, fs)
    rr = np.diff(peaks) / fs
    return (60.0 / _median(rr) if rr.size else None), rr_variation(rr), int(peaks.size)


def detect_r_peaks(x_uv: np.ndarray, fs: float) -> np.ndarray:
    """Sample indices of R peaks (QRS complexes) in one lead: (N,) µV -> (beats,) int.

    Pan–Tompkins-style: 5–15 Hz band-pass, squared derivative, 150 ms moving integration,
    peaks at least 200 ms apart (300 bpm; a split QRS or a pacing spike is one beat) above 30 % of
    the median of the per-2-s maxima
    (robust to one huge artefact), each placed at the largest |band-passed| sample nearby.
    The band is worked on at fs / k >= 100 Hz (``DETECTOR_HZ``; it holds nothing above
    50 Hz) and each peak placed back at the lead's rate by parabolic interpolation.
    """
    x = np.asarray(x_uv, dtype=np.float64)
    if x.size < int(fs):
        return np.zeros(0, dtype=int)
    return _r_peaks(_Spectra(x[None, :], fs))[0]


def qrs_frequency(x: np.ndarray, fs: float, peaks: np.ndarray) -> float | None:
    """Median frequency (Hz) of the power of the median beat's derivative: where the QRS
    energy lies, (N,) µV at ``fs`` Hz with its R peaks (sample indices). The median over
    beats (±0.25 s around up to ``RATE_BEATS`` R peaks) keeps the QRS and leaves noise out;
    with fewer than 3 beats the whole lead stands in. None: no signal."""
    w = int(0.25 * fs)
    inside = peaks[(peaks >= w) & (peaks < x.size - w)]
    if inside.size >= 3:
        inside = inside[np.linspace(0, inside.size - 1, min(inside.size, RATE_BEATS)).astype(int)]
        d = np.median(np.diff(x[inside[:, None] + np.arange(-w, w)[None, :]], axis=1), axis=0)
    else:
        d = np.diff(x)
    if d.size < 8:
        return None
    d = d * _hann(d.size)
    n = max(1024, 1 << int(np.ceil(np.log2(d.size))))
    freqs = np.fft.rfftfreq(n, 1.0 / fs)
    band = (freqs > 1.0) & (freqs < min(0.45 * fs, 150.0))
    power = np.abs(np.fft.rfft(d, n))[band] ** 2
    total = np.cumsum(power)
    if not total.size or total[-1] <= 0:
        return None
    return float(freqs[band][np.searchsorted(total, total[-1] / 2)])


@functools.lru_cache(maxsize=16)
def _hann(n: int) -> np.ndarray:
    return np.hanning(n)


def rate_suspicion(hr: float | None, qrs_hz: float | None, fs: float, th: Thresholds = DEFAULT_THRESHOLDS
                   ) -> str | None:
    """Why the sampling rate ``fs`` looks wrong (one line naming the likely rate), or None."""
    if hr is None:
        return None
    low_qrs = qrs_hz is not None and qrs_hz < th.rate_qrs_low_hz
    high_qrs = qrs_hz is not None and qrs_hz > th.rate_qrs_high_hz
    if hr < th.rate_hr_alone_low_bpm or (hr < th.rate_hr_low_bpm and low_qrs):
        direction, factor = "higher", max(2.0, QRS_TYPICAL_HZ / qrs_hz) if qrs_hz else 2.0
    elif hr > th.rate_hr_alone_high_bpm or (hr > th.rate_hr_high_bpm and high_qrs):
        direction, factor = "lower", min(0.5, QRS_TYPICAL_HZ / qrs_hz) if qrs_hz else 0.5
    else:
        return None
    others = [r for r in COMMON_RATES_HZ if (r > fs if direction == "higher" else r < fs)]
    likely = min(others, key=lambda r: abs(np.log(r / (fs * factor)))) if others else fs * factor
    qrs = f", QRS energy at {qrs_hz:.0f} Hz (11-30 Hz expected)" if qrs_hz is not None else ""
    then = hr * likely / fs  # the beats found at fs may be noise when fs is far off: said only if plausible
    would = f" it would be {then:.0f} bpm" if 40.0 <= then <= 180.0 else ""
    return (f"sampling rate probably {direction} than {fs:g} Hz: heart rate {hr:.0f} bpm{qrs}; recorded at"
            f" {likely:g} Hz?{would} (check the rate: a sidecar's fs, or --fs)")


def _flat_masks(x: np.ndarray, band: np.ndarray, fs: float, th: Thresholds, spans: np.ndarray) -> np.ndarray:
    """(R, N) bool, samples with no cardiac activity: constant runs, or dead 2 s windows of the
    QRS band (``band``: the leads' 5–30 Hz band; ``spans``: their peak-to-peak, (R,))."""
    rows, n = x.shape
    dead = np.zeros((rows, n), dtype=bool)
    same = np.abs(np.diff(x, axis=1)) <= (1e-6 * np.maximum(1.0, spans))[:, None]
    run = int(th.flat_run_s * fs) - 2          # (at most) the equal neighbours of a run long enough
    half = run // 2
    if half >= 1:   # a run of ``run`` equal neighbours holds an aligned block of ``half``: look only then
        whole = same.shape[1] // half * half
        suspects = np.flatnonzero(same[:, :whole].reshape(rows, -1, half).all(axis=2).any(axis=1))
    else:
        suspects = np.arange(rows)
    for r in suspects.tolist():
        starts, stops = _run_bounds(same[r])   # runs of equal neighbours: samples start..stop
        long = (stops - starts + 1) / fs >= th.flat_run_s
        dead[r] = _cover(n, starts[long], stops[long] + 1)
    win = int(th.flat_window_s * fs)
    if n >= win:
        # windows band[s:s + win] that swing less than flat_band_uv, each marked dead as a whole
        # (the span scipy's centred filters of an even width give: s + 1 .. s + win)
        for r in np.flatnonzero(_may_be_quiet(band, win, th.flat_band_uv)).tolist():
            quiet = np.flatnonzero(_sliding_swing(band[r], win) < th.flat_band_uv)
            if quiet.size:
                dead[r] |= _cover(n, quiet + win // 2 - (win - 1) // 2, quiet + 2 * (win // 2) + 1)
    return dead


def _plateaus_at(x: np.ndarray, runs: tuple[np.ndarray, np.ndarray], value: float, step: float,
                 span: float) -> tuple[int, int, int]:
    """How an extreme ``value`` is reached, from the ``runs`` (starts, stops) of samples at it:
    (sharp plateaus of >= 3 samples, sharp plateaus of >= 2 samples, separate touches of any
    length).

    A sharp plateau is a run entered and left by a jump of at least 3 quantisation steps
    (``step``) and 3 % of the signal's range (``span``): what an ADC rail does to a steep R
    wave, unlike the rounded top of a wave, whose neighbours differ by a step or two. Touches
    count every run; at a low rate a clipped R wave may keep a single sample at the rail, but
    several beats then share exactly the same extreme.
    """
    starts, stops = runs
    touches = int(starts.size)
    wide = stops - starts >= 2
    a, b = starts[wide], stops[wide]
    if a.size == 0:
        return 0, 0, touches
    before = np.where(a > 0, np.abs(x[np.maximum(a - 1, 0)] - value), np.inf)
    after = np.where(b < x.size, np.abs(x[np.minimum(b, x.size - 1)] - value), np.inf)
    sharp = np.minimum(before, after) >= max(3 * step, 0.03 * span)
    return int(np.count_nonzero(sharp & (b - a >= 3))), int(np.count_nonzero(sharp)), touches


def _clipping(x: np.ndarray, x_max: np.ndarray, x_min: np.ndarray) -> list[tuple[int, int, int]]:
    """Per row of (R, N): (sharp plateaus of >= 3 samples, of >= 2, touches) at the row's
    maximum or minimum, whichever has more (see :func:`_plateaus_at`)."""
    spans = x_max - x_min
    tol = 1e-6 * np.maximum(1.0, spans)
    masks = (x >= (x_max - tol)[:, None], x <= (x_min + tol)[:, None])
    touches = [m[:, 0] + np.count_nonzero(m[:, 1:] & ~m[:, :-1], axis=1) for m in masks]
    wide = np.any(masks[0][:, 1:] & masks[0][:, :-1], axis=1) | np.any(masks[1][:, 1:] & masks[1][:, :-1], axis=1)
    out = []
    for r in range(x.shape[0]):
        if not wide[r]:                 # no run of 2 samples at either extreme: touches only
            out.append((0, 0, int(max(touches[0][r], touches[1][r]))))
            continue
        diffs = np.abs(np.diff(x[r]))   # the quantisation step, for the sharp-plateau test
        moving = diffs[diffs > tol[r]]
        step = float(np.percentile(moving, 10)) if moving.size else float(tol[r])
        found = [_plateaus_at(x[r], _sparse_runs(m[r]), float(v[r]), step, float(spans[r]))
                 for m, v in zip(masks, (x_max, x_min))]
        out.append(tuple(max(p[i] for p in found) for i in range(3)))
    return out


def _baselines(x: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
    """Baselines of (R, N) leads by two median filters (0.2 s, 0.6 s) on a 50 Hz copy; returns
    them, (R, M), and their rate."""
    step = max(1, int(fs // 50))
    small = x[:, : x.shape[1] - x.shape[1] % step].reshape(x.shape[0], -1, step).mean(axis=2) if step > 1 else x
    rate = fs / step
    first = _running_median(small, max(1, int(0.2 * rate)) | 1)
    return _running_median(first, max(1, int(0.6 * rate)) | 1), rate


@functools.lru_cache(maxsize=16)
def _welch_plan(nperseg: int, fs: float) -> tuple:
    """What the mains measure needs of a Welch spectrum with ``nperseg``-sample segments at
    ``fs``: the periodic Hann window, the centred time axis, the bins it reads (lo:hi), the
    windowed transforms of a constant and of the time axis over those bins (what a
    segment's mean and slope contribute), and per mains frequency its line and neighbour bins
    (indices from lo). Cached."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(nperseg) / nperseg)
    t = np.arange(nperseg) - (nperseg - 1) / 2
    freqs = np.arange(nperseg // 2 + 1) * fs / nperseg
    lines = []
    for f0 in (50.0, 60.0):
        if fs <= 2 * (f0 + 4.0):
            continue
        line = np.flatnonzero((freqs >= f0 - 1.0) & (freqs <= f0 + 1.0))
        near = np.flatnonzero(((freqs >= f0 - 6.0) & (freqs < f0 - 2.0)) | ((freqs > f0 + 2.0) & (freqs <= f0 + 6.0)))
        if line.size and near.size:
            lines.append((f0, line, near))
    if not lines:
        return window, t, 0, 0, None, None, []
    lo = min(int(min(line.min(), near.min())) for _, line, near in lines)
    hi = max(int(max(line.max(), near.max())) for _, line, near in lines) + 1
    return (window, t, lo, hi, np.fft.rfft(window)[lo:hi], np.fft.rfft(t * window)[lo:hi],
            [(f0, line - lo, near - lo) for f0, line, near in lines])


def _welch_bins(x: np.ndarray, fs: float, nperseg: int, lo: int, hi: int, chunk: int = 256) -> np.ndarray:
    """Bins lo:hi of Welch's power spectral density of each row of (R, N), µV²/Hz, as
    ``scipy.signal.welch(x, fs, nperseg=nperseg, detrend="linear")`` gives them (periodic Hann
    window, half overlap, a least-squares line taken off each segment, mean of the segments;
    0 < lo, hi <= nperseg / 2): (R, hi - lo)."""
    window, t, _, _, of_mean, of_slope, _ = _welch_plan(nperseg, fs)
    rows = x.shape[0]
    x = np.ascontiguousarray(x)
    hop = nperseg - nperseg // 2
    segments = (x.shape[1] - nperseg // 2) // hop
    s0, s1 = x.strides
    views = np.lib.stride_tricks.as_strided(x, (rows, segments, nperseg), (s0, hop * s1, s1), writeable=False)
    total = np.zeros((rows, hi - lo))
    per = max(1, chunk // rows)
    for start in range(0, segments, per):
        seg = views[:, start:start + per]
        # the segment's line comes off in the frequency domain (the transform is linear)
        spec = np.fft.rfft(seg * window, axis=2)[..., lo:hi]
        spec -= seg.mean(axis=2)[..., None] * of_mean + (seg @ t / (t @ t))[..., None] * of_slope
        total += (spec.real ** 2 + spec.imag ** 2).sum(axis=1)
    return 2 * total / segments / (fs * float(window @ window))


def _mains_uv(x: np.ndarray, fs: float) -> list[tuple[float | None, float | None]]:
    """Per row of (R, N): the largest 50/60 Hz line amplitude above its neighbourhood in a
    Welch spectrum of 4 s segments, µV RMS, and its frequency ((None, None) where the rate
    cannot carry them)."""
    rows = x.shape[0]
    nperseg = int(min(x.shape[1], 4 * fs))
    plan = _welch_plan(nperseg, fs) if fs > 2 * (50.0 + 4.0) else None
    if plan is None or not plan[6]:
        return [(None, None)] * rows
    lo, hi, lines = plan[2], plan[3], plan[6]
    psd = _welch_bins(x, fs, nperseg, lo, hi)
    amps = []
    for f0, line, near in lines:
        excess = (psd[:, line].sum(axis=1) - np.median(psd[:, near], axis=1) * line.size) * (fs / nperseg)
        amps.append((np.sqrt(np.maximum(0.0, excess)), f0))
    out = []
    for r in range(rows):
        best: tuple[float | None, float | None] = (None, None)
        for amp, f0 in amps:
            if best[0] is None or float(amp[r]) > best[0]:
                best = (float(amp[r]), f0)
        out.append(best)
    return out


def _mains_notches(fs: float) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """50 and 60 Hz notches (Q 10) where the rate carries them, so mains is not counted as EMG."""
    return tuple(("notch", (f0, 10.0)) for f0 in (50.0, 60.0) if f0 < 0.48 * fs)


def assess_quality(x_uv: np.ndarray, fs: float, th: Thresholds = DEFAULT_THRESHOLDS) -> QualityReport:
    """Measure one lead and decide: (N,) µV at ``fs`` Hz -> :class:`QualityReport`.

    The lead has passed ``check_single_lead`` (finite, 2 s to 1 h, plausible amplitude).
    """
    return assess_quality_many([x_uv], [fs], th)[0]


def assess_quality_many(leads: Sequence[np.ndarray], rates: Sequence[float],
                        th: Thresholds = DEFAULT_THRESHOLDS) -> list[QualityReport]:
    """:func:`assess_quality` of each lead, (N_i,) µV at ``rates[i]`` Hz, in order.

    Leads of one length and rate are measured together, as rows of one array (one 2-D
    transform, one sort...), at most ``BATCH_SAMPLES`` samples at a time: the same verdicts,
    at a fraction of the cost per lead when a batch of 10 s ECGs comes in.
    """
    reports: list[QualityReport | None] = [None] * len(leads)
    groups: dict[tuple[int, float], list[int]] = {}
    for i, (x, fs) in enumerate(zip(leads, rates)):
        groups.setdefault((int(np.shape(x)[-1]), float(fs)), []).append(i)
    for (n, fs), members in groups.items():
        per = max(1, BATCH_SAMPLES // max(1, n))
        for start in range(0, len(members), per):
            chunk = members[start:start + per]
            x = np.stack([np.asarray(leads[i], dtype=np.float64).reshape(-1) for i in chunk])
            for i, report in zip(chunk, _assess_rows(x, fs, th)):
                reports[i] = report
    return reports  # type: ignore[return-value]


def _assess_rows(x: np.ndarray, fs: float, th: Thresholds) -> list[QualityReport]:
    """:func:`assess_quality` for each row of (R, N) µV at ``fs`` Hz."""
    rows, n = x.shape
    duration = n / fs
    spectra = _Spectra(x, fs)
    x_max, x_min = x.max(axis=1), x.min(axis=1)
    qrs_band = spectra.bandpass(5.0, 30.0)
    dead = _flat_masks(x, qrs_band, fs, th, x_max - x_min)
    dead_samples = np.count_nonzero(dead, axis=1)
    clipping = _clipping(x, x_max, x_min)
    peaks_of = _r_peaks(spectra)
    hf = spectra.band(*_mains_notches(fs), ("highpass", (4, 20.0))) if fs > 50.0 else np.zeros_like(x)
    wide = spectra.bandpass(0.5, 40.0)
    base, rate = _baselines(x, fs)
    win = int(10 * rate)
    starts = np.arange(0, max(1, base.shape[1] - win // 2), win)
    stop = min(base.shape[1], int(starts[-1]) + win)
    wander = (np.maximum.reduceat(base[:, :stop], starts, axis=1)
              - np.minimum.reduceat(base[:, :stop], starts, axis=1)).max(axis=1) / 1000.0
    lag = max(1, int(0.2 * rate))
    jump = (np.abs(base[:, lag:] - base[:, :-lag]).max(axis=1) / 1000.0 if base.shape[1] > lag
            else np.zeros(rows))
    offset = np.median(x, axis=1) / 1000.0
    mains = _mains_uv(x, fs)
    return [_report(x[r], fs, duration, th, dead[r], int(dead_samples[r]), clipping[r], peaks_of[r], hf[r],
                    wide[r], float(wander[r]), float(jump[r]), float(offset[r]), mains[r],
                    float(x_max[r]), float(x_min[r]), qrs_band[r])
            for r in range(rows)]


def _isoelectric(peaks: np.ndarray, wide: np.ndarray, band: np.ndarray, hf: np.ndarray, fs: float,
                 th: Thresholds) -> tuple[float, float, float] | None:
    """(QRS p-p µV in 0.5–40 Hz, QRS-band p-p µV in 5–30 Hz, noise RMS µV), medians over every
    detected beat (flat stretches included: a near-isoelectric lead looks flat), the noise
    robustly between the beats; None with too few beats."""
    if peaks.size < th.isoelectric_min_beats:
        return None
    n = wide.size
    w = max(1, int(0.06 * fs))
    idx = np.clip(peaks[:, None] + np.arange(-w, w + 1)[None, :], 0, n - 1)
    qrs = _median(np.ptp(wide[idx], axis=1))
    qrs_band = _median(np.ptp(band[idx], axis=1))
    between = np.ones(n, dtype=bool)
    half = int(0.12 * fs)
    for p in peaks.tolist():
        between[max(0, p - half):p + half] = False
    pool = hf[between] if np.count_nonzero(between) > fs else hf
    noise = 1.4826 * _median(np.abs(pool - _median(pool)))
    return qrs, qrs_band, noise


def _report(x: np.ndarray, fs: float, duration: float, th: Thresholds, dead: np.ndarray,
            dead_samples: int, clipping: tuple[int, int, int], peaks: np.ndarray, hf: np.ndarray,
            wide: np.ndarray, wander: float, jump: float, offset: float,
            mains_at: tuple[float | None, float | None], x_max: float, x_min: float,
            band: np.ndarray) -> QualityReport:
    """One lead's measures and flags, from what :func:`_assess_rows` measured on all of them."""
    n = x.size
    m: dict[str, float | int | None] = {"duration_s": round(duration, 3), "fs_hz": fs}
    flags: list[Flag] = []

    # flat line / lead off / held value
    flat_s = dead_samples / fs
    m["flat_s"] = round(flat_s, 2)
    m["flat_fraction"] = round(flat_s / duration, 4)
    if flat_s / duration >= th.flat_reject_fraction:
        flags.append(Flag("flat", "reject", f"no ECG signal over {flat_s:.1f} of {duration:.1f} s"
                                            " (flat line or lead off)"))
    elif flat_s >= th.flat_warn_s:
        flags.append(Flag("flat", "warn", f"flat line / lead off for {flat_s:.1f} s of {duration:.1f} s"))

    # clipping at the record's extremes
    long_plateaus, short_plateaus, touches = clipping
    m["clip_plateaus"] = int(short_plateaus)
    m["clip_touches"] = int(touches)
    if long_plateaus >= 1 or short_plateaus >= th.clip_plateaus or touches >= th.clip_touches:
        flags.append(Flag("clipping", "warn", f"clipped: {short_plateaus} flat-topped peak(s) at the"
                                              f" signal's limit ({x_max / 1000:.2f} / {x_min / 1000:.2f} mV)"))

    # near-isoelectric: beats above the noise, every one of them tiny
    iso = _isoelectric(peaks, wide, band, hf, fs, th)
    m["qrs_all_beats_uv"] = None if iso is None else round(iso[0], 1)
    if iso is not None and iso[0] < th.isoelectric_qrs_uv and iso[1] >= th.isoelectric_snr * max(iso[2], 1e-9):
        flags = [f for f in flags if not (f.code == "flat" and f.severity == "reject")]
        flags.append(Flag("isoelectric", "reject", f"near-isoelectric (QRS {iso[0]:.0f} µV peak-to-peak at"
                                                   f" {peaks.size} beats, noise {iso[2]:.0f} µV RMS)"))

    # R peaks and heart rate (on the live part of the record)
    rr = np.diff(peaks) / fs
    if dead_samples and peaks.size:
        peaks = peaks[~dead[peaks]]
        dead_count = np.concatenate(([0], np.cumsum(dead)))
        # an interval across a flat stretch is not an RR interval
        rr = np.diff(peaks)[dead_count[peaks[1:]] == dead_count[peaks[:-1]]] / fs
    m["beats"] = int(peaks.size)
    hr = 60.0 / _median(rr) if rr.size else None
    m["heart_rate_bpm"] = None if hr is None else round(hr, 1)
    variation = rr_variation(rr)
    m["rr_variation"] = None if variation is None else round(variation, 3)
    live = duration - flat_s
    if hr is None and live >= 4.0:
        flags.append(Flag("heart_rate", "warn", "no QRS complexes found"))
    elif hr is not None and not (th.hr_min_bpm <= hr <= th.hr_max_bpm):
        flags.append(Flag("heart_rate", "warn", f"implausible heart rate {hr:.0f} bpm (R-peak detection;"
                                                f" plausible {th.hr_min_bpm:g}-{th.hr_max_bpm:g})"))

    # a rate the signal contradicts
    qrs_hz = qrs_frequency(x, fs, peaks)
    m["qrs_freq_hz"] = None if qrs_hz is None else round(qrs_hz, 1)
    suspicion = rate_suspicion(hr, qrs_hz, fs, th)
    if suspicion is not None:
        flags.append(Flag("rate", "warn", suspicion))

    # high-frequency (EMG) noise between the QRS complexes, against the QRS amplitude
    half = int(0.12 * fs)
    quiet = ~dead
    for p in peaks.tolist():
        quiet[max(0, p - half):p + half] = False
    if peaks.size:
        w = int(0.06 * fs)
        idx = np.clip(peaks[:, None] + np.arange(-w, max(w, 1 - w))[None, :], 0, n - 1)
        segs = wide[idx]
        qrs = _median(segs.max(axis=1) - segs.min(axis=1))
    else:
        qrs = float(np.percentile(wide, 99) - np.percentile(wide, 1))
    pool = hf[quiet] if np.count_nonzero(quiet) > fs else hf[~dead] if n - dead_samples > fs else hf
    noise = 1.4826 * _median(np.abs(pool - _median(pool)))
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
    mains, mains_f = mains_at
    m["mains_uv"] = None if mains is None else round(mains, 2)
    m["mains_hz"] = mains_f
    if mains is not None and mains >= th.mains_warn_uv:
        flags.append(Flag("mains", "warn", f"mains interference {mains:.0f} µV RMS at {mains_f:g} Hz"))

    status = "reject" if any(f.severity == "reject" for f in flags) else "warn" if flags else "ok"
    return QualityReport(status, flags, m)
