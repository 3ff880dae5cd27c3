"""How far to trust a reconstruction: one uncertainty per learned lead and one per record.

The per-lead value is the **expected 1 − r** (r: Pearson correlation with the true lead) that
the model's own σ implies. If the true lead is the prediction plus an independent error of
RMS σ, then r = std(pred) / sqrt(std(pred)² + σ²), so

    u_lead = 1 − 1 / sqrt(1 + (scale · σ / std(pred))²)      in [0, 1)

``scale`` corrects the variance head, which learnt its σ on records it trained on and is too
confident elsewhere; it is fitted once per model (:mod:`ecg_dicom.training.calibrate`) on
records from the training databases that the model did not train on, and shipped beside the
weights as ``<weights>.uncertainty.json`` with the record threshold. The record value is
the mean of the per-lead values over the learned leads: the expected 1 − mean r. Larger =
less reliable. Leads whose u_lead passes ``lead_threshold`` (expected r below 0.5 by
default) are named unreliable, in words a clinician reads: "V2–V4 unreliable for this record".

Pure numpy; no model or file format knowledge beyond the small JSON above.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ecg_dicom.leads import CHEST_LEADS

LOG = logging.getLogger(__name__)
CALIBRATION_SUFFIX = ".uncertainty.json"
DEFAULT_RECORD_THRESHOLD = 0.35   # expected mean r below 0.65: an uncalibrated model's threshold
DEFAULT_LEAD_THRESHOLD = 0.5      # expected r below 0.5: the lead is "unreliable"


@dataclass(frozen=True)
class UncertaintyCalibration:
    """What turns σ into the uncertainties above, for one model (``model_version``; None
    for the uncalibrated default). ``fitted_on``: in words, the records it was fitted on."""

    scale: float = 1.0
    record_threshold: float = DEFAULT_RECORD_THRESHOLD
    lead_threshold: float = DEFAULT_LEAD_THRESHOLD
    model_version: str | None = None
    fitted_on: str = "not calibrated (default scale 1)"
    measured: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> "UncertaintyCalibration":
        values = {k: data[k] for k in ("scale", "record_threshold", "lead_threshold") if k in data}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"uncertainty calibration: {key} must be a positive number")
        return cls(**{k: float(v) for k, v in values.items()}, model_version=data.get("model_version"),
                   fitted_on=str(data.get("fitted_on", "")), measured=dict(data.get("measured") or {}))

    @classmethod
    def for_weights(cls, weights: Path, model_version: str) -> "UncertaintyCalibration":
        """The calibration shipped beside ``weights`` (``x.uncertainty.json`` beside ``x.pt``)
        when it was fitted for ``model_version``; else (logged) the uncalibrated default."""
        path = weights.with_suffix(CALIBRATION_SUFFIX)
        if not path.is_file():
            return cls()
        try:
            calibration = cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            LOG.warning("%s is not usable (%s): uncertainty uncalibrated", path.name, exc)
            return cls()
        if calibration.model_version != model_version:
            LOG.warning("%s was fitted for model %s, not %s: uncertainty uncalibrated", path.name,
                        calibration.model_version, model_version)
            return cls()
        return calibration


@dataclass(frozen=True)
class RecordUncertainty:
    """leads: learned lead -> expected 1 − r; record: their mean; threshold: the model's
    record threshold; unreliable: learned leads above the lead threshold, in lead order."""

    leads: dict[str, float]
    record: float
    threshold: float
    unreliable: tuple[str, ...]

    @property
    def above_threshold(self) -> bool:
        return self.record > self.threshold

    @property
    def text(self) -> str:
        """One line for the page, the .json and the DICOM annotation."""
        head = f"Reconstruction uncertainty {self.record:.2f} (threshold {self.threshold:.2f})"
        if self.unreliable:
            return f"{head}: {lead_ranges(self.unreliable)} unreliable for this record"
        if self.above_threshold:
            return f"{head}: above threshold, treat every AI lead of this record with caution"
        return f"{head}: no lead flagged"

    def to_json(self) -> dict:
        return {"record_uncertainty": round(self.record, 4), "threshold": round(self.threshold, 4),
                "above_threshold": self.above_threshold, "unreliable_leads": list(self.unreliable),
                "text": self.text, "leads": {k: round(v, 4) for k, v in self.leads.items()}}


def lead_ranges(leads: Sequence[str]) -> str:
    """("II", "V2", "V3", "V4", "V6") -> "II, V2–V4, V6": three or more consecutive chest
    leads as a range."""
    parts: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            parts.append(f"{run[0]}–{run[-1]}" if len(run) > 2 else ", ".join(run))
        run.clear()

    for lead in leads:
        if lead in CHEST_LEADS and run and CHEST_LEADS.index(lead) == CHEST_LEADS.index(run[-1]) + 1:
            run.append(lead)
            continue
        flush()
        (run if lead in CHEST_LEADS else parts).append(lead)
    flush()
    return ", ".join(parts)


def expected_one_minus_r(sigma_uv: np.ndarray, pred_std_uv: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Per lead: 1 − 1/sqrt(1 + (scale σ / std(pred))²); a flat prediction gives 1."""
    sigma = np.asarray(sigma_uv, np.float64)
    std = np.asarray(pred_std_uv, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(std > 0, scale * sigma / std, np.inf)
    return 1.0 - 1.0 / np.sqrt(1.0 + rel ** 2)


def assess(sigma_uv: Sequence[float], learned_uv: np.ndarray, learned: Sequence[str],
           calibration: UncertaintyCalibration) -> RecordUncertainty:
    """sigma_uv: (n,) µV per learned lead; learned_uv: (n, N) µV, those leads as reconstructed."""
    std = np.std(np.asarray(learned_uv, np.float64), axis=-1)
    per_lead = expected_one_minus_r(np.asarray(sigma_uv), std, calibration.scale)
    leads = {name: float(u) for name, u in zip(learned, per_lead)}
    unreliable = tuple(name for name, u in leads.items() if u > calibration.lead_threshold)
    return RecordUncertainty(leads, float(np.mean(per_lead)), calibration.record_threshold, unreliable)
