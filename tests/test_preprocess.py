"""Resampling, min-max scaling and its inverse, and the single-lead input checks."""

import numpy as np
import pytest
from conftest import synthetic_lead

from ecg_dicom.core.preprocess import (
    check_single_lead,
    highpass,
    inverse_min_max_scale,
    min_max_scale,
    model_features,
    resample_fs,
    resample_signal,
)
from ecg_dicom.errors import InputError


class TestResample:
    def test_linear_ramp_stays_linear_and_keeps_endpoints(self):
        x = np.linspace(-3.0, 7.0, 101)
        y = resample_signal(x, 40)
        assert y.shape == (40,)
        np.testing.assert_allclose(y, np.linspace(-3.0, 7.0, 40), atol=1e-12)

    def test_works_on_last_axis_of_2d(self):
        x = np.stack([np.arange(10.0), -np.arange(10.0)])
        assert resample_signal(x, 19).shape == (2, 19)

    def test_resample_fs_keeps_timing_of_a_sine(self):
        fs_in, fs_out, f = 500.0, 250.0, 3.0
        t_in = np.arange(5000) / fs_in
        y = resample_fs(np.sin(2 * np.pi * f * t_in), fs_in, fs_out)
        t_out = np.arange(y.size) / fs_out
        assert y.size == 2500
        np.testing.assert_allclose(y, np.sin(2 * np.pi * f * t_out), atol=1e-3)

    def test_resample_fs_round_trip_is_close(self):
        x = synthetic_lead(10, 500).astype(np.float64)
        back = resample_fs(resample_fs(x, 500, 1000), 1000, 500, length=x.size)
        np.testing.assert_allclose(back, x, atol=1e-9)


class TestMinMax:
    def test_range_is_unit_interval_and_inverse_restores_microvolts(self):
        x = synthetic_lead().astype(np.float64)
        scaled, lo, hi = min_max_scale(x, return_params=True)
        assert scaled.min() == 0.0 and scaled.max() == 1.0
        np.testing.assert_allclose(inverse_min_max_scale(scaled, lo, hi), x, atol=1e-9)

    def test_flat_signal_does_not_divide_by_zero(self):
        assert np.all(min_max_scale(np.full(10, 5.0)) == 0.0)

    def test_model_features_keep_absolute_amplitude(self):
        x = synthetic_lead()
        f1, f2 = model_features(x), model_features(2 * x)
        assert f1.shape == (2, x.size) and f1.dtype == np.float32
        np.testing.assert_allclose(f1[0], f2[0], atol=1e-6)  # min-max channel: scale-free
        np.testing.assert_allclose(2 * f1[1], f2[1], rtol=1e-5)  # mV channel: scales


def test_highpass_removes_baseline_wander_keeps_qrs():
    fs = 500.0
    x = synthetic_lead(10, fs).astype(np.float64)
    t = np.arange(x.size) / fs
    wander = 800 * np.sin(2 * np.pi * 0.1 * t)
    y = highpass(x + wander, fs)
    assert abs(np.corrcoef(y, highpass(x, fs))[0, 1]) > 0.99
    assert np.ptp(y) < np.ptp(x + wander)


class TestCheckSingleLead:
    def test_accepts_one_lead_in_both_shapes_and_converts_mv(self):
        x = synthetic_lead()
        np.testing.assert_allclose(check_single_lead(x, 500), x)
        np.testing.assert_allclose(check_single_lead(x[None, :] / 1000, 500, "mV"), x, rtol=1e-6)

    @pytest.mark.parametrize("array, fs, match", [
        (np.array(["a", "b"]), 500, "not a numeric array"),
        (np.zeros(0), 500, "empty"),
        (np.zeros((12, 5000)), 500, "not one lead"),
        (np.r_[synthetic_lead()[:-1], np.nan], 500, "NaN or infinite"),
        (synthetic_lead(1.5), 500, "too short"),
        (synthetic_lead() / 1000, 500, r"mV given as µV"),
        (synthetic_lead() * 100, 500, "raw ADC counts"),
        (synthetic_lead() + 2_000_000, 500, "baseline offset"),
        (synthetic_lead(), 50, "sampling rate"),
    ])
    def test_refuses_with_a_reason(self, array, fs, match):
        with pytest.raises(InputError, match=match):
            check_single_lead(array, fs)
