"""``ecg-dicom serve --config site.yaml``: the whole service, wired in one place.

Data flow::

    C-STORE SCP ──┐
                  ├─> spool + job store ─> worker (model, batched) ─> output/*.npy, *.dcm
    watch folder ─┘                                                   └─> delivery ─> PACS

SIGTERM / SIGINT, at any moment: stop accepting (listener closed, watcher stopped), let
open associations finish for a moment, let the worker finish its step (a short batch, or
one forward batch of a long input, which goes back to waiting) and the delivery its
association, then exit 0. Anything still in flight is in the job store and is picked up
at the next start. Should a thread still be busy after :data:`JOIN_S` (a PACS that does
not answer, a very slow disk), the process exits 0 at once rather than let the
interpreter tear down a thread that is inside torch (which aborts with ``terminate called
without an active exception``): its job, too, is resumed at the next start.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

import numpy as np
from pynetdicom import evt

from ecg_dicom import logsafe
from ecg_dicom import metrics
from ecg_dicom.config import Settings, load_config_or_report, log_effective
from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.leadchoice import model_leads
from ecg_dicom.errors import CheckpointError, ConfigError
from ecg_dicom.ingest import Spool
from ecg_dicom.ingest.scp import start_scp
from ecg_dicom.ingest.watcher import FolderWatcher
from ecg_dicom.inputs import QUALITY_LISTENERS
from ecg_dicom.service.accuracy import AccuracyMonitor
from ecg_dicom.service.lock import ServiceLock
from ecg_dicom.service.monitor import Monitor
from ecg_dicom.outputs import commitment
from ecg_dicom.outputs.pacs import Delivery
from ecg_dicom.queue import JobQueue
from ecg_dicom.report.background import PageRenderer
from ecg_dicom.service.worker import Worker

LOG = logging.getLogger("ecg_dicom.service")
DRAIN_S = 3.0        # how long open associations may go on after a stop request
JOIN_S = 5.0         # how long the worker / delivery may take to finish what they hold
SERVICE_THREADS = ("worker", "watcher", "delivery")
WARM_UP_FS = 500.0
# (5000,) µV: a 1 mV, 1.2 Hz sine, 10 s at 500 Hz; run once at start so the first job is not slow
WARM_UP_LEAD_UV = 1000.0 * np.sin(2 * np.pi * 1.2 * np.arange(5000) / WARM_UP_FS)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``serve``: 0 after a clean stop, 2 for a bad configuration."""
    settings = load_config_or_report(args.config, "serve")
    if settings is None:
        return 2
    setup_logging(settings.log_level)
    try:
        status = serve(settings)
    except (ConfigError, CheckpointError) as exc:
        LOG.error("cannot start: %s", exc)
        print(f"ecg-dicom serve: cannot start: {exc}", file=sys.stderr)
        return 2
    _exit_now_if_busy(status)
    return status


def _exit_now_if_busy(status: int) -> None:
    """Exit with ``status`` at once (no interpreter teardown) when a service thread is still
    running: tearing down a thread that is inside torch aborts the process."""
    busy = [t.name for t in threading.enumerate() if t.name in SERVICE_THREADS and t.is_alive()]
    if busy:
        LOG.info("exiting now although %s is still busy: its work is resumed at the next start", ", ".join(busy))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def setup_logging(level: str) -> None:
    """One line per event on stderr, every line through the one safe formatter
    (:mod:`ecg_dicom.logsafe`: wire values escaped, patient data never logged)."""
    logsafe.install(level, sys.stderr)
    # pynetdicom warns twice about one non-conformant UID in a request: once is enough
    logging.getLogger("pynetdicom").addFilter(RepeatFilter(window_s=5.0))


