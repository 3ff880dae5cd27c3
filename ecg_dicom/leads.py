"""Lead names, their order in every (12, N) array, and the exact limb-lead identities.

Only II (or I) and V1–V6 are learned; the four other limb leads follow Einthoven's and
Goldberger's laws exactly, so they are computed, never predicted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

LEADS_12: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
CHEST_LEADS: tuple[str, ...] = ("V1", "V2", "V3", "V4", "V5", "V6")
DERIVED_LIMB_LEADS: tuple[str, ...] = ("III", "aVR", "aVL", "aVF")
SUPPORTED_INPUT_LEADS: tuple[str, ...] = ("I", "II")
TWO_LEAD_INPUT = "I+II"  # a model that takes I and II together and learns V1–V6 only
MODEL_INPUTS: tuple[str, ...] = (*SUPPORTED_INPUT_LEADS, TWO_LEAD_INPUT)


def input_leads_of(input_lead: str) -> tuple[str, ...]:
    """The measured leads a model for ``input_lead`` takes: ("I",), ("II",) or ("I", "II")."""
    if input_lead not in MODEL_INPUTS:
        raise ValueError(f"input lead must be one of {MODEL_INPUTS}, got {input_lead!r}")
    return ("I", "II") if input_lead == TWO_LEAD_INPUT else (input_lead,)


def canonical_lead_name(name: str) -> str:
    """Map a lead label in any case and common spelling ("ii", "Lead II", "AVR") to ours.

    Raises ``KeyError`` for a label that is not one of the 12 standard leads.
    """
    key = name.strip().upper().replace("LEAD", "").replace(" ", "").replace("_", "")
    for lead in LEADS_12:
        if lead.upper() == key:
            return lead
    raise KeyError(name)


def learned_leads(input_lead: str) -> tuple[str, ...]:
    """The leads a model for ``input_lead`` predicts: the other of I/II, then V1–V6 (V1–V6
    only for the two-lead model, which measures both limb leads)."""
    if input_lead == TWO_LEAD_INPUT:
        return CHEST_LEADS
    if input_lead not in SUPPORTED_INPUT_LEADS:
        raise ValueError(f"input lead must be one of {MODEL_INPUTS}, got {input_lead!r}")
    other = "II" if input_lead == "I" else "I"
    return (other, *CHEST_LEADS)


def assemble_12_leads(lead_i: np.ndarray, lead_ii: np.ndarray, chest: np.ndarray) -> np.ndarray:
    """Stack I, II and V1–V6 into the 12-lead order, computing the four limb leads exactly.

    lead_i, lead_ii: (..., N) µV; chest: (..., 6, N) µV (V1–V6).
    Returns (..., 12, N) float32 µV with III = II − I, aVR = −(I+II)/2, aVL = I − II/2,
    aVF = II − I/2.
    """
    lead_i = np.asarray(lead_i, dtype=np.float32)
    lead_ii = np.asarray(lead_ii, dtype=np.float32)
    limb = [
        lead_i,
        lead_ii,
        lead_ii - lead_i,
        -(lead_i + lead_ii) / 2,
        lead_i - lead_ii / 2,
        lead_ii - lead_i / 2,
    ]
    return np.concatenate([np.stack(limb, axis=-2), np.asarray(chest, dtype=np.float32)], axis=-2)


# |coefficient| of the learned limb lead (II for input I, I for input II) in each computed lead
_LIMB_SIGMA_FACTOR: dict[str, dict[str, float]] = {
    "I": {"III": 1.0, "aVR": 0.5, "aVL": 0.5, "aVF": 1.0},
    "II": {"III": 1.0, "aVR": 0.5, "aVL": 1.0, "aVF": 0.5},
}


def lead_uncertainties(sigma_learned: Sequence[float], input_lead: str) -> dict[str, float]:
    """The model's RMS uncertainty (µV) of every lead but the measured one(s) (the two-lead
    model: V1–V6 only; its computed limb leads are exact).

    sigma_learned: one value per :func:`learned_leads` (the other of I/II, then V1–V6). The
    measured lead is exact; a computed limb lead carries the learned limb lead's uncertainty
    times its coefficient (e.g. aVR = −(I + II)/2 from measured I: σ_II / 2).
    """
    names = learned_leads(input_lead)
    if len(sigma_learned) != len(names):
        raise ValueError(f"expected {len(names)} sigmas ({', '.join(names)}), got {len(sigma_learned)}")
    out = {name: float(s) for name, s in zip(names, sigma_learned)}
    if input_lead == TWO_LEAD_INPUT:  # both limb leads measured: the computed ones are exact
        return out
    limb = float(sigma_learned[0])
    out.update({lead: factor * limb for lead, factor in _LIMB_SIGMA_FACTOR[input_lead].items()})
    return out
