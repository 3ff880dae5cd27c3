"""Fit the uncertainty calibration of a model (:mod:`ecg_dicom.core.uncertainty`) and ship it
beside its weights as ``<weights>.uncertainty.json``.

Fitted on records of the model's own training databases that its weights never trained
on: its patient-grouped validation records (recorded in the checkpoint; they chose the
epoch, nothing else). Never on the databases a model card reports as unseen.

- ``scale``: the factor on σ / std(pred) that makes the per-lead value 1 − 1/sqrt(1 + (scale
  σ/std)²) closest (least squares) to the actual 1 − r over (record, lead) pairs;
- ``record_threshold``: the 90th percentile of the record uncertainty on those records, so
  that about one record in ten is flagged where the model is on home ground.

    python -m ecg_dicom.training.calibrate --input-lead I ../shared/data/ecg12
    python -m ecg_dicom.training.calibrate --input-lead I+II --checkpoint runs/x.pt ../shared/data/ecg12
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ecg_dicom.core.checkpoint import shipped_checkpoint_path
from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.uncertainty import (
    CALIBRATION_SUFFIX,
    DEFAULT_LEAD_THRESHOLD,
    UncertaintyCalibration,
    expected_one_minus_r,
)
from ecg_dicom.leads import MODEL_INPUTS
from ecg_dicom.training.data import find_record
from ecg_dicom.training.evaluate import evaluate_records, uncertainty_ranking

SCALES = np.exp(np.linspace(np.log(0.2), np.log(20.0), 121))
RECORD_QUANTILE = 0.90


def fit(results: Sequence[dict[str, Any]], model_version: str, fitted_on: str) -> UncertaintyCalibration:
    """The calibration from :func:`evaluate_records` results (their ``uncertainty.relative``)."""
    rel, target, owner = [], [], []
    for i, res in enumerate(results):
        for lead, value in (res.get("uncertainty") or {}).get("relative", {}).items():
            if value is not None and lead in res["leads"]:
                rel.append(value)
                target.append(1 - res["leads"][lead]["model"]["r"])
                owner.append(i)
    if len(rel) < 10:
        raise ValueError(f"{len(rel)} (record, lead) pairs: too few to calibrate on")
    rel_a, target_a, owner_a = np.array(rel), np.array(target), np.array(owner)
    losses = [float(np.mean((expected_one_minus_r(rel_a, 1.0, s) - target_a) ** 2)) for s in SCALES]
    scale = float(SCALES[int(np.argmin(losses))])
    per_lead = expected_one_minus_r(rel_a, 1.0, scale)
    record = np.array([per_lead[owner_a == i].mean() for i in sorted(set(owner))])
    threshold = float(np.quantile(record, RECORD_QUANTILE))
    return UncertaintyCalibration(scale=scale, record_threshold=threshold, lead_threshold=DEFAULT_LEAD_THRESHOLD,
                                  model_version=model_version, fitted_on=fitted_on,
                                  measured={"n_records": len(record), "n_pairs": len(rel),
                                            "mean_1_minus_r": float(target_a.mean()),
                                            "mean_uncertainty": float(per_lead.mean())})


def rescale(results: Sequence[dict[str, Any]], calibration: UncertaintyCalibration) -> list[dict[str, Any]]:
    """The results with their uncertainty recomputed under ``calibration`` (from ``relative``)."""
    out = []
    for res in results:
        unc = res.get("uncertainty")
        if unc:
            leads = {lead: float(expected_one_minus_r(np.array(v if v is not None else np.inf), 1.0, calibration.scale))
                     for lead, v in unc["relative"].items()}
            unc = {**unc, "leads": leads, "record": float(np.mean(list(leads.values()))),
                   "threshold": calibration.record_threshold}
        out.append({**res, "uncertainty": unc})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the folder the checkpoint's validation records live in (../shared/data/ecg12)")
    parser.add_argument("--input-lead", choices=MODEL_INPUTS, default="I")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped one for --input-lead")
    parser.add_argument("--out", default=None, help=f"default: beside the checkpoint, {CALIBRATION_SUFFIX}")
    args = parser.parse_args(argv)
    weights = Path(args.checkpoint) if args.checkpoint else shipped_checkpoint_path(args.input_lead)
    rec = Reconstructor.from_checkpoint(weights, args.input_lead, precision="fp32")
    rec.calibration = UncertaintyCalibration()  # scale 1: the raw σ / std(pred)
    names = rec.checkpoint.training.get("held_out", {}).get("validation_records") or []
    if not names:
        parser.error(f"{weights} records no validation records to calibrate on")
    records = [find_record(args.data, name) for name in names]
    train = rec.checkpoint.training.get("data", {}).get("train_records") or []
    if set(names) & set(train):
        parser.error("validation records overlap the training records")
    pretrained = ((rec.checkpoint.training.get("pretraining") or {}).get("data") or {}).get("train_records") or []
    seen_before = len(set(names) & set(pretrained))  # a fine-tune's start may have trained on them
    fitted_on = (f"{len(records)} validation records of the training databases (patient-grouped, never trained on)"
                 if not seen_before else f"{len(records)} validation records of the training databases, not trained on"
                 f" by this fine-tune; {seen_before} of them were in the training data of the weights it started from")
    results = evaluate_records(rec, records, {})  # the model's figures only, no baselines
    calibration = fit(results, rec.model_version, fitted_on)
    out = Path(args.out) if args.out else weights.with_suffix(CALIBRATION_SUFFIX)
    check = uncertainty_ranking(rescale(results, calibration))
    calibration = UncertaintyCalibration(**{**calibration.__dict__, "measured": {**calibration.measured,
                                                                                "on_these_records": check}})
    out.write_text(calibration.to_json() + "\n")
    print(json.dumps({"out": str(out), "scale": calibration.scale, "record_threshold": calibration.record_threshold,
                      "check_on_fit_records": check and {k: v for k, v in check.items() if k != "worst_records"}},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
