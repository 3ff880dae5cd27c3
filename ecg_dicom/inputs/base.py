"""What every input reader gives (:class:`LeadInput`), and the signal-quality gate every
input passes before the model, whichever format and door it came by."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence
from pathlib import Path

import numpy as np

from ecg_dicom.core.quality import Flag, QualityReport, assess_quality, assess_quality_many
from ecg_dicom.errors import InputError, SignalQualityError
from ecg_dicom.sidecar import Sidecar

if TYPE_CHECKING:  # pydicom is imported only when a DICOM input is read (~0.3 s)
    from pydicom import Dataset

LOG = logging.getLogger("ecg_dicom.inputs")

# Called with every signal-quality verdict, from both doors (convert and the service): the
# hook for counters such as the service's metrics (rejections and warnings by flag).
QUALITY_LISTENERS: list[Callable[[QualityReport], None]] = []


@dataclass
class LeadInput:
    """One lead ready for the model.

    signal_uv: (N,) float64 µV, or (2, N) (I, II) for the two-lead model; fs: Hz; lead:
    "I", "II" or "I+II" (the lead(s) the model is given); dataset: the source DICOM
    object (None for .npy); content_hash: sha256 hex of the file's bytes (deterministic
    output UIDs for .npy); kind: "npy" or "dicom"; sidecar: what the .npy's sidecar said
    (None without one; see :mod:`ecg_dicom.sidecar`); quality: the signal-quality gate's
    verdict on the lead ("ok" or "warn": a rejected lead never becomes a LeadInput);
    source_leads: every lead the source holds, canonical name -> (N,) float64 µV at ``fs``
    (None for a one-lead source): what the choice of input lead and the accuracy monitor read.
    """

    signal_uv: np.ndarray
    fs: float
    lead: str
    dataset: Dataset | None
    content_hash: str
    kind: str
    sidecar: Sidecar | None = None
    quality: QualityReport | None = None
    source_leads: dict[str, np.ndarray] | None = None


def refuse_links(path: str | Path) -> None:
    """Refuse anything but a regular file at ``path`` itself (a symbolic link is not
    followed, its target never read). Raises InputError."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}") from None
    if stat.S_ISLNK(mode):
        raise InputError("a symbolic link, refused: only regular files are taken (its target was not read)")
    if not stat.S_ISREG(mode):
        raise InputError("not a regular file, refused")


def gate(signal_uv: np.ndarray, fs: float) -> QualityReport:
    """Run the signal-quality gate on a checked lead ((N,), or (2, N): I and II, each judged);
    raise SignalQualityError on "reject"."""
    if np.ndim(signal_uv) == 2:
        return _verdict(merge_reports([assess_quality(row, fs) for row in signal_uv], TWO_LEAD_NAMES))
    return _verdict(assess_quality(signal_uv, fs))


TWO_LEAD_NAMES = ("I", "II")


def merge_reports(reports: Sequence[QualityReport], names: Sequence[str]) -> QualityReport:
    """One verdict on several measured leads: the worst status, every flag with its lead
    named ("lead II: ..."), the measures keyed "<lead>:<measure>"."""
    order = ("ok", "warn", "reject")
    status = max((r.status for r in reports), key=order.index)
    flags = [Flag(f.code, f.severity, f"lead {name}: {f.text}") for r, name in zip(reports, names) for f in r.flags]
    measures = {f"{name}:{key}": value for r, name in zip(reports, names) for key, value in r.measures.items()}
    return QualityReport(status, flags, measures)


def _verdict(report: QualityReport) -> QualityReport:
    """Tell the listeners of a gate verdict; raise SignalQualityError on "reject"."""
    for listener in QUALITY_LISTENERS:
        try:
            listener(report)
        except Exception:  # a counter must never cost an input
            LOG.exception("quality listener failed")
    if report.status == "reject":
        raise SignalQualityError(report.reason)
    return report


def gate_many(leads: Sequence[LeadInput]) -> list[InputError | None]:
    """The signal-quality gate of :func:`gate` on a batch of leads read with ``gated=False``,
    measured together (:func:`ecg_dicom.core.quality.assess_quality_many`: ~2x less CPU per
    10 s ECG than one at a time). Sets each accepted lead's ``quality``; returns, per lead,
    None or the error that refuses it (a SignalQualityError; an InputError naming the failure
    if the gate itself failed on that lead, which then costs no other lead)."""
    rows = [(i, row) for i, lead in enumerate(leads)
            for row in (lead.signal_uv if np.ndim(lead.signal_uv) == 2 else [lead.signal_uv])]
    try:
        flat = assess_quality_many([row for _, row in rows], [leads[i].fs for i, _ in rows])
        reports: list[QualityReport] | None = []
        for i in range(len(leads)):
            mine = [rep for (k, _), rep in zip(rows, flat) if k == i]
            reports.append(mine[0] if len(mine) == 1 else merge_reports(mine, TWO_LEAD_NAMES))
    except Exception:  # noqa: BLE001 - one lead breaking the batch: gate each on its own
        LOG.exception("signal-quality gate failed on a batch of %d; gating them one by one", len(leads))
        reports = None
    refusals: list[InputError | None] = []
    for i, lead in enumerate(leads):
        try:
            if reports is None:
                lead.quality = gate(lead.signal_uv, lead.fs)
            else:
                lead.quality = _verdict(reports[i])
            refusals.append(None)
        except InputError as exc:
            refusals.append(exc)
        except Exception as exc:  # noqa: BLE001 - an unexpected gate failure is still the input's problem
            LOG.exception("signal-quality gate failed")
            refusals.append(InputError(f"signal-quality gate failed ({type(exc).__name__}: {exc})"))
    return refusals


