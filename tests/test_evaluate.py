"""Evaluation: the linear baselines, the per-lead metrics and `ecg-dicom evaluate` on WFDB
and .npy folders (model and both baselines side by side, derived limb leads apart)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import PTBXL_SAMPLE

from ecg_dicom.cli import main
from ecg_dicom.training.baselines import (
    LinearBaseline,
    fit_linear_baselines,
    lag_matrix,
)
from ecg_dicom.training.data import read_wfdb_record
from ecg_dicom.training.evaluate import lead_metrics, summarize


def _noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 100, n)


def test_lagged_baseline_recovers_a_known_fir_relation() -> None:
    xs = [_noise(3000, s) for s in range(3)]
    # lead k = 2 x(t - 3) - 0.5 x(t + 5) + k
    ys = [np.stack([2 * lag_matrix(x, np.array([-3]))[0] - 0.5 * lag_matrix(x, np.array([5]))[0] + k
                    for k in range(7)]) for x in xs]
    b = fit_linear_baselines(zip(xs, ys), "I", ("linear_lagged",))["linear_lagged"]
    assert list(b.lags) == list(range(-20, 21))
    expected = np.zeros(41)
    expected[20 - 3], expected[20 + 5] = 2.0, -0.5
    np.testing.assert_allclose(b.coef, np.tile(expected, (7, 1)), atol=1e-3)
    np.testing.assert_allclose(b.intercept, np.arange(7), atol=0.05)
    x = _noise(1000, 9)
    np.testing.assert_allclose(b.predict(x, 500.0)[1], 2 * lag_matrix(x, np.array([-3]))[0]
                               - 0.5 * lag_matrix(x, np.array([5]))[0] + 1, atol=0.1)
    again = LinearBaseline.from_dict(json.loads(json.dumps(b.to_dict())))
    np.testing.assert_allclose(again.predict(x, 500.0), b.predict(x, 500.0))


def test_zero_lag_baseline_is_one_gain_per_lead() -> None:
    xs = [_noise(2000, s) for s in range(2)]
    gains = np.array([0.5, -1.0, 2.0, 0.0, 1.5, 3.0, -0.2])
    b = fit_linear_baselines(((x, gains[:, None] * x) for x in xs), "II", ("linear_zero_lag",))["linear_zero_lag"]
    assert b.coef.shape == (7, 1) and b.output_leads[0] == "I"
    np.testing.assert_allclose(b.coef[:, 0], gains, atol=1e-6)


def test_both_baselines_from_one_pass_match_separate_fits() -> None:
    """The zero-lag fit is read off the lagged normal equations: one pass over a generator."""
    xs = [_noise(2500, s) for s in range(4)]
    ys = [np.stack([0.7 * x + 0.3 * np.roll(x, k) for k in range(1, 8)]) for x in xs]
    passes = []

    def pairs():
        passes.append(1)
        yield from zip(xs, ys)

    both = fit_linear_baselines(pairs(), "I")
    assert len(passes) == 1 and set(both) == {"linear_zero_lag", "linear_lagged"}
    for kind, fitted in both.items():
        alone = fit_linear_baselines(zip(xs, ys), "I", (kind,))[kind]
        assert list(fitted.lags) == list(alone.lags)
        np.testing.assert_allclose(fitted.coef, alone.coef, atol=1e-9)
        np.testing.assert_allclose(fitted.intercept, alone.intercept, atol=1e-6)
    assert list(both["linear_zero_lag"].lags) == [0]


def test_lead_metrics() -> None:
    t = np.sin(np.linspace(0, 20, 1000)) * 500
    assert lead_metrics(t, t) == pytest.approx({"r": 1.0, "rmse_uv": 0.0, "std_ratio": 1.0,
                                                "std_true_uv": float(np.std(t))})
    m = lead_metrics(0.5 * t, t)
    assert m["r"] == pytest.approx(1.0) and m["std_ratio"] == pytest.approx(0.5)
    assert m["rmse_uv"] == pytest.approx(np.sqrt(np.mean((0.5 * t) ** 2)))


def _check_report(report: dict, n_records: int) -> None:
    s = report["summary"]
    assert s["n_records"] == n_records == len(report["records"])
    assert set(s["methods"]) == {"model", "linear_zero_lag", "linear_lagged"}
    for method in s["methods"].values():
        assert list(method["leads"]) == ["II", "V1", "V2", "V3", "V4", "V5", "V6"]
        assert list(method["derived"]) == ["III", "aVR", "aVL", "aVF"]
        assert -1 <= method["mean_r"] <= 1
        assert all(set(v) == {"r", "rmse_uv", "std_ratio", "n"} for v in method["leads"].values())
    assert s["confidence"] is None or "pooled_spearman" in s["confidence"]


def test_evaluate_wfdb_folder_writes_model_and_baseline_rows(
        shared_data: Path, ptbxl_tree: Path, tiny_checkpoint: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval.json"
    rc = main(["evaluate", str(ptbxl_tree), "--checkpoint", str(tiny_checkpoint),
               "--baseline-data", str(shared_data / "ecg12/georgia"), "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    _check_report(report, len(PTBXL_SAMPLE))
    # records in PTB-XL's bucket folders belong to the database, not to "00000" or "records100"
    assert {rec["database"] for rec in report["records"]} == {"ptbxl"}
    lagged = report["summary"]["methods"]["linear_lagged"]
    zero = report["summary"]["methods"]["linear_zero_lag"]
    assert lagged["mean_r"] > zero["mean_r"] > 0.2  # real baselines, not noise
    printed = capsys.readouterr().out
    assert "linear_lagged" in printed and "mean r" in printed and "V6" in printed


def test_evaluate_npy_folder(shared_data: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "npy"
    folder.mkdir()
    for stem in ("E07500", "E07501"):
        rec = read_wfdb_record(shared_data / f"ecg12/georgia/{stem}.hea")
        np.save(folder / f"{stem}.npy", rec.leads.astype(np.float32))
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(folder), "--checkpoint", str(tiny_checkpoint), "--baseline-data",
                 str(shared_data / "ecg12/ptb"), "--json", str(out)]) == 0
    _check_report(json.loads(out.read_text()), 2)


def test_evaluate_without_baselines_fails_with_a_reason(
        shared_data: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(shared_data / "ecg12/ptb"), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "baselines" in capsys.readouterr().err


def test_evaluate_warns_when_records_were_training_data(shared_data: Path, tmp_path: Path, capsys) -> None:
    """The shipped lead-I model was trained on PTB-XL but never saw PTB: say which is which."""
    ptbxl, ptb = tmp_path / "ptbxl", tmp_path / "ptb"
    ptbxl.mkdir()
    ptb.mkdir()
    for suffix in (".hea", ".mat"):
        (ptbxl / f"HR06000{suffix}").write_bytes((shared_data / "ecg12/ptbxl" / f"HR06000{suffix}").read_bytes())
    for suffix in (".hea", ".dat", ".xyz"):
        (ptb / f"s0010_re{suffix}").write_bytes((shared_data / "ecg12/ptb" / f"s0010_re{suffix}").read_bytes())
    assert main(["evaluate", str(ptbxl), "--json", str(tmp_path / "a.json")]) == 0
    assert "1 of 1 records were in this checkpoint's training data" in capsys.readouterr().err
    assert json.loads((tmp_path / "a.json").read_text())["summary"]["records_in_training_data"] == ["ptbxl/HR06000"]
    assert main(["evaluate", str(ptb)]) == 0
    assert "training data" not in capsys.readouterr().err


def test_summary_reports_classes_and_how_sigma_finds_the_worst_records() -> None:
    """Per diagnostic class mean r; sigma's rank correlation and its AUROC for the worst decile."""
    rng = np.random.default_rng(0)
    results = []
    for i in range(40):
        err = 50.0 + 10 * i                      # record i is worse than record i - 1
        leads = {lead: {"model": {"r": 0.9 - i / 100, "rmse_uv": err, "std_ratio": 1.0, "std_true_uv": 200.0},
                        "linear_lagged": {"r": 0.5, "rmse_uv": 300.0, "std_ratio": 0.5, "std_true_uv": 200.0}}
                 for lead in ("II", "V1", "V2", "V3", "V4", "V5", "V6")}
        results.append({"name": f"db/{i}", "database": "db", "leads": leads, "amplitude_reliable": True,
                        "labels": ["MI"] if i % 2 else ["NORM", "PVC/PAC"],
                        "sigma_uv": {lead: err * rng.uniform(0.9, 1.1) for lead in leads}})
    summary = summarize(results, "I")
    assert summary["per_class"]["MI"]["n"] == 20 and summary["per_class"]["NORM"]["n"] == 20
    assert summary["per_class"]["MI"]["model"] == pytest.approx(np.mean([0.9 - i / 100 for i in range(1, 40, 2)]))
    assert summary["per_class"]["PVC/PAC"]["linear_lagged"] == pytest.approx(0.5)
    conf = summary["confidence"]
    assert conf["pooled_spearman"] > 0.9 and set(conf["per_lead_spearman"]) == set(results[0]["leads"])
    assert conf["worst_decile"]["n"] == 4 and conf["worst_decile"]["auroc"] > 0.95
    assert conf["worst_decile"]["records"] == ["db/36", "db/37", "db/38", "db/39"]
    # a sigma that says nothing: AUROC near chance
    for res in results:
        res["sigma_uv"] = {lead: float(rng.uniform(50, 500)) for lead in res["leads"]}
    assert abs(summarize(results, "I")["confidence"]["worst_decile"]["auroc"] - 0.5) < 0.35


