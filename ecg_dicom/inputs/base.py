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

# where a lead's sampling rate came from (the result's .json "fs_source", the page)
FS_FROM_DICOM = "DICOM header"
FS_FROM_FILE = "file header"          # a vendor file (MUSE, Philips, aECG, SCP-ECG, WFDB) states its rate
FS_FROM_SIDECAR = "sidecar"
FS_GIVEN = "given (--fs)"
FS_ASSUMED = "assumed (no sidecar)"
NPY_DEFAULT_FS = 500.0  # Hz: the rate of a .npy nothing says the rate of


@dataclass
class LeadInput:
    """One lead ready for the model.

    signal_uv: (N,) float64 µV, or (2, N) (I, II) for the two-lead model; fs: Hz; lead:
    "I", "II" or "I+II" (the lead(s) the model is given); dataset: the source DICOM
    object (None for the other formats); content_hash: sha256 hex of the file's bytes (a
    WFDB record's: of its header and signal files; deterministic output UIDs without a
    DICOM source); kind: "npy", "dicom", "muse", "philips", "aecg", "wfdb" or "scp";
    sidecar: what the .npy's sidecar said, or a vendor file's own patient and acquisition
    (overridden key by key by a sidecar beside it) (None without any; see
    :mod:`ecg_dicom.sidecar`, :mod:`ecg_dicom.inputs.demographics`); quality: the signal-quality gate's
    verdict on the lead ("ok" or "warn": a rejected lead never becomes a LeadInput);
    source_leads: every lead the source holds, canonical name -> (N,) float64 µV at ``fs``
    (None for a one-lead source): what the choice of input lead and the accuracy monitor read;
    fs_source: where ``fs`` came from (:data:`FS_FROM_DICOM`, :data:`FS_FROM_FILE`,
    :data:`FS_FROM_SIDECAR`, :data:`FS_GIVEN` or :data:`FS_ASSUMED`).
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
    fs_source: str = ""

    @property
    def fs_assumed(self) -> bool:
        """True when nothing said the rate: a .npy without a sidecar's ``fs`` or an ``--fs``."""
        return self.fs_source == FS_ASSUMED


def choose_lead(item: LeadInput, models: Sequence[str]) -> LeadInput:
    """With ``input_lead: auto``, give ``item`` (a source holding several leads, read with its
    preferred lead) the input the model does best from (:func:`ecg_dicom.core.leadchoice.choose_input_lead`,
    among the inputs ``models`` has models for: I+II, else I, else II), gated: the input is
    checked and gated, the next tried only when it is refused. Raises the refusal of the
    preferred input when all are refused."""
    from ecg_dicom.core.leadchoice import choose_input_lead
    from ecg_dicom.core.preprocess import check_single_lead
    from ecg_dicom.leads import input_leads_of

    leads = item.source_leads or {item.lead: item.signal_uv}
    signals: dict[str, np.ndarray] = {}
    reports: dict[str, QualityReport] = {}

    def one_lead(name: str) -> str | None:  # the name a reason gives the lead ("send lead II")
        return name if len(input_leads_of(name)) == 1 else None

    def refusal(name: str) -> Exception | None:
        try:
            rows = [item.signal_uv if lead == item.lead and np.ndim(item.signal_uv) == 1
                    else check_single_lead(leads[lead], item.fs, "uV") for lead in input_leads_of(name)]
        except InputError as exc:
            return InputError(f"lead {name}: {exc}")
        signals[name] = rows[0] if len(rows) == 1 else np.stack(rows)
        reports[name] = assess(signals[name], item.fs)
        return SignalQualityError(reports[name].reason_for(one_lead(name))) if reports[name].status == "reject" \
            else None

    try:
        chosen = choose_input_lead(leads, refusal, models)
    except SignalQualityError:
        first = next(iter(reports))
        _verdict(reports[first], one_lead(first))  # tells the listeners and raises with the reason
        raise
    except ValueError as exc:
        raise InputError(str(exc)) from None
    preferred = next(iter(reports))
    if chosen != preferred:
        LOG.info("input %s chosen: %s is refused (%s)", chosen, preferred, reports[preferred].reason_for(one_lead(preferred)))
    item.signal_uv, item.lead = signals[chosen], chosen
    item.quality = _verdict(reports[chosen], one_lead(chosen))
    return item


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


