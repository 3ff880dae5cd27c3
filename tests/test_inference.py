"""Reconstructor: shapes and units, exact limb leads, pass-through, windows without seams."""

import numpy as np
import pytest
import torch
from conftest import synthetic_lead

from ecg_dicom.core.checkpoint import Checkpoint, Preprocessing
from ecg_dicom.core.inference import Reconstructor, overlap_weights, window_starts
from ecg_dicom.core.model import ModelConfig
from ecg_dicom.leads import LEADS_12, learned_leads

I, II, III, AVR, AVL, AVF = range(6)


def assert_limb_identities(leads: np.ndarray) -> None:
    tol = 1e-3  # µV, float32 rounding
    np.testing.assert_allclose(leads[III], leads[II] - leads[I], atol=tol)
    np.testing.assert_allclose(leads[AVR], -(leads[I] + leads[II]) / 2, atol=tol)
    np.testing.assert_allclose(leads[AVL], leads[I] - leads[II] / 2, atol=tol)
    np.testing.assert_allclose(leads[AVF], leads[II] - leads[I] / 2, atol=tol)


@pytest.mark.parametrize("seconds, fs", [(10, 500), (2, 100), (7.3, 1000), (60, 250), (20.3, 300)])
def test_shape_units_pass_through_and_identities(tiny_reconstructor, seconds, fs):
    x = synthetic_lead(seconds, fs)
    out = tiny_reconstructor.reconstruct(x, fs)
    assert out.shape == (12, x.size) and out.dtype == np.float32
    np.testing.assert_array_equal(out[I], x)
    assert_limb_identities(out)
    assert np.all(np.isfinite(out))


def test_lead_ii_model_passes_lead_ii_through(tiny_checkpoint_ii):
    rec = Reconstructor.from_checkpoint(tiny_checkpoint_ii, input_lead="II")
    x = synthetic_lead(10, 500)
    out = rec.reconstruct(x, 500)
    np.testing.assert_array_equal(out[II], x)
    assert_limb_identities(out)


def test_batch_equals_one_at_a_time(tiny_reconstructor):
    xs = [synthetic_lead(10, 500, seed=s) * (1 + s) for s in range(3)] + [synthetic_lead(25, 360)]
    fss = [500, 500, 500, 360]
    batch = tiny_reconstructor.reconstruct_batch(xs, fss)
    for x, fs, res in zip(xs, fss, batch):
        np.testing.assert_allclose(res.leads, tiny_reconstructor.reconstruct(x, fs), atol=1e-3)
        assert res.sigma is not None and res.sigma.shape == (7,) and np.all(res.sigma > 0)


def test_outputs_are_microvolts_and_follow_input_amplitude(tiny_reconstructor):
    """The model sees the lead in mV too, so an input twice as large changes the output."""
    x = synthetic_lead()
    a = tiny_reconstructor.reconstruct(x, 500)
    b = tiny_reconstructor.reconstruct(2 * x, 500)
    assert not np.allclose(a[6:], b[6:])
    assert np.abs(a).max() < 1e6  # µV, not a [0, 1] prediction


def test_windows_cover_the_record_and_weights_never_vanish():
    assert window_starts(2500, 2500, 1250) == [0]
    starts = window_starts(7000, 2500, 1250)
    assert starts[0] == 0 and starts[-1] + 2500 == 7000
    assert all(b - a <= 1250 for a, b in zip(starts, starts[1:]))
    w = overlap_weights(2500)
    assert w.min() > 0 and w.max() == 1.0


class PerWindowConstant(torch.nn.Module):
    """A stand-in model whose prediction is a different constant in every window: the
    worst case for stitching, since neighbouring windows disagree everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(variance_head=False)
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor):
        level = torch.rand(x.shape[0], 1, 1, generator=self.generator)  # mV
        return level.expand(x.shape[0], 7, x.shape[-1]).clone(), None


def test_long_record_is_stitched_without_seams():
    checkpoint = Checkpoint(PerWindowConstant(), "I", learned_leads("I"), "stub", Preprocessing())
    rec = Reconstructor(checkpoint)
    fs = checkpoint.preprocessing.fs  # no resampling: window edges fall on known samples
    out = rec.reconstruct(synthetic_lead(60, fs), fs)
    steps = np.abs(np.diff(out[6:], axis=1))
    # Windows differ by up to 1 mV; a cross-fade over the overlap moves a few µV per sample.
    assert out[6:].max() - out[6:].min() > 100
    assert steps.max() < 10, f"jump of {steps.max():.0f} µV between neighbouring samples"


def test_lead_names_are_the_standard_order():
    assert LEADS_12[:6] == ("I", "II", "III", "aVR", "aVL", "aVF")


def test_input_high_pass_makes_offsets_and_drift_irrelevant():
    """A checkpoint that high-passes its input (as the current recipe trains) draws the same
    leads whatever baseline offset or slow drift a cart adds; one without does not."""
    from conftest import TINY_CONFIG

    from ecg_dicom.core.model import BiLSTMAttentionModel

    torch.manual_seed(0)
    model = BiLSTMAttentionModel(TINY_CONFIG).eval()
    x = synthetic_lead(10, 500).astype(np.float64)
    t = np.arange(x.size) / 500
    drifting = x + 5000.0 + 1000.0 * np.sin(2 * np.pi * 0.1 * t)
    outputs = {}
    for hz in (0.0, 0.5):
        pre = Preprocessing(window=2500, hop=1250, highpass_hz=hz)
        rec = Reconstructor(Checkpoint(model, "I", learned_leads("I"), "stub", pre))
        clean, drift = rec.reconstruct(x, 500), rec.reconstruct(drifting, 500)
        outputs[hz] = np.abs(clean[6:] - drift[6:]).max()
        assert rec.flops_per_record(10.0) == model.flops(2500)      # a 10 s record is one window
    assert outputs[0.5] < 0.1 * outputs[0.0], outputs


def test_a_task_stepped_a_batch_at_a_time_gives_what_one_pass_gives(tiny_reconstructor):
    """Issue 11 items 5/6: long inputs go through the model a chunk at a time (bounded memory,
    a stop or other jobs in between) with bit-identical results."""
    leads = [synthetic_lead(seconds=s, seed=i) for i, s in enumerate((2.0, 300.0, 11.0))]
    fs = [500.0, 360.0, 1000.0]
    task = tiny_reconstructor.start(leads, fs)
    with pytest.raises(RuntimeError, match="not predicted yet"):
        task.results()
    steps = 0
    while not task.finished:
        assert task.step(tiny_reconstructor.batch_size) > 0
        steps += 1
    assert steps == -(-task.total // tiny_reconstructor.batch_size) > 3
    seen = []
    whole = tiny_reconstructor.reconstruct_batch(leads, fs, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (task.total, task.total)
    for a, b in zip(task.results(), whole):
        np.testing.assert_array_equal(a.leads, b.leads)
        np.testing.assert_array_equal(a.sigma, b.sigma)