def test_robustness_and_ectopic_beat_reports_run_on_real_records(shared_data: Path, tiny_checkpoint: Path,
                                                                 tmp_path: Path) -> None:
    """Both reports run the real inference path on real records and write their JSON."""
    from ecg_dicom.training import beats, robustness

    folder = tmp_path / "georgia"
    folder.mkdir()
    for stem in ("E07500", "E07509"):
        for ext in (".hea", ".mat"):
            (folder / f"{stem}{ext}").symlink_to(shared_data / "ecg12/georgia" / f"{stem}{ext}")
    out = tmp_path / "rob.json"
    assert robustness.main([str(folder), "--checkpoint", str(tiny_checkpoint), "--json", str(out)]) == 0
    conditions = json.loads(out.read_text())["conditions"]
    assert set(conditions) == set(robustness.CONDITIONS) and conditions["clean"]["delta_r"] == 0.0
    # a DC offset changes nothing the model sees once min-max scaled and centred
    assert abs(conditions["offset +5 mV"]["delta_r"]) < 1e-3
    out = tmp_path / "beats.json"
    assert beats.main([str(folder), "--checkpoint", str(tiny_checkpoint), "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["n_records"] == 2 and rep["normal"]["n"] >= 10


def test_qrs_detector_finds_the_beats_of_a_real_record(shared_data: Path) -> None:
    from ecg_dicom.core.preprocess import highpass
    from ecg_dicom.training.beats import qrs_peaks

    rec = read_wfdb_record(shared_data / "ecg12/ludb/1.hea")
    peaks = qrs_peaks(highpass(rec.leads, rec.fs), rec.fs)
    ann = __import__("wfdb").rdann(str(shared_data / "ecg12/ludb/1"), "i")
    qrs = [s for s, sym in zip(ann.sample, ann.symbol) if sym == "N"]   # LUDB skips the edge beats
    assert len(qrs) <= len(peaks) <= len(qrs) + 2
    # every annotated QRS peak has a detected peak within 40 ms
    assert all(np.min(np.abs(peaks - q)) < 0.04 * rec.fs for q in qrs)


def test_a_beat_unlike_its_neighbours_is_counted_as_ectopic(shared_data: Path) -> None:
    from ecg_dicom.core.preprocess import highpass
    from ecg_dicom.training.beats import beat_segments, ectopic_beat_count

    rec = read_wfdb_record(shared_data / "ecg12/georgia/E07506.hea")     # sinus rhythm, regular
    leads = highpass(rec.leads, rec.fs)
    ks = list(range(6, 12))
    assert ectopic_beat_count(leads, ks, rec.fs) == 0
    peaks, _ = beat_segments(leads, ks, rec.fs)
    odd = leads.copy()
    p = peaks[len(peaks) // 2]
    odd[ks, p - 100:p + 200] *= -1.0                                       # one beat drawn upside down
    assert ectopic_beat_count(odd, ks, rec.fs) == 1
