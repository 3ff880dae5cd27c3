"""From the leads a multi-lead file holds to a :class:`LeadInput`: shared by every reader of
a format that stores several leads (MUSE, Philips, aECG, WFDB)."""

from __future__ import annotations

import numpy as np

from ecg_dicom.core.preprocess import check_single_lead
from ecg_dicom.errors import InputError
from ecg_dicom.inputs.base import LeadInput
from ecg_dicom.leads import LEADS_12, canonical_lead_name
from ecg_dicom.sidecar import Sidecar


def standard_leads(named: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """The standard leads among ``named`` (label as the file spells it -> (N,) µV), under
    canonical names, in the 12-lead order; III, aVR, aVL and aVF computed from I and II
    where the file stores only those (Einthoven, Goldberger). Other labels (Frank leads,
    V7...) are left out. Raises InputError when the leads differ in length."""
    leads: dict[str, np.ndarray] = {}
    for label, samples in named.items():
        try:
            name = canonical_lead_name(label)
        except KeyError:
            continue
        leads.setdefault(name, np.asarray(samples, dtype=np.float64))
    lengths = {len(v) for v in leads.values()}
    if len(lengths) > 1:
        raise InputError(f"{what}: its leads differ in length ({min(lengths)} to {max(lengths)} samples)")
    if "I" in leads and "II" in leads:
        i, ii = leads["I"], leads["II"]
        for name, value in (("III", ii - i), ("aVR", -(i + ii) / 2), ("aVL", i - ii / 2), ("aVF", ii - i / 2)):
            leads.setdefault(name, value)
    elif "I" not in leads and "II" in leads and "III" in leads:
        leads["I"] = leads["II"] - leads["III"]
    elif "II" not in leads and "I" in leads and "III" in leads:
        leads["II"] = leads["I"] + leads["III"]
    return {name: leads[name] for name in LEADS_12 if name in leads}


def lead_input(named: dict[str, np.ndarray], fs: float, input_lead: str, content_hash: str, kind: str,
               what: str, sidecar: Sidecar | None = None) -> LeadInput:
    """``input_lead`` of a multi-lead file, checked (not gated), with every standard lead
    it holds as ``source_leads``. ``named``: label -> (N,) µV at ``fs`` Hz."""
    leads = standard_leads(named, what)
    if input_lead not in leads:
        held = ", ".join(leads) or "none of the 12 standard leads"
        raise InputError(f"{what}: holds no lead {input_lead} (the model takes lead {input_lead}; the file holds "
                         f"{held})")
    signal = check_single_lead(leads[input_lead], fs, "uV")
    source = {name: value for name, value in leads.items() if np.all(np.isfinite(value))}
    return LeadInput(signal, float(fs), input_lead, None, content_hash, kind, sidecar=sidecar,
                     source_leads=source or None)
