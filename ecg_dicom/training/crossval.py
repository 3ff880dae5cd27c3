"""Pool leave-one-database-out evaluations into the model card tables.

    python -m ecg_dicom.training.crossval FOLD.json ... [--markdown OUT.md] [--json OUT.json]

Each FOLD.json is the ``--json`` output of ``ecg-dicom evaluate`` for one held-out
database (or patient fold), run with the checkpoint trained without it (and its baselines
fitted on the same training data). Prints one table per database, the pooled table over
all records and mean r per diagnostic class.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from ecg_dicom.training.evaluate import format_table, summarize


def pool(folds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"per_database": {db: summary}, "pooled": summary} from evaluate JSON outputs."""
    input_lead = folds[0]["summary"]["input_lead"]
    records = [rec for fold in folds for rec in fold["records"]]
    per_db = {}
    for db in sorted({rec["database"] for rec in records}):
        per_db[db] = summarize([rec for rec in records if rec["database"] == db], input_lead)
    flops = [fold["summary"].get("flops_per_10s_ecg") for fold in folds]
    return {"input_lead": input_lead, "per_database": per_db, "pooled": summarize(records, input_lead),
            "models": {fold["summary"]["checkpoint"]: fold["summary"].get("model_version") for fold in folds},
            "flops_per_10s_ecg": max((f for f in flops if f), default=None)}


def markdown_table(summary: dict[str, Any], title: str) -> str:
    """One markdown table: per learned lead r / RMSE / std ratio of every method, mean r."""
    methods = list(summary["methods"])
    n_amp = summary.get("n_amplitude_records", summary["n_records"])
    note = (f"RMSE and std ratio over the {n_amp} records with physical amplitudes" if n_amp
            else "RMSE and std ratio against LUDB's per-lead normalised (1 mV p2p) targets: not physical")
    lines = [f"**{title}** ({summary['n_records']} records; r over all; {note})", "",
             "| lead | " + " | ".join(f"{m} r | {m} RMSE µV | {m} std ratio" for m in methods) + " |",
             "|---|" + "---:|" * (3 * len(methods))]
    for key in ("leads", "derived"):
        for lead in summary["learned_leads"] if key == "leads" else summary["derived_leads"]:
            cells = []
            for m in methods:
                v = summary["methods"][m][key].get(lead)
                cells += [f"{v['r']:.3f}", f"{v['rmse_uv']:.0f}", f"{v['std_ratio']:.2f}"] if v else ["–"] * 3
            name = lead if key == "leads" else f"({lead}, derived)"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if key == "leads":
            lines.append("| **mean r** | " + " | ".join(
                f"**{summary['methods'][m]['mean_r']:.3f}** | | " for m in methods) + " |")
    conf = summary.get("confidence")
    if conf:
        lines += ["", f"Confidence: Spearman ρ(predicted σ, actual RMSE) = {conf['pooled_spearman']:.2f} "
                  f"pooled over {conf['n_pairs']} record-leads; per lead "
                  + ", ".join(f"{k} {v:.2f}" for k, v in conf["per_lead_spearman"].items()) + "."]
        if "relative_spearman_vs_1_minus_r" in conf:
            lines[-1] += (f" Scale-free: ρ(σ / predicted std, 1 − r) = {conf['relative_spearman_vs_1_minus_r']:.2f}.")
        if "worst_decile" in conf:
            w = conf["worst_decile"]
            lines[-1] += (f" Worst decile ({w['n']} records by RMSE): σ picks them out with AUROC {w['auroc']:.2f};"
                          f" {w['recall_at_decile']:.0%} of them are in σ's own top decile.")
    return "\n".join(lines)


def database_table(pooled: dict[str, Any], label: str) -> str:
    """Markdown rows, one per database and one pooled: n, r per learned lead with the model's
    median std ratio [in brackets, physical-amplitude records], mean r of the model and of the
    lagged baseline, and the record uncertainty's worst-decile AUROC (where there are ≥ 10)."""
    rows = []
    for db, summary in [*pooled["per_database"].items(), ("pooled", pooled["pooled"])]:
        model = summary["methods"]["model"]
        cells = []
        for lead in summary["learned_leads"]:
            v = model["leads"].get(lead)
            amp = f" [{v['std_ratio']:.2f}]" if v and summary.get("n_amplitude_records") else ""
            cells.append(f"{v['r']:.2f}{amp}" if v else "–")
        lagged = summary["methods"].get("linear_lagged", {}).get("mean_r")
        unc = summary.get("uncertainty")
        lagged_text = "–" if lagged is None else f"{lagged:.3f}"
        auroc = "–" if not unc else f"{unc['auroc_worst_decile']:.2f}"
        rows.append(f"| {label} | {db} | {summary['n_records']} | " + " | ".join(cells)
                    + f" | **{model['mean_r']:.3f}** | {lagged_text} | {auroc} |")
    return "\n".join(rows)


def class_table(summary: dict[str, Any], title: str) -> str:
    """Markdown: mean r over the learned leads per diagnostic class, model vs both baselines."""
    per_class = summary.get("per_class") or {}
    lines = [f"**{title}**", "", "| class | n | model | zero-lag | lagged (±40 ms) |", "|---|---:|---:|---:|---:|"]
    for cls, v in per_class.items():
        lines.append(f"| {cls} | {v['n']} | {v['model']:.3f} | {v.get('linear_zero_lag', float('nan')):.3f} |"
                     f" {v.get('linear_lagged', float('nan')):.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folds", nargs="+", help="evaluate --json outputs, one per held-out database")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--rows", default=None, metavar="LABEL",
                        help="print only the one-row-per-database markdown (model card), labelled LABEL")
    args = parser.parse_args(argv)
    pooled = pool([json.loads(Path(p).read_text()) for p in args.folds])
    if args.rows:
        print(database_table(pooled, args.rows))
        return 0
    blocks = []
    for db, summary in pooled["per_database"].items():
        print(format_table(summary, f"== held out: {db} =="), "\n")
        blocks.append(markdown_table(summary, f"Held out: {db}"))
    print(format_table(pooled["pooled"], "== pooled over all held-out records =="))
    blocks.insert(0, markdown_table(pooled["pooled"], "Pooled (every record predicted by a model that never trained on it)"))
    blocks.append(class_table(pooled["pooled"], "Mean r by diagnostic class, pooled"))
    if args.markdown:
        Path(args.markdown).write_text("\n\n".join(blocks) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(pooled, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
