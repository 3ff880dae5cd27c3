"""The service's metrics (Prometheus, via ``prometheus-client``), served on ``/metrics``.

One registry per process; every name starts with ``ecg_dicom_``. Counters count since the
service started; the job gauges are read from the job store at each scrape, so they hold
across restarts.

=============================================  =========  ====================================
metric                                         type       labels / meaning
=============================================  =========  ====================================
ecg_dicom_jobs                                 gauge      ``state``: jobs in the store per state
ecg_dicom_queue_backlog                        gauge      jobs waiting or processing
ecg_dicom_queue_high_water                     gauge      the configured high-water mark
ecg_dicom_jobs_finished_total                  counter    ``outcome``: done, rejected, dead_lettered
ecg_dicom_store_seconds                        histogram  C-STORE request received -> answered
ecg_dicom_processing_seconds                   histogram  job accepted -> outputs written
ecg_dicom_delivery_seconds                     histogram  job accepted -> delivered to PACS
ecg_dicom_stores_total                         counter    ``status``: success, out_of_resources,
                                                          queue_full, too_large, ...
ecg_dicom_pacs_failures_total                  counter    ``kind``: transient, permanent
ecg_dicom_storage_commitments_total            counter    ``result``: committed, failed, timeout
ecg_dicom_association_refusals_total           counter    ``reason``: calling_ae, called_ae,
                                                          local_limit, tls_handshake,
                                                          handshake_timeout, pending_evicted,
                                                          oversize_pdu, oversize_store
ecg_dicom_associations_active                  gauge      associations admitted and open
ecg_dicom_signal_quality_total                 counter    ``status`` (ok, warn, reject) and
                                                          ``flag`` (flat, clipping, emg, baseline,
                                                          offset, mains, heart_rate; none if ok):
                                                          the gate's verdicts on input leads
ecg_dicom_reconstructions_total                counter    ``uncertainty``: above_threshold,
                                                          within (the record uncertainty against
                                                          the model's shipped threshold),
                                                          unavailable (no variance head)
ecg_dicom_accuracy_r                           histogram  ``lead``, ``device_model``: r of the
                                                          reconstruction against the lead the
                                                          source measured (accuracy monitor)
ecg_dicom_accuracy_rmse_uv                     histogram  the same, RMSE in µV
=============================================  =========  ====================================
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600, 1800)

JOBS_FINISHED = Counter("ecg_dicom_jobs_finished", "Jobs that reached a final state, by outcome",
                        ["outcome"], registry=REGISTRY)
STORE_SECONDS = Histogram("ecg_dicom_store_seconds", "C-STORE request received to response sent",
                          buckets=_LATENCY_BUCKETS, registry=REGISTRY)
PROCESSING_SECONDS = Histogram("ecg_dicom_processing_seconds", "Job accepted to outputs written",
                               buckets=_LATENCY_BUCKETS, registry=REGISTRY)
DELIVERY_SECONDS = Histogram("ecg_dicom_delivery_seconds", "Job accepted to results delivered to PACS",
                             buckets=_LATENCY_BUCKETS, registry=REGISTRY)
STORES = Counter("ecg_dicom_stores", "C-STORE requests answered, by outcome", ["status"], registry=REGISTRY)
PACS_FAILURES = Counter("ecg_dicom_pacs_failures", "Failed delivery attempts to PACS, by kind", ["kind"],
                        registry=REGISTRY)
COMMITMENTS = Counter("ecg_dicom_storage_commitments", "Storage commitment requests answered (or not), by"
                      " result", ["result"], registry=REGISTRY)
REFUSALS = Counter("ecg_dicom_association_refusals", "Connections or associations refused, by reason",
                   ["reason"], registry=REGISTRY)
ASSOCIATIONS_ACTIVE = Gauge("ecg_dicom_associations_active", "Associations admitted and open",
                            registry=REGISTRY)

SIGNAL_QUALITY = Counter("ecg_dicom_signal_quality", "Signal-quality gate verdicts on input leads, by status"
                         " and flag", ["status", "flag"], registry=REGISTRY)

ACCURACY_R = Histogram("ecg_dicom_accuracy_r", "Reconstruction r against the lead the source measured "
                       "(evaluate protocol), by lead and source device model", ["lead", "device_model"],
                       buckets=(0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0), registry=REGISTRY)
ACCURACY_RMSE = Histogram("ecg_dicom_accuracy_rmse_uv", "Reconstruction RMSE (µV) against the lead the source "
                          "measured, by lead and source device model", ["lead", "device_model"],
                          buckets=(25, 50, 75, 100, 150, 200, 300, 500, 1000), registry=REGISTRY)

for _outcome in ("done", "rejected", "dead_lettered"):
    JOBS_FINISHED.labels(_outcome)
for _kind in ("transient", "permanent"):
    PACS_FAILURES.labels(_kind)
for _result in ("committed", "failed", "timeout"):
    COMMITMENTS.labels(_result)


class JobStoreCollector(Collector):
    """Gauges read from the job store at scrape time: jobs per state, backlog, high water."""

    def __init__(self, counts: Callable[[], dict[str, int]], high_water: int) -> None:
        self.counts = counts
        self.high_water = high_water

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = self.counts()
        jobs = GaugeMetricFamily("ecg_dicom_jobs", "Jobs in the job store, by state", labels=["state"])
        for state, n in counts.items():
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("ecg_dicom_queue_backlog", "Jobs waiting or being processed",
                                value=counts.get("waiting", 0) + counts.get("processing", 0))
        yield GaugeMetricFamily("ecg_dicom_queue_high_water",
                                "Backlog at which new stores are answered Out of Resources", value=self.high_water)


def job_processed(created: float, delivering: bool) -> None:
    """A job's outputs are written: its processing latency; ``done`` unless it goes to PACS."""
    if created:
        PROCESSING_SECONDS.observe(max(0.0, time.time() - created))
    if not delivering:
        JOBS_FINISHED.labels("done").inc()


