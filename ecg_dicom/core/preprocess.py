"""Pure-numpy preprocessing: resampling, min-max scaling, input checks, filtering.

Every function works on the last axis and keeps physical units (µV) unless it says
otherwise, so the inverse of each step is always at hand. numpy only: importing
``scipy.signal`` costs ~0.4 s (1 s on a busy machine), as long as converting a hundred
ECGs takes, so the one filter inference needs is computed here (and tested against scipy).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ecg_dicom.errors import InputError

MIN_DURATION_S = 2.0
MAX_DURATION_S = 3600.0
MIN_FS_HZ = 100.0
MAX_FS_HZ = 2000.0
MIN_PEAK_TO_PEAK_UV = 50.0
MAX_PEAK_TO_PEAK_UV = 20_000.0
MAX_BASELINE_UV = 10_000.0
UNIT_TO_UV: dict[str, float] = {"uV": 1.0, "µV": 1.0, "mV": 1000.0, "V": 1e6}


def resample_signal(signal: np.ndarray, target_length: int) -> np.ndarray:
    """Linear-interpolation resampling of the last axis to ``target_length`` samples.

    The seed's step: first and last samples map onto each other, so the duration is kept
    whatever the lengths. (..., N) -> (..., target_length), float64.
    """
    x = np.asarray(signal, dtype=np.float64)
    n = x.shape[-1]
    if n == 0 or target_length <= 0:
        raise ValueError("cannot resample an empty signal or to an empty length")
    if n == target_length:
        return x.copy()
    src = np.linspace(0.0, 1.0, n)
    dst = np.linspace(0.0, 1.0, target_length)
    flat = x.reshape(-1, n)
    out = np.stack([np.interp(dst, src, row) for row in flat])
    return out.reshape(*x.shape[:-1], target_length)


def resample_fs(signal: np.ndarray, fs_in: float, fs_out: float, length: int | None = None) -> np.ndarray:
    """Linear-interpolation resampling from ``fs_in`` to ``fs_out`` Hz on a common time grid.

    Sample k of the output sits at k / fs_out seconds; samples past the input's last one
    hold its value. (..., N) -> (..., length or round(N * fs_out / fs_in)), float64.
    """
    x = np.asarray(signal, dtype=np.float64)
    n = x.shape[-1]
    m = int(round(n * fs_out / fs_in)) if length is None else int(length)
    if fs_in == fs_out and m == n:
        return x.copy()
    t_in = np.arange(n) / fs_in
    t_out = np.arange(m) / fs_out
    flat = x.reshape(-1, n)
    out = np.stack([np.interp(t_out, t_in, row) for row in flat])
    return out.reshape(*x.shape[:-1], m)


def min_max_scale(signal: np.ndarray, return_params: bool = False):
    """Scale the last axis to [0, 1] (the seed's input step).

    Returns the scaled array, or ``(scaled, lo, hi)`` with ``return_params=True`` so that
    :func:`inverse_min_max_scale` can bring it back to µV. A flat signal maps to 0.
    """
    x = np.asarray(signal, dtype=np.float64)
    lo = x.min(axis=-1, keepdims=True)
    hi = x.max(axis=-1, keepdims=True)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    scaled = (x - lo) / span
    return (scaled, lo, hi) if return_params else scaled


def inverse_min_max_scale(scaled: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Undo :func:`min_max_scale`: ``scaled * (hi - lo) + lo`` in the original units."""
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return np.asarray(scaled, dtype=np.float64) * span + lo


def butter2_highpass(cutoff_hz: float, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """2nd-order Butterworth high-pass (bilinear transform, pre-warped): ``(b (3,), a (3,))``,
    the coefficients ``scipy.signal.butter(2, cutoff_hz, "highpass", fs=fs)`` gives."""
    if not 0 < cutoff_hz < fs / 2:
        raise ValueError(f"cut-off {cutoff_hz:g} Hz must lie between 0 and half of {fs:g} Hz")
    k = math.tan(math.pi * cutoff_hz / fs)
    norm = 1.0 / (1.0 + math.sqrt(2.0) * k + k * k)
    b = np.array([1.0, -2.0, 1.0]) * norm
    a = np.array([1.0, 2.0 * (k * k - 1.0) * norm, (1.0 - math.sqrt(2.0) * k + k * k) * norm])
    return b, a


class _Biquad:
    """One 2nd-order section in transposed direct form II (as ``scipy.signal.sosfilt``),
    run over blocks of ``block`` samples as matrix products, exactly the same recursion:
    ``y = x_block @ T + state @ O`` and ``state' = x_block @ U + state @ P``."""

    def __init__(self, b: np.ndarray, a: np.ndarray, block: int = 64) -> None:
        b, a = np.asarray(b, np.float64) / a[0], np.asarray(a, np.float64) / a[0]
        trans = np.array([[-a[1], 1.0], [-a[2], 0.0]])       # state' = trans @ state + gain * x
        gain = np.array([b[1] - a[1] * b[0], b[2] - a[2] * b[0]])
        powers = [np.eye(2)]
        for _ in range(block):
            powers.append(trans @ powers[-1])
        impulse = np.array([b[0]] + [powers[k - 1][0] @ gain for k in range(1, block)])  # output k after x at 0
        self.block = block
        self.T = np.zeros((block, block))
        for j in range(block):
            self.T[j, j:] = impulse[:block - j]
        self.O = np.stack([powers[k][0] for k in range(block)], axis=1)            # (2, block)
        self.U = np.stack([powers[block - 1 - j] @ gain for j in range(block)])    # (block, 2)
        self.P = powers[block].T                                                   # (2, 2)
        # steady state of a constant input of 1 (scipy's lfilter_zi)
        self.zi = np.linalg.solve(np.eye(2) - trans, gain)

    def run(self, x: np.ndarray, state: np.ndarray) -> np.ndarray:
        """x: (R, N), state: (R, 2) -> (R, N) filtered."""
        r, n = x.shape
        nb = -(-n // self.block)
        xb = np.zeros((r, nb * self.block))
        xb[:, :n] = x
        xb = xb.reshape(r, nb, self.block)
        out = np.empty_like(xb)
        for i in range(nb):
            out[:, i] = xb[:, i] @ self.T + state @ self.O
            state = xb[:, i] @ self.U + state @ self.P
        return out.reshape(r, -1)[:, :n]


@functools.lru_cache(maxsize=32)
def _highpass_section(cutoff_hz: float, fs: float) -> _Biquad:
    return _Biquad(*butter2_highpass(cutoff_hz, fs))


def highpass(signal: np.ndarray, fs: float, cutoff_hz: float = 0.5) -> np.ndarray:
    """Zero-phase 2nd-order Butterworth high-pass along the last axis (baseline removal).

    What ``scipy.signal.sosfiltfilt(butter(2, cutoff_hz, "highpass", fs=fs, output="sos"), x)``
    computes (odd extension of 9 samples at each end, steady-state initial conditions,
    forward then backward), in numpy: (..., N) -> (..., N) float64, N > 9.
    """
    x = np.asarray(signal, dtype=np.float64)
    pad = 9  # scipy's default for one section: 3 * (2 * sections + 1)
    if x.shape[-1] <= pad:
        raise ValueError(f"the signal needs more than {pad} samples to be high-passed")
    section = _highpass_section(float(cutoff_hz), float(fs))
    flat = x.reshape(-1, x.shape[-1])
    ext = np.concatenate([2 * flat[:, :1] - flat[:, pad:0:-1], flat,
                          2 * flat[:, -1:] - flat[:, -2:-pad - 2:-1]], axis=1)
    y = section.run(ext, section.zi * ext[:, :1])
    y = section.run(y[:, ::-1], section.zi * y[:, -1:])[:, ::-1]
    return np.ascontiguousarray(y[:, pad:-pad]).reshape(x.shape)


def check_single_lead(array: np.ndarray, fs: float, units: str = "uV") -> np.ndarray:
    """Validate one lead and return it as (N,) float64 µV.

    Raises :class:`InputError` with a one-line reason for: a non-numeric array, NaN/inf,
    an empty array, a shape that is not one lead ((N,) or (1, N)), a sampling rate outside
    100–2000 Hz, a record shorter than 2 s or longer than an hour, and an amplitude that
    cannot be an ECG in the stated units (peak-to-peak under 50 µV or over 20 mV, or a
    baseline offset over 10 mV, which is what raw ADC counts look like).
    """
    arr = np.asarray(array)
    if arr.dtype.kind not in "iuf":
        raise InputError(f"not a numeric array (dtype {arr.dtype})")
    if arr.size == 0:
        raise InputError("empty array")
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InputError(f"shape {tuple(np.shape(array))} is not one lead: expected (N,) or (1, N)")
    if units not in UNIT_TO_UV:
        raise InputError(f"unknown units {units!r}: use one of {sorted(UNIT_TO_UV)}")
    if not (MIN_FS_HZ <= fs <= MAX_FS_HZ):
        raise InputError(f"sampling rate {fs:g} Hz outside {MIN_FS_HZ:g}-{MAX_FS_HZ:g} Hz")
    x = arr.astype(np.float64) * UNIT_TO_UV[units]
    n_bad = int(np.count_nonzero(~np.isfinite(x)))
    if n_bad:
        raise InputError(f"{n_bad} of {x.size} samples are NaN or infinite")
    duration = x.size / fs
    if duration < MIN_DURATION_S:
        raise InputError(f"too short: {duration:.2f} s at {fs:g} Hz, at least {MIN_DURATION_S:g} s needed")
    if duration > MAX_DURATION_S:
        raise InputError(f"too long: {duration:.0f} s, at most {MAX_DURATION_S:.0f} s per input")
    p2p = float(np.ptp(x))
    if p2p < MIN_PEAK_TO_PEAK_UV:
        raise InputError(
            f"peak-to-peak {p2p:.3g} µV is below {MIN_PEAK_TO_PEAK_UV:g} µV: not an ECG in {units}"
            " (mV given as µV? then say so: \"units\": \"mV\" in the .npy's <stem>.json sidecar,"
            " or convert --units mV)"
        )
    if p2p > MAX_PEAK_TO_PEAK_UV:
        raise InputError(
            f"peak-to-peak {p2p / 1000:.3g} mV is over {MAX_PEAK_TO_PEAK_UV / 1000:g} mV: not an ECG in"
            f" {units} (raw ADC counts, or µV given as mV?)"
        )
    baseline = float(np.median(x))
    if abs(baseline) > MAX_BASELINE_UV:
        raise InputError(
            f"baseline offset of {baseline / 1000:.3g} mV: looks like raw ADC counts, not {units}"
        )
    return x


def model_features(windows_uv: np.ndarray) -> np.ndarray:
    """Model input features of windows of one lead: (..., L) µV -> (..., 2, L) float32.

    Feature 0 is the seed's min-max scaled lead in [0, 1] (shape of the waveform);
    feature 1 is the same lead in mV about its median, so the model keeps the absolute
    amplitude that min-max scaling throws away and can predict targets in mV.
    """
    x = np.asarray(windows_uv, dtype=np.float64)
    scaled = min_max_scale(x)
    centred_mv = (x - np.median(x, axis=-1, keepdims=True)) / 1000.0
    return np.stack([scaled, centred_mv], axis=-2).astype(np.float32)


def lead_features(windows_uv: np.ndarray, n_leads: int = 1) -> np.ndarray:
    """Model input features of windows of ``n_leads`` measured leads, each lead preprocessed
    alone as :func:`model_features` does (its own min-max scaling and its mV about its median).

    n_leads 1: (..., L) µV -> (..., 2, L); n_leads 2: (..., 2, L) µV (I, II) -> (..., 4, L)
    float32 in the order [I scaled, I mV, II scaled, II mV].
    """
    feats = model_features(windows_uv)
    if n_leads == 1:
        return feats
    x = np.asarray(windows_uv)
    if x.ndim < 2 or x.shape[-2] != n_leads:
        raise ValueError(f"expected (..., {n_leads}, L) windows, got shape {x.shape}")
    return feats.reshape(*x.shape[:-2], 2 * n_leads, x.shape[-1])
