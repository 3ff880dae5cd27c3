"""The DICOM waveform input, recognised by content (the Part 10 preamble)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecg_dicom.core.preprocess import check_single_lead
from ecg_dicom.files import file_sha256
from ecg_dicom.errors import InputError
from ecg_dicom.inputs.base import LeadInput
from ecg_dicom.leads import input_leads_of
from ecg_dicom.limits import DEFAULT_LIMITS, Limits

DICOM_MAGIC_OFFSET = 128


def is_dicom_file(path: str | Path) -> bool:
    """True when the file carries the DICOM Part 10 preamble ("DICM" at byte 128)."""
    with open(path, "rb") as fh:
        fh.seek(DICOM_MAGIC_OFFSET)
        return fh.read(4) == b"DICM"


def read_dicom_input(path: Path, input_lead: str, limits: Limits = DEFAULT_LIMITS) -> LeadInput:
    """``input_lead`` of a DICOM waveform object (its own rate and units), checked, not gated;
    for the two-lead model ``I+II`` both leads, (2, N) µV, from the same multiplex group;
    ``source_leads``: every standard lead of its rhythm data at that rate and length (None
    when it holds only the one)."""
    from ecg_dicom.dicom.reader import read_dicom_input_leads

    wanted = input_leads_of(input_lead)
    chosen, leads = read_dicom_input_leads(path, wanted, limits)
    lead = chosen[0]
    signal = check_single_lead(lead.signal_uv, lead.fs, "uV")
    if len(chosen) > 1:
        rows = [signal]
        for other in chosen[1:]:
            if other.fs != lead.fs or other.signal_uv.size != lead.signal_uv.size:
                raise InputError(f"leads {lead.lead} and {other.lead} differ in rate or length"
                                 f" ({lead.fs:g} Hz x {lead.signal_uv.size}, {other.fs:g} Hz x {other.signal_uv.size})")
            rows.append(check_single_lead(other.signal_uv, other.fs, "uV"))
        signal = np.stack(rows)
    if leads.get(lead.lead) is None or leads[lead.lead].shape != lead.signal_uv.shape:
        leads = {}
    return LeadInput(signal, float(lead.fs), input_lead, lead.dataset, file_sha256(path), "dicom",
                     source_leads=leads if len(leads) > 1 else None)
