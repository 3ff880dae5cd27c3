"""Ectopic beats: does the model draw a beat whose morphology differs from its neighbours
as it is, or as the record's normal beat?

    python -m ecg_dicom.training.beats DATA ... --checkpoint CKPT [--input-lead I] [--json OUT]

Per record (first 10 s at 500 Hz, 0.5 Hz high-pass, as `ecg-dicom evaluate`): QRS
complexes are found on the recorded 12 leads; each beat is cut from 250 ms before to
450 ms after its R peak in the learned leads; the record's normal template is the
median of its beats. A beat is *ectopic* when its recorded learned leads correlate
below 0.8 with that template (a premature ventricular beat, an aberrant one). For each
ectopic beat the reconstruction is compared with the recorded beat and with the normal
template: a model that draws every beat as the normal one is closer to the template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import signal as sps

from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.preprocess import highpass
from ecg_dicom.leads import LEADS_12, learned_leads
from ecg_dicom.training.baselines import BASELINE_FS, protocol_window
from ecg_dicom.training.data import select_records
from ecg_dicom.training.evaluate import report_parser

BEFORE_S, AFTER_S = 0.25, 0.45
ECTOPIC_R = 0.8  # a beat whose recorded learned leads correlate below this with the template


def qrs_peaks(leads_uv: np.ndarray, fs: float) -> np.ndarray:
    """R-peak sample indices of (12, N) µV: peaks of the summed absolute slope of all leads
    (5–25 Hz band), at least 250 ms apart and above 30 % of the record's 98th percentile."""
    sos = sps.butter(2, (5.0, 25.0), btype="bandpass", fs=fs, output="sos")
    energy = np.abs(np.diff(sps.sosfiltfilt(sos, leads_uv, axis=-1), axis=-1)).sum(axis=0)
    energy = np.convolve(energy, np.ones(int(0.04 * fs)) / int(0.04 * fs), mode="same")
    peaks, _ = sps.find_peaks(energy, height=0.3 * np.percentile(energy, 98), distance=int(0.25 * fs))
    return peaks


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def beat_segments(true: np.ndarray, ks: Sequence[int], fs: float) -> tuple[list[int], np.ndarray | None]:
    """R peaks (whole beats only) of (leads, N) µV and the (beats, len(ks), samples) segments
    of leads ``ks`` around them; (peaks, None) when fewer than 3 beats are found."""
    before, after = int(BEFORE_S * fs), int(AFTER_S * fs)
    peaks = [p for p in qrs_peaks(true, fs) if p - before >= 0 and p + after <= true.shape[1]]
    if len(peaks) < 3:
        return peaks, None
    return peaks, np.stack([true[ks, p - before:p + after] for p in peaks])


def ectopic_beat_count(true: np.ndarray, ks: Sequence[int], fs: float) -> int:
    """How many beats of (leads, N) µV differ from the record's median beat in leads ``ks``
    (r below :data:`ECTOPIC_R`)."""
    _, seg = beat_segments(true, ks, fs)
    if seg is None:
        return 0
    template = np.median(seg, axis=0).ravel()
    return sum(_corr(beat.ravel(), template) < ECTOPIC_R for beat in seg)


def record_beats(true: np.ndarray, pred: np.ndarray, ks: Sequence[int], fs: float) -> list[dict[str, Any]]:
    """Per beat of one record: whether it is ectopic, r(prediction, recorded beat) and
    r(prediction, normal template), over the learned leads ``ks`` concatenated."""
    peaks, seg_true = beat_segments(true, ks, fs)
    if seg_true is None:
        return []
    before, after = int(BEFORE_S * fs), int(AFTER_S * fs)
    seg_pred = np.stack([pred[ks, p - before:p + after] for p in peaks])
    template = np.median(seg_true, axis=0)
    out = []
    for bt, bp in zip(seg_true, seg_pred):
        r_template = _corr(bt.ravel(), template.ravel())
        out.append({"ectopic": r_template < ECTOPIC_R, "r_true_vs_template": r_template,
                    "r_pred_vs_true": _corr(bp.ravel(), bt.ravel()),
                    "r_pred_vs_template": _corr(bp.ravel(), template.ravel())})
    return out


def ectopic_report(reconstructor: Reconstructor, records: Sequence) -> dict[str, Any]:
    """Beat statistics over ``records`` (data.Record): ectopic and normal beats, and how
    often the reconstruction of an ectopic beat is closer to it than to the template."""
    lead = reconstructor.input_lead
    ks = [LEADS_12.index(k) for k in learned_leads(lead)]
    windows = [protocol_window(rec.leads, rec.fs) for rec in records]
    recons = reconstructor.reconstruct_batch([w[LEADS_12.index(lead)] for w in windows], [BASELINE_FS] * len(windows))
    beats, per_record = [], {}
    for rec, w, recon in zip(records, windows, recons):
        b = record_beats(highpass(w, BASELINE_FS), highpass(recon.leads.astype(np.float64), BASELINE_FS), ks, BASELINE_FS)
        beats += [{**x, "record": rec.name, "labels": list(rec.labels)} for x in b]
        if any(x["ectopic"] for x in b):
            per_record[rec.name] = sum(x["ectopic"] for x in b)
    ect = [b for b in beats if b["ectopic"]]
    normal = [b for b in beats if not b["ectopic"]]

    def stats(group: list[dict[str, Any]]) -> dict[str, Any]:
        if not group:
            return {"n": 0}
        return {"n": len(group),
                "mean_r_pred_vs_true": float(np.mean([b["r_pred_vs_true"] for b in group])),
                "mean_r_pred_vs_template": float(np.mean([b["r_pred_vs_template"] for b in group])),
                "closer_to_true_beat": float(np.mean([b["r_pred_vs_true"] > b["r_pred_vs_template"] for b in group]))}

    return {"n_records": len(records), "records_with_ectopic_beats": per_record,
            "ectopic": stats(ect), "normal": stats(normal),
            "ectopic_in_pvc_pac_records": stats([b for b in ect if "PVC/PAC" in b["labels"]])}


def main(argv: Sequence[str] | None = None) -> int:
    args = report_parser(__doc__).parse_args(argv)
    records = select_records(args.data, BASELINE_FS, args.patient_fold)
    rep = ectopic_report(Reconstructor.from_checkpoint(args.checkpoint, args.input_lead, precision="fp32"), records)
    print(f"{rep['n_records']} records, {len(rep['records_with_ectopic_beats'])} with ectopic beats")
    for key in ("ectopic", "ectopic_in_pvc_pac_records", "normal"):
        v = rep[key]
        if v["n"]:
            print(f"{key:<28} n={v['n']:<5} r(pred, recorded beat) {v['mean_r_pred_vs_true']:.3f}"
                  f"  r(pred, normal template) {v['mean_r_pred_vs_template']:.3f}"
                  f"  closer to the recorded beat: {v['closer_to_true_beat']:.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
