"""The live accuracy monitor: how well the model does on this site's own 12-lead ECGs.

Every input whose source also measured the leads we reconstruct (a 12-lead DICOM object)
gives per learned lead the reconstruction's r and RMSE against the measured lead, by the
``ecg-dicom evaluate`` protocol (:mod:`ecg_dicom.core.accuracy`). The worker hands them to
:meth:`AccuracyMonitor.record`: kept in the job store (table ``accuracy``), observed on
``/metrics`` (histograms per lead and source device model), and held against the model
card: when the median r of a lead's last ``window`` records falls more than ``margin`` below
the card's r for that lead (each record against the card of the model that made it),
``/health`` says ``degraded`` and one warning a day is logged. It never changes an output.
``ecg-dicom status --accuracy`` reads the kept figures (:func:`summarize`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from ecg_dicom.config import AccuracyMonitor as MonitorSettings
from ecg_dicom.core.accuracy import MODEL_CARD_R
from ecg_dicom.queue import AccuracyRow, JobQueue
from ecg_dicom import metrics

LOG = logging.getLogger("ecg_dicom.accuracy")
WARN_EVERY_S = 24 * 3600.0
UNKNOWN_DEVICE = "unknown"
DEVICE_MAX = 64


def device_model(dataset: Any) -> str:
    """The source's device model (ManufacturerModelName) as a metrics label and store key:
    printable ASCII, at most 64 characters; "unknown" when absent. Never a patient attribute."""
    value = ""
    if dataset is not None:
        try:
            value = str(dataset.get("ManufacturerModelName", "") or "")
        except Exception:  # noqa: BLE001 - a malformed value is an unknown device
            value = ""
    value = "".join(ch for ch in value if ch.isascii() and ch.isprintable()).strip()[:DEVICE_MAX]
    return value or UNKNOWN_DEVICE


class AccuracyMonitor:
    """Keeps the figures and says whether the model has drifted below its card.

    ``card``: per input lead the model card's r per learned lead (default: the shipped
    models', :data:`MODEL_CARD_R`; {} for a site's own checkpoint, which has no card here:
    figures are kept, never judged). ``clock``: Unix time (for tests). Thread-safe: the
    worker records, ``/health`` reads.
    """

    def __init__(self, queue: JobQueue, settings: MonitorSettings,
                 card: dict[str, dict[str, float]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.settings = settings
        self.card = MODEL_CARD_R if card is None else card
        self.clock = clock
        self._lock = threading.Lock()
        self._degraded: dict[str, dict[str, float]] = {}
        self._warned_at: float | None = None

    def record(self, job_id: int, device: str, input_lead: str, figures: dict[str, dict]) -> None:
        """One job's figures: kept, observed on /metrics, and the rolling medians checked."""
        if not figures or not self.settings.enabled:
            return
        self.queue.record_accuracy(job_id, device, input_lead, figures)
        metrics.accuracy_observed(device, figures)
        self.check()

    def check(self) -> dict[str, dict[str, float]]:
        """Recompute, per lead, the median of the last ``window`` records' r less the card's
        r; return the leads below ``-margin`` (lead -> {median_r, card_r, n}); log a warning
        when any is, at most once a day."""
        window, margin = self.settings.window, self.settings.margin
        degraded: dict[str, dict[str, float]] = {}
        # the leads the card judges (a full scan for the distinct leads kept grew with every job)
        for lead in sorted({lead for leads in self.card.values() for lead in leads}):
            rows = [row for row in self.queue.latest_accuracy(lead, window)
                    if lead in self.card.get(row.input_lead, {})]
            if len(rows) < window:
                continue
            deficit = float(np.median([row.r - self.card[row.input_lead][lead] for row in rows]))
            if deficit < -margin:
                card = float(np.mean([self.card[row.input_lead][lead] for row in rows]))
                degraded[lead] = {"median_r": round(float(np.median([row.r for row in rows])), 3),
                                  "card_r": round(card, 3), "n": len(rows)}
        now = self.clock()
        with self._lock:
            self._degraded = degraded
            warn = bool(degraded) and (self._warned_at is None or now - self._warned_at >= WARN_EVERY_S)
            if warn:
                self._warned_at = now
        if warn:
            LOG.warning("reconstruction accuracy below the model card on this site's 12-lead sources (last %d "
                        "records per lead, margin %.2f): %s; see ecg-dicom status --accuracy", window, margin,
                        ", ".join(f"{lead} median r {v['median_r']:.2f} vs card {v['card_r']:.2f}"
                                  for lead, v in degraded.items()))
        return degraded

    def degraded(self) -> dict[str, dict[str, float]]:
        """The leads found below the card at the last check ({} when none)."""
        with self._lock:
            return dict(self._degraded)


def summarize(rows: Sequence[AccuracyRow]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per device model and lead: n, median and 10th-percentile r, median RMSE µV, and the
    trend (median r of the newer half of the records less that of the older half; None under
    4 records). ``rows``: oldest first."""
    groups: dict[str, dict[str, list[AccuracyRow]]] = {}
    for row in rows:
        groups.setdefault(row.device, {}).setdefault(row.lead, []).append(row)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for device in sorted(groups):
        out[device] = {}
        for lead in sorted(groups[device], key=_lead_key):
            members = groups[device][lead]
            r = np.array([row.r for row in members])
            half = len(r) // 2
            out[device][lead] = {
                "n": len(r), "median_r": round(float(np.median(r)), 3),
                "p10_r": round(float(np.percentile(r, 10)), 3),
                "median_rmse_uv": round(float(np.median([row.rmse_uv for row in members])), 1),
                "trend": round(float(np.median(r[half:]) - np.median(r[:half])), 3) if len(r) >= 4 else None,
            }
    return out


def _lead_key(lead: str) -> int:
    from ecg_dicom.leads import LEADS_12

    return LEADS_12.index(lead) if lead in LEADS_12 else len(LEADS_12)