def gate(signal_uv: np.ndarray, fs: float, lead: str | None = None) -> QualityReport:
    """Run the signal-quality gate on a checked lead ((N,), named ``lead`` in the reason; or
    (2, N): I and II, each judged); raise SignalQualityError on "reject"."""
    return _verdict(assess(signal_uv, fs), None if np.ndim(signal_uv) == 2 else lead)


TWO_LEAD_NAMES = ("I", "II")


def assess(signal_uv: np.ndarray, fs: float) -> QualityReport:
    """The gate's measures of one lead (N,), or of I and II (2, N) merged into one verdict."""
    if np.ndim(signal_uv) == 2:
        return merge_reports([assess_quality(row, fs) for row in signal_uv], TWO_LEAD_NAMES)
    return assess_quality(signal_uv, fs)


def merge_reports(reports: Sequence[QualityReport], names: Sequence[str]) -> QualityReport:
    """One verdict on several measured leads: the worst status, every flag with its lead
    named ("lead II: ..."), the measures keyed "<lead>:<measure>"."""
    order = ("ok", "warn", "reject")
    status = max((r.status for r in reports), key=order.index)
    flags = [Flag(f.code, f.severity, f"lead {name}: {f.text}") for r, name in zip(reports, names) for f in r.flags]
    measures = {f"{name}:{key}": value for r, name in zip(reports, names) for key, value in r.measures.items()}
    return QualityReport(status, flags, measures)


def _verdict(report: QualityReport, lead: str | None = None) -> QualityReport:
    """Tell the listeners of a gate verdict; raise SignalQualityError on "reject"."""
    for listener in QUALITY_LISTENERS:
        try:
            listener(report)
        except Exception:  # a counter must never cost an input
            LOG.exception("quality listener failed")
    if report.status == "reject":
        raise SignalQualityError(report.reason_for(lead))
    return report


def gate_many(leads: Sequence[LeadInput]) -> list[InputError | None]:
    """The signal-quality gate of :func:`gate` on a batch of leads read with ``gated=False``,
    measured together (:func:`ecg_dicom.core.quality.assess_quality_many`: ~2x less CPU per
    10 s ECG than one at a time). Sets each accepted lead's ``quality``; returns, per lead,
    None or the error that refuses it (a SignalQualityError; an InputError naming the failure
    if the gate itself failed on that lead, which then costs no other lead). A lead gated
    already (its ``quality`` set, as the choice of input lead does) is left as it is; a
    two-lead input (2, N) has each of its leads measured and one verdict."""
    done = [lead.quality is not None for lead in leads]
    todo = [lead for lead, gated in zip(leads, done) if not gated]
    rows = [(i, row) for i, lead in enumerate(todo)
            for row in (lead.signal_uv if np.ndim(lead.signal_uv) == 2 else [lead.signal_uv])]
    try:
        flat = assess_quality_many([row for _, row in rows], [todo[i].fs for i, _ in rows])
        measured = []
        for i in range(len(todo)):
            mine = [rep for (k, _), rep in zip(rows, flat) if k == i]
            measured.append(mine[0] if len(mine) == 1 else merge_reports(mine, TWO_LEAD_NAMES))
        reports: list[QualityReport] | None = [lead.quality if lead.quality is not None else measured.pop(0)
                                               for lead in leads]
    except Exception:  # noqa: BLE001 - one lead breaking the batch: gate each on its own
        LOG.exception("signal-quality gate failed on a batch of %d; gating them one by one", len(leads))
        reports = None
    refusals: list[InputError | None] = []
    for i, lead in enumerate(leads):
        try:
            if done[i]:
                refusals.append(None)
                continue
            lead.quality = _verdict(reports[i] if reports is not None else assess(lead.signal_uv, lead.fs),
                                    None if np.ndim(lead.signal_uv) == 2 else lead.lead)
            refusals.append(None)
        except InputError as exc:
            refusals.append(exc)
        except Exception as exc:  # noqa: BLE001 - an unexpected gate failure is still the input's problem
            LOG.exception("signal-quality gate failed")
            refusals.append(InputError(f"signal-quality gate failed ({type(exc).__name__}: {exc})"))
    return refusals


