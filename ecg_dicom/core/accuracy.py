"""How close a reconstruction is to leads that were measured: the ``ecg-dicom evaluate``
protocol in one place, for the evaluation (``training/evaluate.py``) and for the service's
accuracy monitor on sources that carry the leads we reconstruct (a 12-lead DICOM object).

Protocol: the first 10 s at 500 Hz of truth and reconstruction, both high-passed at 0.5 Hz,
the learned leads only (the other of I/II and V1–V6; the four limb leads computed by formula
are exact given I and II), a true lead flatter than :data:`FLAT_STD_UV` skipped. Pure numpy.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ecg_dicom.core.preprocess import highpass, resample_fs
from ecg_dicom.leads import LEADS_12, learned_leads

PROTOCOL_FS = 500.0
PROTOCOL_S = 10.0
FLAT_STD_UV = 10.0  # a true lead with a std under 10 µV after the high-pass is dead

# The model card's per-lead r of the shipped models on their held-out records (README "Model
# card", table 3; pinned by tests/test_shipped_weights.py): what the accuracy monitor's rolling
# median is held against. Update with the weights.
MODEL_CARD_R: dict[str, dict[str, float]] = {
    "I": {"II": 0.773, "V1": 0.843, "V2": 0.793, "V3": 0.772, "V4": 0.763, "V5": 0.844, "V6": 0.844},
    "II": {"I": 0.792, "V1": 0.786, "V2": 0.744, "V3": 0.706, "V4": 0.742, "V5": 0.861, "V6": 0.871},
}


def lead_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """(N,) µV each -> Pearson r, RMSE µV, std(pred)/std(true), std(true) µV."""
    pc, tc = pred - pred.mean(), true - true.mean()
    sp, st = float(np.sqrt(np.mean(pc ** 2))), float(np.sqrt(np.mean(tc ** 2)))
    r = float(np.mean(pc * tc) / (sp * st)) if sp > 0 and st > 0 else 0.0
    return {"r": r, "rmse_uv": float(np.sqrt(np.mean((pred - true) ** 2))), "std_ratio": sp / st,
            "std_true_uv": st}


def protocol_window(leads_uv: np.ndarray, fs: float, seconds: float = PROTOCOL_S) -> np.ndarray:
    """(L, N) µV at ``fs`` -> (L, M) µV at 500 Hz: the first ``seconds`` (or all if shorter)."""
    at_500 = resample_fs(leads_uv, fs, PROTOCOL_FS)
    return at_500[:, :int(round(seconds * PROTOCOL_FS))]


def source_complete(source_leads: Mapping[str, np.ndarray] | None) -> bool:
    """True when a source holds all 12 standard leads, measured."""
    return bool(source_leads) and all(lead in source_leads for lead in LEADS_12)


def source_accuracy(recon_uv: np.ndarray, source_leads: Mapping[str, np.ndarray] | None, fs: float,
                    input_lead: str) -> dict[str, dict[str, float]]:
    """Per learned lead the source also measured: {"r": …, "rmse_uv": …} of the
    reconstruction against it, by the protocol above (the figures ``ecg-dicom evaluate``
    gives on the same record).

    recon_uv: (12, N) µV in :data:`LEADS_12` order at ``fs`` Hz; source_leads: name -> (N,)
    µV at ``fs`` (None: a one-lead source, {} returned).
    """
    if not source_leads:
        return {}
    leads = [lead for lead in learned_leads(input_lead)
             if lead in source_leads and np.shape(source_leads[lead]) == recon_uv.shape[-1:]]
    if not leads:
        return {}
    # truth and reconstruction through the protocol together: one resampling, one filter pass
    both = np.concatenate([np.stack([np.asarray(source_leads[lead], np.float64) for lead in leads]),
                           recon_uv[[LEADS_12.index(lead) for lead in leads]].astype(np.float64)])
    both = highpass(protocol_window(both, fs), PROTOCOL_FS)
    truth, recon = both[:len(leads)], both[len(leads):]
    out = {}
    for k, lead in enumerate(leads):
        if np.std(truth[k]) < FLAT_STD_UV:
            continue
        m = lead_metrics(recon[k], truth[k])
        out[lead] = {"r": round(m["r"], 4), "rmse_uv": round(m["rmse_uv"], 1)}
    return out
