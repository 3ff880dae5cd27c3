"""`ecg-dicom evaluate`: per-lead Pearson r, RMSE (µV) and std ratio of the model against
two patient-generic linear baselines, on real 12-lead records.

Protocol: the first 10 s of each record at 500 Hz; the model runs through the real
inference path (:class:`Reconstructor`) on the raw input lead; truth and every
prediction are high-passed at 0.5 Hz before the metrics; a flat (dead) true lead is
skipped for that record. Learned leads make the mean; the four limb leads computed by
formula are reported apart. RMSE and std ratio are taken over the records with physical
amplitudes when the set has any (LUDB stores every lead normalised to 1 mV p2p, so its
amplitudes say nothing); r is taken over all records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from ecg_dicom.core.accuracy import FLAT_STD_UV, lead_metrics
from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.preprocess import highpass
from ecg_dicom.errors import EcgDicomError
from ecg_dicom.leads import (
    DERIVED_LIMB_LEADS,
    LEADS_12,
    TWO_LEAD_INPUT,
    assemble_12_leads,
    input_leads_of,
    learned_leads,
)
from ecg_dicom.training.baselines import (
    BASELINE_FS,
    BASELINE_KINDS,
    LinearBaseline,
    fit_baselines_on_records,
    protocol_window,
)
from ecg_dicom.training.data import DIAGNOSTIC_CLASSES, Record, load_wfdb_records, select_records

METHODS = ("model", *BASELINE_KINDS)


def _full_12(input_lead: str, lead_in: np.ndarray, learned: np.ndarray) -> np.ndarray:
    """Input lead (N,) and learned leads (7, N) -> (12, N) with the limb leads by formula
    (two-lead model: inputs (2, N) I and II, learned V1–V6 (6, N))."""
    if input_lead == TWO_LEAD_INPUT:
        return assemble_12_leads(lead_in[0], lead_in[1], learned).astype(np.float64)
    i, ii = (lead_in, learned[0]) if input_lead == "I" else (learned[0], lead_in)
    return assemble_12_leads(i, ii, learned[1:]).astype(np.float64)


def evaluate_records(reconstructor: Reconstructor, records: Sequence[Record],
                     baselines: dict[str, LinearBaseline], seconds: float = 10.0) -> list[dict[str, Any]]:
    """Per-record results: {name, database, sigma_uv {lead: µV}, leads {lead: {method: metrics}},
    uncertainty {record, leads {lead: expected 1 − r}, relative {lead: σ / std(pred)}}} (the
    uncertainty as the reconstructor's calibration gives it; None without a variance head)."""
    input_lead = reconstructor.input_lead
    idx_in = [LEADS_12.index(lead) for lead in input_leads_of(input_lead)]
    idx_in = idx_in[0] if len(idx_in) == 1 else idx_in
    learned = learned_leads(input_lead)
    windows = [protocol_window(rec.leads, rec.fs, seconds) for rec in records]
    recons = reconstructor.reconstruct_batch([w[idx_in] for w in windows], [BASELINE_FS] * len(windows))
    results = []
    for rec, window, recon in zip(records, windows, recons):
        true = highpass(window, BASELINE_FS)
        preds = {"model": highpass(recon.leads.astype(np.float64), BASELINE_FS)}
        for kind, baseline in baselines.items():
            preds[kind] = _full_12(input_lead, true[idx_in], baseline.predict(true[idx_in], BASELINE_FS))
        per_lead = {}
        for lead in (*learned, *DERIVED_LIMB_LEADS):
            k = LEADS_12.index(lead)
            if np.std(true[k]) < FLAT_STD_UV:
                continue
            per_lead[lead] = {m: lead_metrics(p[k], true[k]) for m, p in preds.items()}
        results.append({
            "name": rec.name, "database": rec.database, "leads": per_lead, "fs": rec.fs,
            "patient": rec.patient, "labels": list(rec.labels),
            "amplitude_reliable": rec.amplitude_reliable,
            "sigma_uv": None if recon.sigma is None else dict(zip(learned, map(float, recon.sigma))),
            "uncertainty": _uncertainty(reconstructor, recon, learned),
        })
    return results


def _uncertainty(reconstructor: Reconstructor, recon: Any, learned: Sequence[str]) -> dict[str, Any] | None:
    """The record's uncertainty as outputs carry it, and σ / std(pred) per lead (to refit the scale)."""
    unc = reconstructor.uncertainty(recon)
    if unc is None:
        return None
    std = {lead: float(np.std(recon.leads[LEADS_12.index(lead)])) for lead in learned}
    return {"record": unc.record, "leads": dict(unc.leads), "threshold": unc.threshold,
            "relative": {lead: float(s) / std[lead] if std[lead] > 0 else None
                         for lead, s in zip(learned, recon.sigma)}}


def uncertainty_ranking(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """How well the record uncertainty finds the worst-decile records by mean r over the
    learned leads (AUROC), Spearman ρ(record uncertainty, 1 − mean r), and per lead
    ρ(lead uncertainty, 1 − r) across records; the share of records above the threshold."""
    rows = [res for res in results if res.get("uncertainty")]
    if len(rows) < 10:
        return None
    u = np.array([res["uncertainty"]["record"] for res in rows])
    mean_r = np.array([_record_mean_r(res, "model") for res in rows])
    ok = np.isfinite(mean_r)
    u, mean_r, rows = u[ok], mean_r[ok], [res for res, keep in zip(rows, ok) if keep]
    k = max(1, int(round(len(rows) / 10)))
    worst = np.zeros(len(rows), dtype=bool)
    worst[np.argsort(mean_r)[:k]] = True
    per_lead = {}
    for lead in rows[0]["uncertainty"]["leads"]:
        pairs = [(res["uncertainty"]["leads"][lead], 1 - res["leads"][lead]["model"]["r"]) for res in rows
                 if lead in res["leads"]]
        if len(pairs) >= 3:
            per_lead[lead] = float(stats.spearmanr(*zip(*pairs))[0])
    threshold = rows[0]["uncertainty"]["threshold"]
    return {"n": len(rows), "worst_decile_n": k, "auroc_worst_decile": _auroc(u, worst),
            "spearman_record": float(stats.spearmanr(u, 1 - mean_r)[0]), "per_lead_spearman": per_lead,
            "threshold": threshold, "share_above_threshold": float(np.mean(u > threshold)),
            "worst_decile_recall_above_threshold": float(np.mean(u[worst] > threshold)),
            "worst_records": [rows[i]["name"] for i in np.flatnonzero(worst)]}


def summarize(results: Sequence[dict[str, Any]], input_lead: str) -> dict[str, Any]:
    """Per method and lead: mean r, median RMSE, median std ratio, n records; mean r over
    the learned leads; derived limb leads apart; sigma-vs-RMSE rank correlation."""
    learned = learned_leads(input_lead)
    methods = [m for m in METHODS if any(m in v for res in results for v in res["leads"].values())]
    physical = [res for res in results if res.get("amplitude_reliable", True)]
    amp_set = physical or list(results)
    summary: dict[str, Any] = {"input_lead": input_lead, "n_records": len(results),
                               "n_amplitude_records": len(physical),
                               "learned_leads": list(learned), "derived_leads": list(DERIVED_LIMB_LEADS),
                               "methods": {}}
    for m in methods:
        table = {}
        for lead in (*learned, *DERIVED_LIMB_LEADS):
            vals = [res["leads"][lead][m] for res in results if lead in res["leads"]]
            amp_vals = [res["leads"][lead][m] for res in amp_set if lead in res["leads"]]
            if vals:
                table[lead] = {"r": float(np.mean([v["r"] for v in vals])),
                               "rmse_uv": float(np.median([v["rmse_uv"] for v in amp_vals])),
                               "std_ratio": float(np.median([v["std_ratio"] for v in amp_vals])),
                               "n": len(vals)}
        summary["methods"][m] = {
            "leads": {k: v for k, v in table.items() if k in learned},
            "derived": {k: v for k, v in table.items() if k not in learned},
            "mean_r": float(np.mean([table[k]["r"] for k in learned if k in table])),
        }
    summary["confidence"] = confidence_rank_correlation(amp_set)
    summary["uncertainty"] = uncertainty_ranking(results)
    summary["per_class"] = per_class_summary(results, methods)
    return summary


def per_class_summary(results: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Per diagnostic class (records may be in several): n records and, per method, the
    mean r over the learned leads, averaged over the class's records."""
    table = {}
    for cls in DIAGNOSTIC_CLASSES:
        members = [res for res in results if cls in res.get("labels", ())]
        if not members:
            continue
        table[cls] = {"n": len(members), **{m: float(np.nanmean([_record_mean_r(res, m) for res in members]))
                                            for m in methods}}
    return table


def _record_mean_r(res: dict[str, Any], method: str) -> float:
    """Mean r over the learned leads of one record (derived limb leads left out)."""
    rs = [v[method]["r"] for lead, v in res.get("leads", {}).items() if lead not in DERIVED_LIMB_LEADS and method in v]
    return float(np.mean(rs)) if rs else float("nan")


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (rank formula)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confidence_rank_correlation(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """How well the model's per-lead sigma tracks its actual error.

    Spearman rho between sigma and RMSE pooled over (record, lead) pairs and per lead
    across records; the same for sigma relative to the predicted lead's std against 1 - r
    (scale-free: does sigma rise where the shape is wrong?); and for the worst decile of
    records by actual error (mean RMSE over the learned leads): the AUROC of the record's
    mean sigma at picking them out, and the share of them that sigma's own top decile holds.
    """
    pairs = [(res["sigma_uv"][lead], res["leads"][lead]["model"], lead, i)
             for i, res in enumerate(results) if res["sigma_uv"]
             for lead in res["sigma_uv"] if lead in res["leads"]]
    if len(pairs) < 3:
        return None
    sig = np.array([p[0] for p in pairs])
    err = np.array([p[1]["rmse_uv"] for p in pairs])
    one_minus_r = np.array([1 - p[1]["r"] for p in pairs])
    pred_std = np.array([p[1]["std_ratio"] * p[1].get("std_true_uv", np.nan) for p in pairs])
    leads = np.array([p[2] for p in pairs])
    owner = np.array([p[3] for p in pairs])
    per_lead = {}
    for lead in dict.fromkeys(leads.tolist()):
        sel = leads == lead
        if sel.sum() >= 3:
            per_lead[lead] = float(stats.spearmanr(sig[sel], err[sel])[0])
    out: dict[str, Any] = {"pooled_spearman": float(stats.spearmanr(sig, err)[0]), "per_lead_spearman": per_lead,
                           "n_pairs": len(pairs)}
    rel = sig / np.where(pred_std > 0, pred_std, np.nan)
    ok = np.isfinite(rel)
    if ok.sum() >= 3:
        out["relative_spearman_vs_1_minus_r"] = float(stats.spearmanr(rel[ok], one_minus_r[ok])[0])
    records = sorted(set(owner.tolist()))
    if len(records) >= 10:
        rec_sig = np.array([sig[owner == i].mean() for i in records])
        rec_err = np.array([err[owner == i].mean() for i in records])
        k = max(1, int(round(len(records) / 10)))
        worst = np.zeros(len(records), dtype=bool)
        worst[np.argsort(-rec_err)[:k]] = True
        flagged = np.zeros(len(records), dtype=bool)
        flagged[np.argsort(-rec_sig)[:k]] = True
        out["worst_decile"] = {"n": k, "auroc": _auroc(rec_sig, worst),
                               "recall_at_decile": float((worst & flagged).sum() / k),
                               "records": [results[records[i]]["name"] for i in np.flatnonzero(worst)]}
    return out


def format_table(summary: dict[str, Any], title: str = "") -> str:
    """A readable per-lead table: r / RMSE µV / std ratio for every method side by side."""
    methods = list(summary["methods"])
    head = f"{'lead':<6}" + "".join(f" | {m:^28}" for m in methods)
    sub = f"{'':<6}" + "".join(f" | {'r':>7} {'RMSE µV':>9} {'std':>6}   " for _ in methods)
    lines = [title] if title else []
    n_amp = summary.get("n_amplitude_records", summary["n_records"])
    amp_note = (f"RMSE / std ratio over the {n_amp} records with physical amplitudes" if n_amp
                else "RMSE / std ratio against targets normalised to 1 mV p2p per lead (not physical)")
    lines += [f"{summary['n_records']} records, input lead {summary['input_lead']}; {amp_note}",
              head, sub, "-" * len(sub)]

    def row(lead: str, key: str) -> str:
        cells = []
        for m in methods:
            v = summary["methods"][m][key].get(lead)
            cells.append(f" | {v['r']:7.3f} {v['rmse_uv']:9.1f} {v['std_ratio']:6.2f}   " if v else f" | {'-':^28}")
        return f"{lead:<6}" + "".join(cells)

    lines += [row(lead, "leads") for lead in summary["learned_leads"]]
    lines.append(f"{'mean r':<6}" + "".join(f" | {summary['methods'][m]['mean_r']:7.3f}{'':20}" for m in methods))
    lines.append("derived limb leads (not in the mean):")
    lines += [row(lead, "derived") for lead in summary["derived_leads"]]
    conf = summary.get("confidence")
    if conf:
        lines.append(f"confidence: Spearman(sigma, RMSE) pooled {conf['pooled_spearman']:.3f} over {conf['n_pairs']} record-leads; per lead "
                     + ", ".join(f"{k} {v:.2f}" for k, v in conf["per_lead_spearman"].items()))
        if "worst_decile" in conf:
            w = conf["worst_decile"]
            lines.append(f"worst decile ({w['n']} records by RMSE): sigma AUROC {w['auroc']:.2f},"
                         f" {w['recall_at_decile']:.0%} of them in sigma's top decile")
    unc = summary.get("uncertainty")
    if unc:
        lines.append(f"record uncertainty: worst decile ({unc['worst_decile_n']} records by mean r) AUROC"
                     f" {unc['auroc_worst_decile']:.2f}, rho(record, 1 - mean r) {unc['spearman_record']:.2f};"
                     f" per lead rho(u, 1 - r) " + ", ".join(f"{k} {v:.2f}" for k, v in unc["per_lead_spearman"].items())
                     + f"; {unc['share_above_threshold']:.0%} above the threshold {unc['threshold']:.2f}")
    if summary.get("per_class"):
        lines.append("mean r by diagnostic class (model / zero-lag / lagged):")
        for cls, v in summary["per_class"].items():
            lines.append(f"  {cls:<9} n={v['n']:<4} " + " / ".join(f"{v[m]:.3f}" for m in methods if m in v))
    if summary.get("flops_per_10s_ecg"):
        lines.append(f"model: {summary['flops_per_10s_ecg'] / 1e6:.0f} MFLOP per 10 s ECG")
    return "\n".join(lines)


def load_baselines(reconstructor: Reconstructor, baseline_data: Sequence[str] | None) -> dict[str, LinearBaseline]:
    """Baselines refitted on ``baseline_data`` if given, else those stored at train time."""
    if baseline_data:
        return fit_baselines_on_records(load_wfdb_records(baseline_data), reconstructor.input_lead)
    stored = reconstructor.checkpoint.training.get("baselines")
    if not stored:
        raise EcgDicomError("the checkpoint stores no linear baselines: give --baseline-data")
    return {kind: LinearBaseline.from_dict(d) for kind, d in stored.items()}


def trained_on(reconstructor: Reconstructor, records: Sequence[Record]) -> list[str]:
    """Names of ``records`` that the checkpoint was trained on (its recorded train_records)."""
    data = reconstructor.checkpoint.training.get("data")
    known = set(data.get("train_records") or ()) if isinstance(data, dict) else set()
    return [r.name for r in records if r.name in known]


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ecg-dicom evaluate``."""
    try:
        rec = Reconstructor.from_checkpoint(args.checkpoint, args.input_lead, args.device, args.batch_size,
                                            precision=getattr(args, "precision", "fp32"),
                                            threads=getattr(args, "threads", None))
        baselines = load_baselines(rec, args.baseline_data)
        try:
            records = select_records(args.data, args.fs, args.patient_fold)
        except ValueError as exc:
            raise EcgDicomError(str(exc)) from exc
        if not records:
            raise EcgDicomError(f"no 12-lead records in {', '.join(args.data)}"
                                + (f" in patient folds {', '.join(args.patient_fold)}" if args.patient_fold else ""))
        results = evaluate_records(rec, records, baselines)
    except EcgDicomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seen = trained_on(rec, records)
    if seen:
        print(f"warning: {len(seen)} of {len(records)} records were in this checkpoint's training data"
              f" ({', '.join(seen[:5])}{', ...' if len(seen) > 5 else ''}): these figures are not held-out",
              file=sys.stderr)
    summary = summarize(results, rec.input_lead)
    summary["records_in_training_data"] = seen
    summary["model_version"] = rec.model_version
    summary["flops_per_10s_ecg"] = rec.flops_per_record(10.0)
    summary["checkpoint"] = str(args.checkpoint) if args.checkpoint else "shipped"
    print(format_table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "records": results}, indent=1))
    return 0


def report_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every per-record report takes (robustness, ectopic beats): data
    folders, checkpoint, input lead, patient folds and a JSON output."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", help="folders of WFDB 12-lead records")
    parser.add_argument("--checkpoint", default=None, help="checkpoint (default: the shipped one)")
    parser.add_argument("--input-lead", default="I", choices=("I", "II"))
    parser.add_argument("--patient-fold", nargs="*", default=[], metavar="DB:K/N",
                        help="only the records of these patient folds (as train --patient-fold)")
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    return parser
