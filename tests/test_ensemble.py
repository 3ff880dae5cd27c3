"""Ensembles: the averaged forward pass, the checkpoint round trip and `ecg-dicom ensemble`."""

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, synthetic_lead

from ecg_dicom.cli import main
from ecg_dicom.core.checkpoint import Preprocessing, load_checkpoint, save_checkpoint
from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.model import BiLSTMAttentionModel, EnsembleModel, ModelConfig
from ecg_dicom.errors import CheckpointError
from ecg_dicom.leads import LEADS_12


def _member(seed: int, config: ModelConfig = TINY_CONFIG) -> BiLSTMAttentionModel:
    torch.manual_seed(seed)
    return BiLSTMAttentionModel(config).eval()


def _save_member(path, seed, train_records, baselines, input_lead="I", preprocessing=Preprocessing(),
                 held_out=None):
    return save_checkpoint(path, _member(seed), input_lead, f"m{seed}", preprocessing,
                           {"data": {"train_records": train_records, "databases": {"ludb": 1}},
                            "held_out": held_out or {}, "baselines": baselines,
                            "command": f"ecg-dicom train --seed {seed}"})


def test_ensemble_mean_is_members_mean_and_variance_includes_their_spread():
    a, b = _member(0), _member(1)
    x = torch.randn(2, 2, 250)
    with torch.no_grad():
        (ma, la), (mb, lb) = a(x), b(x)
        mean, log_var = EnsembleModel([a, b])(x)
    torch.testing.assert_close(mean, (ma + mb) / 2)
    within = (la.exp() + lb.exp()) / 2
    spread = ((ma - mb) / 2) ** 2
    torch.testing.assert_close(log_var.exp(), within + spread, rtol=1e-4, atol=1e-9)
    assert bool((log_var.exp() > within).any())


def test_ensemble_without_variance_heads_uses_the_spread():
    config = ModelConfig(stem_channels=8, hidden=8, lstm_layers=1, heads=2, dropout=0.0, variance_head=False)
    a, b = _member(0, config), _member(1, config)
    x = torch.randn(1, 2, 250)
    with torch.no_grad():
        mean, log_var = EnsembleModel([a, b])(x)
        spread = ((a(x)[0] - b(x)[0]) / 2) ** 2
    torch.testing.assert_close(log_var.exp(), spread.clamp_min(np.exp(-12.0)), rtol=1e-4, atol=1e-9)


def test_ensemble_needs_two_compatible_members():
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleModel([_member(0)])
    other = ModelConfig(stem_channels=8, hidden=8, lstm_layers=1, heads=2, stride=10)
    with pytest.raises(ValueError, match="stride"):
        EnsembleModel([_member(0), _member(1, other)])


def test_ensemble_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    ensemble = EnsembleModel([_member(0), _member(1)]).eval()
    path = save_checkpoint(tmp_path / "e.pt", ensemble, "I", "ens-test", Preprocessing(), {})
    loaded = load_checkpoint(path, "I").model
    assert isinstance(loaded, EnsembleModel) and len(loaded.members) == 2
    x = torch.randn(2, 2, 250)
    with torch.no_grad():
        for got, want in zip(loaded(x), ensemble(x)):
            np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_ensemble_checkpoint_with_a_broken_member_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "e.pt", EnsembleModel([_member(0), _member(1)]), "I", "x", Preprocessing(), {})
    payload = torch.load(path, weights_only=True)
    del payload["members"][1]["state_dict"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="lacks model_config or state_dict"):
        load_checkpoint(path, "I")


def test_version_1_single_model_checkpoints_still_load(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _member(0), "I", "old", Preprocessing(), {})
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 1
    torch.save(payload, path)
    assert isinstance(load_checkpoint(path, "I").model, BiLSTMAttentionModel)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path, "I")


def test_ensemble_command_combines_checkpoints_for_the_whole_pipeline(tmp_path, capsys):
    synthetic = _save_member(tmp_path / "synth.pt", 0, [], {"kind": "fit on synthetic"},
                             held_out={"validation_records": ["synthetic/7"]})
    real = _save_member(tmp_path / "real.pt", 1, ["ludb/1", "ludb/2"], {"kind": "fit on real"},
                        held_out={"validation_records": ["ludb/3", "ludb/4"], "excluded_databases": ["ptb", "ptbxl"]})
    real_2 = _save_member(tmp_path / "real_2.pt", 2, ["ludb/1", "ludb/3"], {"kind": "fit on real, 2"},
                          held_out={"validation_records": ["ludb/2", "ludb/4"], "excluded_databases": ["ptb"]})
    out = tmp_path / "ens.pt"
    assert main(["ensemble", str(synthetic), str(real), str(real_2), "--out", str(out), "--input-lead", "I"]) == 0
    assert "3 members" in capsys.readouterr().out
    ckpt = load_checkpoint(out, "I")
    assert ckpt.training["data"]["train_records"] == ["ludb/1", "ludb/2", "ludb/3"]  # evaluate warns on these
    assert ckpt.training["held_out"] == {"validation_records": ["ludb/4"], "excluded_databases": ["ptb"]}
    assert ckpt.training["baselines"] == {"kind": "fit on real"}  # the real-data member's baselines
    assert [m["checkpoint"] for m in ckpt.training["members"]] == [str(synthetic), str(real), str(real_2)]
    assert ".ens3." in ckpt.model_version

    lead = synthetic_lead()
    recon = Reconstructor(ckpt).reconstruct_batch([lead], [500.0])[0]
    singles = [Reconstructor.from_checkpoint(p, "I").reconstruct(lead, 500.0) for p in (synthetic, real, real_2)]
    assert recon.leads.shape == (12, lead.size)
    np.testing.assert_array_equal(recon.leads[LEADS_12.index("I")], lead)
    learned = [LEADS_12.index(name) for name in ("II", "V1", "V6")]
    np.testing.assert_allclose(recon.leads[learned], np.mean([single[learned] for single in singles], axis=0),
                               rtol=1e-4, atol=0.05)
    assert recon.sigma is not None and recon.sigma.shape == (7,)


def test_ensemble_command_refuses_mismatched_members(tmp_path, capsys):
    lead_i = _save_member(tmp_path / "a.pt", 0, [], {})
    lead_ii = _save_member(tmp_path / "b.pt", 1, [], {}, input_lead="II")
    assert main(["ensemble", str(lead_i), str(lead_ii), "--out", str(tmp_path / "e.pt")]) == 2
    assert "input lead II, not I" in capsys.readouterr().err
    other_pre = _save_member(tmp_path / "c.pt", 2, [], {}, preprocessing=Preprocessing(hop=500))
    assert main(["ensemble", str(lead_i), str(other_pre), "--out", str(tmp_path / "e.pt")]) == 2
    assert "preprocesses differently" in capsys.readouterr().err
    assert main(["ensemble", str(lead_i), "--out", str(tmp_path / "e.pt")]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert not (tmp_path / "e.pt").exists()
