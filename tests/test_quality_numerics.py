"""The gate's numpy signal processing against scipy, the reference it replaces (scipy is no
longer imported on the convert path; here it checks the numbers), and the batched gate
against the one-lead gate.

On real records: every band the gate cuts from one FFT equals scipy's zero-phase filter
(sosfiltfilt / filtfilt of the same Butterworth or notch design) away from the record's
first and last second, where the two edge models differ; Welch bins, running medians,
windowed extrema, the moving average and the peak search equal scipy's exactly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, synthetic_lead
from scipy import ndimage
from scipy import signal as sps

from ecg_dicom.core import quality as q
from ecg_dicom.errors import InputError, SignalQualityError
from ecg_dicom.inputs import LeadInput, gate_many
from ecg_dicom.training.data import read_wfdb_record

RECORDS = ("ptbxl/records500/00000/00009_hr", "ptbxl/records100/01000/01001_lr", "ludb/1", "ptb/S0008",
           "georgia/E07500")


@pytest.fixture(scope="module")
def leads(shared_data) -> list[tuple[np.ndarray, float]]:
    """Lead I of real records at 500, 100 and 1000 Hz (µV), plus a 360 Hz Holter minute."""
    import wfdb

    out = []
    for record in RECORDS:
        rec = read_wfdb_record(shared_data / "ecg12" / f"{record}.hea")
        out.append((rec.leads[0], rec.fs))
    holter = wfdb.rdrecord(str(shared_data / "single_lead" / "mitdb" / "100"), sampto=360 * 60)
    out.append((holter.p_signal[:, 0] * 1000.0, 360.0))
    return out


def inner(x: np.ndarray, fs: float) -> np.ndarray:
    return x[int(fs):-int(fs)]


def test_bands_equal_scipy_zero_phase_filters(leads):
    for x, fs in leads:
        spectra = q._Spectra(x[None, :], fs)
        for lo, hi in ((5.0, 15.0), (5.0, 30.0), (0.5, 40.0)):
            hi_ = min(hi, 0.45 * fs)
            ref = sps.sosfiltfilt(sps.butter(2, [lo, hi_], "bandpass", fs=fs, output="sos"), x)
            got = spectra.bandpass(lo, hi)[0]
            # µV; the 0.5 Hz edge rings on from the ends (the two edge models differ): 0.2 % there
            tolerance = 2e-3 * np.ptp(ref) if lo < 1 else 1e-3
            assert np.max(np.abs(inner(got - ref, 2 * fs if lo < 1 else fs))) < tolerance, (fs, lo, hi)
        ref = x
        for f0 in (50.0, 60.0):
            if f0 < 0.48 * fs:
                ref = sps.filtfilt(*sps.iirnotch(f0, 10.0, fs), ref)
        ref = sps.sosfiltfilt(sps.butter(4, 20.0, "highpass", fs=fs, output="sos"), ref)
        got = spectra.band(*q._mains_notches(fs), ("highpass", (4, 20.0)))[0]
        assert np.max(np.abs(inner(got - ref, fs))) < 1e-3, fs


def test_decimated_band_and_slope_are_the_full_rate_band_sampled(leads):
    for x, fs in leads:
        spectra = q._Spectra(x[None, :], fs)
        band, slope = spectra.decimated_bandpass(5.0, 15.0)
        full = spectra.bandpass(5.0, 15.0)[0]
        k = spectra.k
        assert band.shape[1] == -(-x.size // k)
        span = slice(int(fs // k), -int(fs // k))
        assert np.max(np.abs(band[0, span] - full[::k][span])) < 0.01 * np.ptp(full)
        assert np.max(np.abs(slope[0, span] - np.gradient(full)[::k][span])) < 0.01 * np.ptp(np.gradient(full))


def test_welch_bins_equal_scipy(leads):
    for x, fs in leads:
        if fs <= 108:
            continue
        nperseg = int(min(x.size, 4 * fs))
        lo, hi = q._welch_plan(nperseg, fs)[2:4]
        freqs, psd = sps.welch(x - x.mean(), fs=fs, nperseg=nperseg, detrend="linear")
        got = q._welch_bins(x[None, :], fs, nperseg, lo, hi)[0]
        np.testing.assert_allclose(got, psd[lo:hi], rtol=1e-9, atol=1e-12 * psd.max())


def test_filters_and_peak_search_equal_scipy(leads):
    rng = np.random.default_rng(0)
    for x, fs in leads:
        small = x[: x.size // 10 * 10].reshape(-1, 10).mean(axis=1)
        for size in (11, 31):
            np.testing.assert_array_equal(q._running_median(small[None, :], size)[0],
                                          ndimage.median_filter(small, size=size, mode="nearest"))
        win = int(2 * fs)
        swing = ndimage.maximum_filter1d(x, win) - ndimage.minimum_filter1d(x, win)
        got = q._sliding_swing(x, win)                  # window s..s+win has scipy's centre s + win // 2
        np.testing.assert_array_equal(got, swing[win // 2: win // 2 + got.size])
        energy = np.gradient(x) ** 2
        np.testing.assert_allclose(q._moving_mean(energy, 75), ndimage.uniform_filter1d(energy, 75),
                                   rtol=1e-9, atol=1e-9 * energy.max())
    for _ in range(20):                                 # plateaus included
        a = np.round(rng.normal(size=400).cumsum())
        ref, _ = sps.find_peaks(a, height=np.median(a), distance=7)
        got = q._local_maxima(a)
        got = q._thin_by_distance(got[a[got] >= np.median(a)], a[got[a[got] >= np.median(a)]], 7)
        np.testing.assert_array_equal(np.sort(got), ref)


def test_flat_screens_never_hide_a_flat_window(leads):
    """The block screens in front of the exact searches: on leads with flat stretches of
    every length the screened mask equals the unscreened one."""
    th = q.DEFAULT_THRESHOLDS
    for x, fs in leads[:3]:
        for seconds in (0.5, 0.79, 0.81, 1.5, 1.99, 2.01, 3.0):
            y = x.copy()
            start = int(2.3 * fs)
            y[start:start + int(seconds * fs)] = y[start]
            band = q._Spectra(y[None, :], fs).bandpass(5.0, 30.0)
            got = q._flat_masks(y[None, :], band, fs, th, np.array([np.ptp(y)]))[0]
            same = np.abs(np.diff(y)) <= 1e-6 * max(1.0, np.ptp(y))
            ref = np.zeros(y.size, dtype=bool)
            for a, b in q._runs(same):
                if (b - a + 1) / fs >= th.flat_run_s:
                    ref[a:b + 1] = True
            win = int(th.flat_window_s * fs)
            centres = np.zeros(y.size, dtype=bool)
            swing = ndimage.maximum_filter1d(band[0], win) - ndimage.minimum_filter1d(band[0], win)
            centres[win // 2: y.size - (win - 1) // 2] = swing[win // 2: y.size - (win - 1) // 2] < th.flat_band_uv
            ref |= ndimage.maximum_filter1d(centres.astype(np.uint8), win).astype(bool)
            np.testing.assert_array_equal(got, ref, err_msg=f"{fs} Hz, {seconds} s held")


@pytest.mark.parametrize("batch_samples", [q.BATCH_SAMPLES, 12_000])
def test_batched_gate_gives_each_lead_its_own_verdict(leads, monkeypatch, batch_samples):
    """Leads measured as rows of one array (and, at 12,000 samples a chunk, two 10 s leads at
    a time) get the verdict and every measure the one-lead gate gives each alone."""
    monkeypatch.setattr(q, "BATCH_SAMPLES", batch_samples)
    x, fs = leads[0]
    t = np.arange(x.size) / fs
    faulty = [x + 150 * np.sin(2 * np.pi * 50 * t), np.where(t < 2, x, x[0]),
              np.clip(x, None, np.percentile(x, 97)), x + 1500 * np.sin(2 * np.pi * 0.3 * t)]
    batch = [(x, fs), *((y, fs) for y in faulty), *leads[1:], (x[::-1].copy(), fs)]
    many = q.assess_quality_many([b[0] for b in batch], [b[1] for b in batch])
    assert [r.status for r in many[:3]] == ["ok", "warn", "reject"]
    assert {f.code for r in many[:5] for f in r.flags} >= {"mains", "flat", "clipping", "baseline"}
    for (y, rate), report in zip(batch, many):
        assert report.to_json() == q.assess_quality(y, rate).to_json()


def test_gate_failure_costs_only_its_own_lead(monkeypatch, leads):
    x, fs = leads[0]
    good = LeadInput(x, fs, "I", None, "a", "npy")
    bad = LeadInput(x * 1.0, fs, "I", None, "b", "npy")
    flat = LeadInput(np.where(np.arange(x.size) < 800, x, x[0]), fs, "I", None, "c", "npy")
    real = q.assess_quality

    def broken_batch(leads, rates):
        raise FloatingPointError("batch")

    def broken_one(signal, rate):
        if signal is bad.signal_uv:
            raise FloatingPointError("this lead")
        return real(signal, rate)

    monkeypatch.setattr("ecg_dicom.inputs.base.assess_quality_many", broken_batch)
    monkeypatch.setattr("ecg_dicom.inputs.base.assess_quality", broken_one)
    refusals = gate_many([good, bad, flat])
    assert refusals[0] is None and good.quality is not None and good.quality.status == "ok"
    assert isinstance(refusals[1], InputError) and "signal-quality gate failed" in str(refusals[1])
    assert isinstance(refusals[2], SignalQualityError) and "flat line or lead off" in str(refusals[2])


def test_default_convert_imports_no_scipy_signal(tmp_path):
    """The gate is numpy only: `ecg-dicom convert` on its defaults, gate included (a flat
    input is rejected by it), never imports scipy.signal (0.75-1.1 s per process under load,
    a third of a 256-ECG run). Checked in sys.modules at the end of the run and, for any forked
    worker, by an import hook inherited across the fork."""
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(3):
        np.save(inp / f"x{i}.npy", synthetic_lead(10.0, seed=i))
    flat = synthetic_lead(10.0, seed=3)
    flat[800:] = flat[800]
    np.save(inp / "flat.npy", flat)
    imports = tmp_path / "imports.txt"
    imports.write_text("")
    code = ("import sys\n"
            "class Watch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.startswith('scipy'):\n"
            "            with open(sys.argv[3], 'a') as f:\n"
            "                f.write(name + '\\n')\n"
            "sys.meta_path.insert(0, Watch())\n"
            "from ecg_dicom.cli import main\n"
            "status = main(['convert', sys.argv[1], sys.argv[2]])\n"
            "print('modules:', sorted(m for m in sys.modules if m.startswith('scipy')))\n"
            "sys.exit(status)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(inp), str(tmp_path / "out"), str(imports)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 1, proc.stderr             # 1: an input was rejected
    assert "converted 3, rejected 1" in proc.stderr, proc.stderr
    assert "flat line or lead off" in (tmp_path / "out" / "flat.reason.txt").read_text()
    modules = proc.stdout.split("modules:", 1)[1]
    assert "scipy.signal" not in modules, modules
    assert "scipy.signal" not in imports.read_text().split(), imports.read_text()
