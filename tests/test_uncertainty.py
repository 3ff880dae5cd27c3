"""Per-lead and record uncertainty: the formula, the words, the shipped calibration, and every
output that carries it (.json, .confidence.json, the page, the DICOM annotation, /metrics)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import synthetic_lead
from pydicom import dcmread

from ecg_dicom.cli import main
from ecg_dicom.core.checkpoint import shipped_checkpoint_path
from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.uncertainty import (
    CALIBRATION_SUFFIX,
    RecordUncertainty,
    UncertaintyCalibration,
    assess,
    expected_one_minus_r,
    lead_ranges,
)
from ecg_dicom.training.calibrate import fit, rescale
from ecg_dicom.training.evaluate import uncertainty_ranking


@pytest.mark.parametrize("leads, words", [
    (("V2", "V3", "V4"), "V2–V4"), (("II", "V1", "V2"), "II, V1, V2"), (("V1", "V3", "V4", "V5", "V6"), "V1, V3–V6"),
    (("I",), "I"), ((), ""),
])
def test_unreliable_leads_read_as_ranges(leads, words):
    assert lead_ranges(leads) == words


def test_expected_one_minus_r_follows_sigma_relative_to_the_lead():
    u = expected_one_minus_r(np.array([0.0, 50.0, 100.0, 400.0, 10.0]), np.array([100.0, 100.0, 100.0, 100.0, 0.0]))
    assert u[0] == 0.0 and 0 < u[1] < u[2] < u[3] < 1 and u[4] == 1.0
    assert u[2] == pytest.approx(1 - 1 / np.sqrt(2))   # σ = std(pred): r = 1/√2
    assert expected_one_minus_r(np.array([50.0]), np.array([100.0]), 2.0)[0] == pytest.approx(u[2])


def test_record_uncertainty_names_the_unreliable_leads():
    t = np.arange(2000) / 500
    learned = ("II", "V1", "V2", "V3", "V4", "V5", "V6")
    leads = np.stack([300 * np.sin(2 * np.pi * 1.2 * t)] * 7)        # std ≈ 212 µV each
    sigma = np.array([20, 20, 400, 400, 400, 20, 20.0])
    unc = assess(sigma, leads, learned, UncertaintyCalibration(record_threshold=0.2))
    assert unc.unreliable == ("V2", "V3", "V4") and unc.above_threshold
    assert unc.text == "Reconstruction uncertainty 0.23 (threshold 0.20): V2–V4 unreliable for this record"
    calm = assess(sigma / 20, leads, learned, UncertaintyCalibration())
    assert not calm.unreliable and not calm.above_threshold and calm.text.endswith("no lead flagged")
    assert calm.to_json()["record_uncertainty"] == pytest.approx(calm.record, abs=1e-4)


def test_calibration_for_other_weights_or_unreadable_is_not_used(tmp_path, caplog):
    weights = tmp_path / "m.pt"
    assert UncertaintyCalibration.for_weights(weights, "v1") == UncertaintyCalibration()
    (tmp_path / f"m{CALIBRATION_SUFFIX}").write_text(json.dumps({"scale": 2.5, "record_threshold": 0.3,
                                                                "model_version": "v1"}))
    assert UncertaintyCalibration.for_weights(weights, "v1").scale == 2.5
    assert UncertaintyCalibration.for_weights(weights, "v2") == UncertaintyCalibration()
    assert "fitted for model v1, not v2" in caplog.text
    (tmp_path / f"m{CALIBRATION_SUFFIX}").write_text(json.dumps({"scale": -1, "model_version": "v1"}))
    assert UncertaintyCalibration.for_weights(weights, "v1") == UncertaintyCalibration()
    assert "scale must be a positive number" in caplog.text


def _results(scale: float, n: int = 60, seed: int = 0) -> list[dict]:
    """Evaluate-style results whose 1 − r is what σ implies at ``scale`` (plus a little noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rel = {lead: float(rng.uniform(0.1, 1.5)) for lead in ("V1", "V2")}
        one_minus_r = {k: float(expected_one_minus_r(np.array(v), 1.0, scale)) + rng.normal(0, 0.01)
                       for k, v in rel.items()}
        out.append({"name": f"r{i}", "leads": {k: {"model": {"r": 1 - v}} for k, v in one_minus_r.items()},
                    "uncertainty": {"relative": rel, "leads": {}, "record": 0.0, "threshold": 0.3}})
    return out


def test_calibration_recovers_the_scale_and_ranks_the_worst_records():
    results = _results(scale=2.0)
    cal = fit(results, "v", "synthetic")
    assert cal.scale == pytest.approx(2.0, rel=0.05)
    ranking = uncertainty_ranking(rescale(results, cal))
    assert ranking["auroc_worst_decile"] > 0.95 and min(ranking["per_lead_spearman"].values()) > 0.9
    assert ranking["share_above_threshold"] == pytest.approx(0.1, abs=0.02)   # the 90th percentile


def test_every_output_carries_the_uncertainty(tiny_checkpoint, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    np.save(inp / "a.npy", synthetic_lead())
    assert main(["convert", str(inp), str(out), "--checkpoint", str(tiny_checkpoint), "--format", "both",
                 "--confidence", "--report"]) == 0
    conf = json.loads((out / "a.confidence.json").read_text())
    assert isinstance(conf["record_uncertainty"], float) and conf["record_uncertainty_threshold"] > 0
    assert set(conf["leads"]["V1"]) == {"sigma_uv", "relative_uncertainty", "uncertainty"}
    meta = json.loads((out / "a.json").read_text())
    assert meta["uncertainty"]["record_uncertainty"] == conf["record_uncertainty"]
    text = meta["uncertainty"]["text"]
    assert text.startswith("Reconstruction uncertainty ") and conf["summary"] == text
    notes = [str(a.UnformattedTextValue) for a in dcmread(out / "a.dcm").WaveformAnnotationSequence]
    assert text in notes
    page = subprocess.run(["pdftotext", str(out / "a.pdf"), "-"], capture_output=True, text=True, check=True).stdout
    assert "Reconstruction uncertainty" in page


def test_reconstructions_above_the_threshold_are_counted():
    from ecg_dicom import metrics

    def count(label: str) -> float:
        return metrics.RECONSTRUCTIONS.labels(label)._value.get()

    before = {k: count(k) for k in ("above_threshold", "within", "unavailable")}
    metrics.record_uncertainty(RecordUncertainty({"V1": 0.9}, 0.9, 0.3, ("V1",)))
    metrics.record_uncertainty(RecordUncertainty({"V1": 0.1}, 0.1, 0.3, ()))
    metrics.record_uncertainty(None)
    assert {k: count(k) - before[k] for k in before} == {"above_threshold": 1, "within": 1, "unavailable": 1}
    assert 'ecg_dicom_reconstructions_total{uncertainty="above_threshold"}' in metrics.exposition().decode()


@pytest.mark.parametrize("lead", ["I", "II", "I+II"])
def test_each_shipped_model_has_its_own_calibration(lead):
    assert shipped_checkpoint_path(lead).with_suffix(CALIBRATION_SUFFIX).is_file()
    rec = Reconstructor.from_checkpoint(None, lead)
    assert rec.calibration.model_version == rec.model_version and "validation records" in rec.calibration.fitted_on
    assert 0 < rec.calibration.record_threshold < 1
