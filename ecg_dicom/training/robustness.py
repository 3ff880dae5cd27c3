"""What real carts deliver: the model's r when the input lead carries offsets, drift, hum,
EMG, another sampling rate, clipping, a noise burst or an electrode pop.

    python -m ecg_dicom.training.robustness DATA ... --checkpoint CKPT [--input-lead I] [--json OUT]

Protocol of `ecg-dicom evaluate` (first 10 s at 500 Hz, truth and prediction high-passed at
0.5 Hz, mean r over the learned leads per record, averaged), except that the input lead is
perturbed before it reaches the model; the truth stays clean. Each condition is printed
beside the clean input, with the model's mean sigma relative to the clean run (does the
model say it is less sure?).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import signal as sps

from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.preprocess import highpass, resample_fs
from ecg_dicom.leads import LEADS_12, learned_leads
from ecg_dicom.training.baselines import BASELINE_FS, protocol_window
from ecg_dicom.training.data import select_records
from ecg_dicom.training.evaluate import lead_metrics, report_parser

Perturbation = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, float]]


def _at(fs: float) -> Perturbation:
    """The lead as a cart recording at ``fs`` Hz would hold it (polyphase, anti-aliased)."""
    def go(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        up, down = int(fs), int(BASELINE_FS)
        g = np.gcd(up, down)
        return sps.resample_poly(x, up // g, down // g), fs
    return go


def _added(make: Callable[[np.ndarray, np.random.Generator], np.ndarray]) -> Perturbation:
    return lambda x, rng: (x + make(np.arange(x.size) / BASELINE_FS, rng), BASELINE_FS)


def _clipped(level: float) -> Perturbation:
    def go(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        mid = float(np.median(x))
        return np.clip(x, mid - level * (mid - x.min()), mid + level * (x.max() - mid)), BASELINE_FS
    return go


def _burst(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = np.zeros(t.size)
    start = int(rng.integers(0, t.size - int(2 * BASELINE_FS)))
    noise[start:start + int(2 * BASELINE_FS)] = rng.normal(0, 200.0, int(2 * BASELINE_FS))
    return noise


def _pop(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    start = int(rng.integers(t.size // 4, 3 * t.size // 4))
    out = np.zeros(t.size)
    out[start:] = 2000.0 * np.exp(-(t[start:] - t[start]) / 0.3)
    return out


CONDITIONS: dict[str, Perturbation] = {
    "clean": lambda x, rng: (x, BASELINE_FS),
    "offset +5 mV": _added(lambda t, rng: np.full(t.size, 5000.0)),
    "drift 2 mV (0.1-0.4 Hz)": _added(lambda t, rng: 1500 * np.sin(2 * np.pi * 0.15 * t + rng.uniform(0, 6.3))
                                      + 500 * np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, 6.3))),
    "mains 50 Hz 100 µV": _added(lambda t, rng: 100 * np.sin(2 * np.pi * 50 * t + rng.uniform(0, 6.3))),
    "mains 60 Hz 200 µV": _added(lambda t, rng: 200 * np.sin(2 * np.pi * 60 * t + rng.uniform(0, 6.3))),
    "EMG 50 µV rms": _added(lambda t, rng: rng.normal(0, 50.0, t.size)),
    "100 Hz cart": _at(100.0),
    "250 Hz cart": _at(250.0),
    "1000 Hz cart": _at(1000.0),
    "clipped at 60 %": _clipped(0.6),
    "2 s noise burst 200 µV": _added(_burst),
    "electrode pop 2 mV": _added(_pop),
}


def robustness(reconstructor: Reconstructor, records: Sequence, seed: int = 0) -> dict[str, dict[str, float]]:
    """{condition: {"mean_r", "delta_r", "sigma_ratio"}} over ``records`` (data.Record)."""
    lead = reconstructor.input_lead
    idx_in = LEADS_12.index(lead)
    ks = [LEADS_12.index(k) for k in learned_leads(lead)]
    windows = [protocol_window(rec.leads, rec.fs) for rec in records]
    truths = [highpass(w, BASELINE_FS) for w in windows]
    out: dict[str, dict[str, float]] = {}
    for name, perturb in CONDITIONS.items():
        rng = np.random.default_rng(seed)
        inputs = [perturb(w[idx_in], rng) for w in windows]
        recons = reconstructor.reconstruct_batch([x for x, _ in inputs], [fs for _, fs in inputs])
        rs, sigmas = [], []
        for truth, recon, (_, fs) in zip(truths, recons, inputs):
            pred = highpass(resample_fs(recon.leads.astype(np.float64), fs, BASELINE_FS, length=truth.shape[1]),
                            BASELINE_FS)
            rs.append(np.mean([lead_metrics(pred[k], truth[k])["r"] for k in ks if np.std(truth[k]) >= 10.0]))
            sigmas.append(float(np.mean(recon.sigma)) if recon.sigma is not None else np.nan)
        out[name] = {"mean_r": float(np.mean(rs)), "sigma_uv": float(np.nanmean(sigmas))}
    clean = out["clean"]
    for v in out.values():
        v["delta_r"] = v["mean_r"] - clean["mean_r"]
        v["sigma_ratio"] = v["sigma_uv"] / clean["sigma_uv"] if clean["sigma_uv"] else float("nan")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = report_parser(__doc__).parse_args(argv)
    records = select_records(args.data, BASELINE_FS, args.patient_fold)
    result = robustness(Reconstructor.from_checkpoint(args.checkpoint, args.input_lead, precision="fp32"), records)
    print(f"{len(records)} records, input lead {args.input_lead}: mean r over the learned leads")
    print(f"{'condition':<26} {'mean r':>7} {'vs clean':>9} {'sigma vs clean':>15}")
    for name, v in result.items():
        print(f"{name:<26} {v['mean_r']:7.3f} {v['delta_r']:+9.3f} {v['sigma_ratio']:14.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"n_records": len(records), "conditions": result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
