"""Model shapes, checkpoint round trip and refusal of mismatched checkpoints."""

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, make_tiny_checkpoint

from ecg_dicom.core.checkpoint import Preprocessing, load_checkpoint, save_checkpoint
from ecg_dicom.core.model import Attention, BiLSTMAttentionModel, ModelConfig
from ecg_dicom.errors import CheckpointError


def test_forward_shapes_mean_and_log_variance():
    model = BiLSTMAttentionModel(TINY_CONFIG).eval()
    mean, log_var = model(torch.zeros(3, 2, 500))
    assert mean.shape == (3, 7, 500) and log_var.shape == (3, 7, 500)


def test_forward_without_variance_head():
    model = BiLSTMAttentionModel(ModelConfig(stem_channels=8, hidden=8, lstm_layers=1, heads=2,
                                             variance_head=False))
    mean, log_var = model(torch.zeros(1, 2, 50))
    assert mean.shape == (1, 7, 50) and log_var is None


def test_rejects_length_not_multiple_of_stride():
    with pytest.raises(ValueError, match="multiple of stride"):
        BiLSTMAttentionModel(TINY_CONFIG)(torch.zeros(1, 2, 503))


def test_attention_keeps_shape_and_rejects_bad_heads():
    assert Attention(16, 4)(torch.randn(2, 30, 16)).shape == (2, 30, 16)
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 4)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "c.pt")
    ckpt = load_checkpoint(path, "I")
    torch.manual_seed(0)
    ref = BiLSTMAttentionModel(TINY_CONFIG).eval()
    x = torch.randn(2, 2, 250)
    with torch.no_grad():
        np.testing.assert_array_equal(ckpt.model(x)[0].numpy(), ref(x)[0].numpy())
    assert ckpt.output_leads == ("II", "V1", "V2", "V3", "V4", "V5", "V6")
    assert ckpt.preprocessing == Preprocessing()


def test_checkpoint_for_other_lead_is_refused(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "c.pt", "II")
    with pytest.raises(CheckpointError, match="input lead II, not I"):
        load_checkpoint(path, "I")


def test_checkpoint_with_wrong_weights_is_refused(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "c.pt")
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["hidden"] = 16
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not match its model config"):
        load_checkpoint(path, "I")


def test_foreign_or_corrupt_files_are_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an ecg-dicom checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_is_small_and_self_describing(tmp_path):
    model = BiLSTMAttentionModel(ModelConfig())
    path = save_checkpoint(tmp_path / "full.pt", model, "I", "v-test", Preprocessing(), {"data": "x"})
    payload = torch.load(path, weights_only=True)
    for key in ("model_version", "input_lead", "output_leads", "model_config", "preprocessing", "training"):
        assert key in payload
    assert path.stat().st_size < 20 * 2**20


@pytest.mark.parametrize("config", [ModelConfig(), ModelConfig(stem_channels=16, down_channels=64, head_channels=16,
                                                               stride=10, head_kernel=3, stem_kernel=5),
                                    ModelConfig(stem_channels=16, down_channels=64, head_channels=16, stride=10,
                                                upsample="linear")])
def test_flop_count_follows_the_config(config: ModelConfig) -> None:
    """The convolutions' count equals torch's own FLOP counter; the first shipped model's
    window costs the ~356 MFLOP its model card and issue 13 state."""
    from torch.utils.flop_counter import FlopCounterMode

    model = BiLSTMAttentionModel(config).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, config.in_features, 2500))
    counted = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    parts = model.flops_breakdown(2500)
    assert parts["conv"] == counted["aten.convolution"]
    h, t = config.hidden, 2500 // config.stride
    assert parts["lstm"] == 2 * 2 * t * 4 * h * ((config.lstm_input + h) + (2 * h + h))
    if config == ModelConfig():
        assert model.flops(1250) == pytest.approx(356e6, rel=0.01)
    else:
        assert model.flops(2500) < 0.2e9
