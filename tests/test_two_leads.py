"""The two-lead model (I+II -> V1–V6): .npy (2, N) with a sidecar naming its rows, DICOM
sources, convert and the service's watched folder; both measured leads pass through and
the four computed limb leads are exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_lead
from peers import Service, dciodvfy_errors, wait_for, write_config
from pydicom import dcmread

from ecg_dicom.cli import main
from ecg_dicom.core.checkpoint import Preprocessing, save_checkpoint
from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.model import BiLSTMAttentionModel, ModelConfig
from ecg_dicom.dicom.reader import read_dicom_lead
from ecg_dicom.errors import InputError
from ecg_dicom.inputs import load_input
from ecg_dicom.leads import CHEST_LEADS, LEADS_12, learned_leads
from ecg_dicom.sidecar import parse_sidecar

TWO_LEAD_CONFIG = ModelConfig(in_features=4, n_leads=6, stem_channels=8, hidden=8, lstm_layers=1, heads=2,
                              dropout=0.0)


@pytest.fixture(scope="module")
def tiny_two_lead(tmp_path_factory) -> Path:
    """A small randomly initialised I+II checkpoint."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_I+II.pt", BiLSTMAttentionModel(TWO_LEAD_CONFIG),
                           "I+II", "tiny-two-lead-0", Preprocessing(), {"data": "none (random weights for tests)"})


def two_leads(seconds: float = 8.0, fs: float = 500.0) -> np.ndarray:
    """(2, N) float32 µV: lead I and a different lead II (larger, other noise)."""
    return np.stack([synthetic_lead(seconds, fs, seed=1) * 0.6, synthetic_lead(seconds, fs, seed=2)])


def assert_exact_limb_leads(out: np.ndarray, lead_i: np.ndarray, lead_ii: np.ndarray) -> None:
    """Both measured leads copied, III/aVR/aVL/aVF by Einthoven's and Goldberger's laws."""
    i, ii = lead_i.astype(np.float32), lead_ii.astype(np.float32)
    np.testing.assert_array_equal(out[0], i)
    np.testing.assert_array_equal(out[1], ii)
    for name, value in (("III", ii - i), ("aVR", -(i + ii) / 2), ("aVL", i - ii / 2), ("aVF", ii - i / 2)):
        np.testing.assert_allclose(out[LEADS_12.index(name)], value, atol=1e-3)


def test_the_two_lead_model_learns_the_chest_leads_only():
    assert learned_leads("I+II") == CHEST_LEADS


def test_reconstructor_takes_two_rows_and_refuses_one(tiny_two_lead):
    rec = Reconstructor.from_checkpoint(tiny_two_lead, "I+II")
    x = two_leads(seconds=23.0)   # several windows, stitched
    out = rec.reconstruct(x, 500.0)
    assert out.shape == (12, x.shape[1]) and np.isfinite(out).all()
    assert_exact_limb_leads(out, x[0], x[1])
    assert rec.reconstruct_batch([x], [500.0])[0].sigma.shape == (6,)
    with pytest.raises(ValueError, match=r"takes \(2, N\)"):
        rec.reconstruct(x[0], 500.0)