RECONSTRUCTIONS = Counter("ecg_dicom_reconstructions", "Reconstructions written, by record uncertainty against"
                          " the model's threshold", ["uncertainty"], registry=REGISTRY)


def record_uncertainty(uncertainty) -> None:
    """Count one written reconstruction by its record uncertainty (a
    :class:`ecg_dicom.core.uncertainty.RecordUncertainty`, or None without a variance head)."""
    if uncertainty is None:
        RECONSTRUCTIONS.labels("unavailable").inc()
    else:
        RECONSTRUCTIONS.labels("above_threshold" if uncertainty.above_threshold else "within").inc()


def quality_verdict(report) -> None:
    """Count one signal-quality verdict (a :class:`ecg_dicom.core.quality.QualityReport`):
    once per raised flag, or once with flag ``none`` when the lead is ok."""
    for flag in report.flags or ():
        SIGNAL_QUALITY.labels(report.status, flag.code).inc()
    if not report.flags:
        SIGNAL_QUALITY.labels(report.status, "none").inc()


def accuracy_observed(device_model: str, figures: dict[str, dict]) -> None:
    """One record's accuracy figures ({lead: {"r": …, "rmse_uv": …}}) from a source of
    ``device_model`` (the monitor's label: a device, never a patient)."""
    for lead, values in figures.items():
        ACCURACY_R.labels(lead, device_model).observe(float(values["r"]))
        ACCURACY_RMSE.labels(lead, device_model).observe(float(values["rmse_uv"]))


def register_job_store(counts: Callable[[], dict[str, int]], high_water: int) -> JobStoreCollector:
    """Add (or replace) the job-store gauges of this process's registry."""
    for collector in list(getattr(REGISTRY, "_collector_to_names", {})):
        if isinstance(collector, JobStoreCollector):
            REGISTRY.unregister(collector)
    collector = JobStoreCollector(counts, high_water)
    REGISTRY.register(collector)
    return collector


def exposition() -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(REGISTRY)