class RepeatFilter(logging.Filter):
    """Drops a record whose message was already logged (among the last ``remember`` ones;
    within ``window_s`` seconds of it, when given)."""

    def __init__(self, remember: int = 1000, window_s: float | None = None) -> None:
        super().__init__()
        self.remember, self.window_s = remember, window_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        with self._lock:
            last = self._seen.pop(message, None)
            self._seen[message] = record.created
            if len(self._seen) > self.remember:
                del self._seen[next(iter(self._seen))]
        return last is None or (self.window_s is not None and record.created - last > self.window_s)


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run the service until ``stop`` is set (by SIGTERM/SIGINT when run from the CLI)."""
    stop = stop or threading.Event()
    restore_signals = _install_signal_handlers(stop)
    try:
        return _serve(settings, stop)
    finally:
        restore_signals()


def _serve(settings: Settings, stop: threading.Event) -> int:
    log_effective(settings, LOG)
    lock = ServiceLock(settings.folders.work)
    lock.acquire({"ae_title": settings.ae_title, "listen": f"{settings.listen.host}:{settings.listen.port}",
                  "config": str(settings.source or "")})
    try:
        return _serve_locked(settings, stop)
    finally:
        lock.release()


def _serve_locked(settings: Settings, stop: threading.Event) -> int:
    folders = settings.folders
    # matplotlib (the report page) keeps its font cache in the work folder: never in $HOME or /tmp
    os.environ.setdefault("MPLCONFIGDIR", str(folders.work / "matplotlib"))

    # durable state first: interrupted jobs back to waiting, orphaned spool files recorded
    queue = JobQueue(folders.queue_db)
    spool = Spool(folders.spool, queue)
    requeued = queue.recover()
    recovered, removed = spool.recover()
    LOG.info("job store %s: %d interrupted jobs requeued, %d spool files recovered, %d leftovers removed; %s",
             folders.queue_db, requeued, recovered, removed, _counts_text(queue.counts()))

    models = {}
    for lead in model_leads(settings.input_lead):  # input_lead auto: one model per lead it may choose
        model = Reconstructor.from_checkpoint(settings.checkpoint, input_lead=lead, device=settings.device,
                                              precision=settings.precision, threads=settings.torch_threads)
        n_in = len(model.input_leads)  # the two-lead model takes (2, N)
        warm_up = WARM_UP_LEAD_UV if n_in == 1 else np.tile(WARM_UP_LEAD_UV, (n_in, 1))
        model.reconstruct(warm_up, WARM_UP_FS)  # first call pays the runtime's lazy set-up
        LOG.info("model %s loaded (input lead %s, %s on %s, %d threads)", model.model_version,
                 model.input_lead, model.precision, settings.device, settings.torch_threads)
        models[lead] = model
    reconstructor = next(iter(models.values()))
    # the model card's figures hold for the shipped models only: a site's own checkpoint is measured, not judged
    accuracy = AccuracyMonitor(queue, settings.accuracy_monitor, card=None if settings.checkpoint is None else {})
    accuracy.check()  # the figures kept before this start count

    # the page is drawn in a child process, beside the worker's other writes
    pages = PageRenderer().start() if settings.report.enabled else None
    if pages is not None:
        LOG.info("report pages drawn in a separate process (pid %s)", ", ".join(map(str, pages.pids())) or "none")

    # the pipeline: ingest -> queue -> worker -> outputs (-> delivery)
    worker = Worker(queue, spool, reconstructor, folders, settings.worker, deliver=settings.pacs is not None,
                    limits=settings.limits,
                    report_paper=settings.report.paper if settings.report.enabled else None,
                    input_lead=settings.input_lead, models=models, accuracy=accuracy,
                    deliver_complete=settings.deliver_when_source_complete, pages=pages)
    delivery = (Delivery(queue, settings.pacs, folders, settings.ae_title, settings.worker.batch_size)
                if settings.pacs else None)
    watcher = FolderWatcher(folders.watch, spool, settings.watcher, folders.rejected,
                            high_water=settings.limits.queue_high_water)
    work_stop = threading.Event()
    threads = [threading.Thread(target=worker.run, args=(work_stop,), name="worker", daemon=True),
               threading.Thread(target=watcher.run, name="watcher", daemon=True)]
    if delivery:
        threads.append(threading.Thread(target=delivery.run, args=(work_stop,), name="delivery", daemon=True))
    extra = []
    if delivery is not None and settings.pacs.storage_commitment:  # reports come to our listener
        extra.append((evt.EVT_N_EVENT_REPORT, commitment.handle_event_report, [delivery.commitment_report]))
    try:
        ae, server = start_scp(settings, spool, extra)
    except OSError as exc:
        raise ConfigError(f"listen: cannot listen on {settings.listen.host}:{settings.listen.port}: "
                          f"{exc.strerror or exc}") from exc
    monitor = (_start_monitor(settings, queue, server, threads[0], worker, spool, delivery, accuracy)
               if settings.http else None)
    for t in threads:
        t.start()
    LOG.info("service ready")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        LOG.info("stopping: no longer accepting")
        if monitor is not None:
            monitor.stop()
        server.shutdown()
        watcher.stop()
        deadline = time.monotonic() + DRAIN_S
        while ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        ae.shutdown()  # aborts what is still open: an un-acked store is resent by its sender
        work_stop.set()
        deadline = time.monotonic() + JOIN_S
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        unfinished = [t.name for t in threads if t.is_alive()]
        if pages is not None:
            pages.close()
        counts = queue.counts()
        LOG.info("stopped%s; %s", f" ({', '.join(unfinished)} still busy, resumed at next start)"
                 if unfinished else "", _counts_text(counts))
    return 0


def _start_monitor(settings: Settings, queue: JobQueue, server, worker: threading.Thread, work: Worker,
                   spool: Spool, delivery: Delivery | None, accuracy: AccuracyMonitor | None = None) -> Monitor:
    """``/health`` (listener, worker, job store, storage; degraded while PACS delivery fails or
    the accuracy monitor finds the reconstructions below the model card) and ``/metrics`` on
    ``settings.http``. ``storage``: the job store commits, and neither the worker's outputs nor
    the last input spooled failed to be written (a full disk makes the service not ready until
    space returns)."""
    metrics.register_job_store(queue.counts, settings.limits.queue_high_water)
    if metrics.quality_verdict not in QUALITY_LISTENERS:  # the gate's verdicts on /metrics
        QUALITY_LISTENERS.append(metrics.quality_verdict)
    checks = {
        "listener": lambda: server.thread.is_alive() and server.socket.fileno() != -1,
        "worker": worker.is_alive,
        "job_store": lambda: isinstance(queue.counts(), dict),
        "storage": lambda: work.storage_ok and spool.writable() and queue.writable(),
    }
    try:
        concerns = {"pacs": delivery.concern} if delivery is not None else {}
        return Monitor(settings.http.host, settings.http.port, checks, concerns,
                       degraded=accuracy.degraded if accuracy is not None else None).start()
    except OSError as exc:
        server.shutdown()
        raise ConfigError(f"http: cannot listen on {settings.http.host}:{settings.http.port}: "
                          f"{exc.strerror or exc}") from exc


def _install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop`` (main thread only); returns a function restoring the old ones."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        LOG.info("signal %s received", signal.Signals(signum).name)
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore


def _counts_text(counts: dict[str, int]) -> str:
    return " ".join(f"{state}={n}" for state, n in counts.items())