def test_two_lead_npy_converts_with_both_leads_through(tiny_two_lead, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    x = two_leads(fs=250.0)
    np.save(inp / "six_lead.npy", x[::-1])   # rows II, I: the sidecar says so
    (inp / "six_lead.json").write_text(json.dumps({"leads": ["II", "I"], "fs": 250}))
    assert main(["convert", str(inp), str(out), "--checkpoint", str(tiny_two_lead), "--input-lead", "I+II",
                 "--format", "both", "--confidence", "--precision", "fp32"]) == 0
    leads = np.load(out / "six_lead.npy", allow_pickle=False)
    assert leads.shape == (12, x.shape[1])
    assert_exact_limb_leads(leads, x[0], x[1])
    meta = json.loads((out / "six_lead.json").read_text())
    assert meta["lead"] == "I+II" and meta["input_leads"] == ["I", "II"] and meta["fs"] == 250.0
    assert sorted(meta["sigma_uv"]) == sorted(CHEST_LEADS)   # limb leads exact: no σ
    assert set(json.loads((out / "six_lead.confidence.json").read_text())["leads"]) == set(CHEST_LEADS)
    dcm = out / "six_lead.dcm"
    assert dciodvfy_errors(dcm) == []
    ds = dcmread(dcm)
    assert [int(g.NumberOfWaveformChannels) for g in ds.WaveformSequence] == [2, 10]
    assert "Leads I and II as acquired" in ds.WaveformAnnotationSequence[0].UnformattedTextValue
    np.testing.assert_allclose(read_dicom_lead(dcm, "II").signal_uv, x[1], atol=2.0)


def test_two_lead_npy_needs_its_rows_named(tiny_two_lead, tmp_path):
    np.save(tmp_path / "a.npy", two_leads())
    with pytest.raises(InputError, match=r'sidecar naming its rows, \{"leads": \["I", "II"\]\}'):
        load_input(tmp_path / "a.npy", "I+II", 500.0, sidecar=tmp_path / "a.json")
    (tmp_path / "a.json").write_text(json.dumps({"leads": ["I", "V1"]}))
    with pytest.raises(InputError, match="no lead II"):
        load_input(tmp_path / "a.npy", "I+II", 500.0, sidecar=tmp_path / "a.json")
    np.save(tmp_path / "b.npy", two_leads()[0])
    (tmp_path / "b.json").write_text(json.dumps({"leads": ["I", "II"]}))
    with pytest.raises(InputError, match=r"shape \(4000,\) does not match the sidecar's 2 leads"):
        load_input(tmp_path / "b.npy", "I+II", 500.0, sidecar=tmp_path / "b.json")


def test_a_bad_row_is_refused_naming_its_lead(tmp_path):
    x = two_leads()
    x[1] = 0.0   # lead II flat
    np.save(tmp_path / "a.npy", x)
    (tmp_path / "a.json").write_text(json.dumps({"leads": ["I", "II"]}))
    with pytest.raises(InputError, match="^lead II: peak-to-peak"):
        load_input(tmp_path / "a.npy", "I+II", 500.0, sidecar=tmp_path / "a.json")


def test_a_one_lead_model_takes_its_row_of_a_two_lead_npy(tmp_path):
    x = two_leads()
    np.save(tmp_path / "a.npy", x)
    (tmp_path / "a.json").write_text(json.dumps({"leads": ["I", "II"]}))
    item = load_input(tmp_path / "a.npy", "II", 500.0, sidecar=tmp_path / "a.json")
    np.testing.assert_array_equal(item.signal_uv, x[1].astype(np.float64))
    assert sorted(item.source_leads) == ["I", "II"]


@pytest.mark.parametrize("leads, reason", [
    ("I", "'leads' must be a list"), ([], "'leads' must be a list"), (["I", "II", "V1"], "1 to 2 lead names"),
    (["I", 2], "not a lead name"), (["I", "X7"], "not a lead name"), (["I", "i"], "names a lead twice"),
])
def test_sidecar_leads_are_checked(leads, reason):
    with pytest.raises(InputError, match=reason):
        parse_sidecar({"leads": leads})


def test_sidecar_lead_and_leads_together_are_refused():
    with pytest.raises(InputError, match="not both"):
        parse_sidecar({"lead": "I", "leads": ["I", "II"]})
    assert parse_sidecar({"leads": ["lead ii", "I"]}).leads == ("II", "I")


def test_both_leads_of_a_real_12_lead_dicom(tiny_two_lead, shared_data, tmp_path):
    ecg = shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm"
    item = load_input(ecg, "I+II")
    assert item.signal_uv.shape[0] == 2 and item.quality is not None
    out = tmp_path / "out"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ecg.dcm").write_bytes(ecg.read_bytes())
    assert main(["convert", str(tmp_path / "in"), str(out), "--checkpoint", str(tiny_two_lead),
                 "--input-lead", "I+II", "--format", "dicom"]) == 0
    assert dciodvfy_errors(out / "ecg.dcm") == []
    leads = read_dicom_lead(out / "ecg.dcm", "II").signal_uv
    np.testing.assert_allclose(leads, read_dicom_lead(ecg, "II").signal_uv, atol=3.0)


@pytest.mark.slow
def test_service_watched_folder_takes_two_lead_npy(tiny_two_lead, tmp_path):
    cfg = write_config(tmp_path / "site", tiny_two_lead, input_lead="I+II", allowed_callers=None)
    svc = Service(cfg).start()
    try:
        x = two_leads()
        staged = tmp_path / "six.npy"
        np.save(staged, x)
        (svc.watch / "six.json").write_text(json.dumps({"leads": ["I", "II"], "fs": 500}))
        staged.replace(svc.watch / "six.npy")
        result = svc.output / "six.npy"
        wait_for(lambda: result.exists() and (svc.output / "six.json").exists(), 60, "the two-lead result")
        leads = np.load(result, allow_pickle=False)
        assert leads.shape == (12, x.shape[1])
        assert_exact_limb_leads(leads, x[0], x[1])
        assert json.loads((svc.output / "six.json").read_text())["input_leads"] == ["I", "II"]
    finally:
        assert svc.stop() == 0
