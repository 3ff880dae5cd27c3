"""Quality of the fast path against exact fp32 (not a test): `python bench/fast_quality.py [--checkpoint CKPT]`.

On the cross-validated records (LUDB, Georgia, PTB: the databases the models are
evaluated on, not trained on), through the real inference path, the evaluate protocol
(first 10 s at 500 Hz, truth and prediction high-passed at 0.5 Hz):
  - mean r over the learned leads of the fp32 checkpoint and of the fast path, and their
    difference (target: within 0.005);
  - Spearman rho of the per-lead sigma against the actual RMSE for both (sigma as
    informative), and rho between the two paths' sigmas;
  - how far the fast path's output is from the fp32 one (r between them, RMS in µV).
``--export PRECISION`` writes a temporary export of the checkpoint first (default: the
one beside it, as shipped).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ecg_dicom.core.inference import Reconstructor  # noqa: E402
from ecg_dicom.core.runners import OnnxRunner  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "ecg12"
DATABASES = ("ludb", "georgia", "ptb")


def compare(fp32: Reconstructor, fast: Reconstructor, records) -> dict:
    """Both paths on ``records``: mean r and sigma-RMSE rho of each, and their agreement."""
    from scipy import stats

    from ecg_dicom.training.evaluate import evaluate_records, summarize

    out = {}
    results = {}
    for name, rec in (("fp32", fp32), ("fast", fast)):
        results[name] = evaluate_records(rec, records, {})
        summary = summarize(results[name], rec.input_lead)
        out[name] = {"mean_r": summary["methods"]["model"]["mean_r"],
                     "sigma_rho": (summary["confidence"] or {}).get("pooled_spearman", float("nan")),
                     "precision": rec.precision}
    sig_a = [s for res in results["fp32"] for s in (res["sigma_uv"] or {}).values()]
    sig_b = [s for res in results["fast"] for s in (res["sigma_uv"] or {}).values()]
    out["sigma_rho_fast_vs_fp32"] = float(stats.spearmanr(sig_a, sig_b)[0]) if sig_a else float("nan")
    out["delta_mean_r"] = out["fast"]["mean_r"] - out["fp32"]["mean_r"]
    out["n_records"] = len(records)
    out.update(output_agreement(fp32, fast, records))
    return out


def output_agreement(fp32: Reconstructor, fast: Reconstructor, records) -> dict:
    """Pearson r and RMS difference (µV) between the two paths' learned leads, pooled."""
    from ecg_dicom.leads import LEADS_12, learned_leads
    from ecg_dicom.training.baselines import BASELINE_FS, protocol_window

    idx = LEADS_12.index(fp32.input_lead)
    rows = [LEADS_12.index(lead) for lead in learned_leads(fp32.input_lead)]
    leads = [protocol_window(rec.leads, rec.fs, 10.0)[idx] for rec in records]
    a = [r.leads[rows] for r in fp32.reconstruct_batch(leads, [BASELINE_FS] * len(leads))]
    b = [r.leads[rows] for r in fast.reconstruct_batch(leads, [BASELINE_FS] * len(leads))]
    rs = [np.corrcoef(x, y)[0, 1] for xa, xb in zip(a, b) for x, y in zip(xa, xb)]
    diff = np.concatenate([(xa - xb).ravel() for xa, xb in zip(a, b)])
    return {"output_r_min": float(np.min(rs)), "output_r_mean": float(np.mean(rs)),
            "output_rms_diff_uv": float(np.sqrt(np.mean(diff ** 2))), "output_max_diff_uv": float(np.abs(diff).max())}


def load_records(limit: int | None = None):
    from ecg_dicom.training.data import select_records

    records = select_records([DATA / db for db in DATABASES], 500.0)
    return records[:limit] if limit else records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="checkpoint (default: the shipped lead-I one)")
    parser.add_argument("--export", choices=("int8", "fp32"), default=None,
                        help="export the checkpoint afresh at this precision instead of using the .onnx beside it")
    parser.add_argument("--limit", type=int, default=None, help="only the first N records (a quick look)")
    args = parser.parse_args()
    fp32 = Reconstructor.from_checkpoint(args.checkpoint, "I", precision="fp32")
    with tempfile.TemporaryDirectory() as tmp:
        if args.export:
            from ecg_dicom.core.export import export_onnx

            path, _ = export_onnx(args.checkpoint, "I", Path(tmp) / "model.onnx", args.export)
            runner = OnnxRunner(path)
            fast = Reconstructor(runner.header.checkpoint(), runner=runner)
        else:
            fast = Reconstructor.from_checkpoint(args.checkpoint, "I", precision="fast")
        res = compare(fp32, fast, load_records(args.limit))
    print(f"checkpoint {args.checkpoint or 'shipped lead I'} ({fp32.model_version}), {res['n_records']} records"
          f" of {', '.join(DATABASES)}")
    for name in ("fp32", "fast"):
        print(f"  {name:5s} ({res[name]['precision']:17s}): mean r {res[name]['mean_r']:.4f},"
              f" sigma-RMSE Spearman rho {res[name]['sigma_rho']:.3f}")
    print(f"  DELTA mean r (fast - fp32) = {res['delta_mean_r']:+.4f} (target within 0.005);"
          f" rho(sigma fast, sigma fp32) = {res['sigma_rho_fast_vs_fp32']:.4f}")
    print(f"  outputs fast vs fp32: r min {res['output_r_min']:.5f} mean {res['output_r_mean']:.6f},"
          f" RMS diff {res['output_rms_diff_uv']:.2f} µV, max {res['output_max_diff_uv']:.1f} µV")


if __name__ == "__main__":
    main()
