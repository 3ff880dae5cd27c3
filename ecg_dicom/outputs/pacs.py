"""Delivery of results to PACS: :class:`Delivery` sends each job to every destination
configured (this module's C-STORE SCU, :mod:`ecg_dicom.outputs.dicomweb`'s STOW-RS, or both)
and retries or dead-letters it; with ``pacs.storage_commitment`` a C-STOREd job is done only
when the PACS commits it (:mod:`ecg_dicom.outputs.commitment`).

C-STORE: the running service keeps its association
open between batches and releases it after ``IDLE_RELEASE_S`` without work (a new
association per result cost a round of A-ASSOCIATE negotiation each time).

What a status means (dicom-notes, "SCU"):

=============================================  ==========  =================================
result                                         outcome     action
=============================================  ==========  =================================
0x0000 Success                                 delivered   job done
0xB000 / 0xB006 / 0xB007 Warning               delivered   job done, warning logged
0xA7xx Out of resources                        transient   retry with backoff
empty status (timeout, abort), no connection   transient   retry with backoff
association rejected, transient (result 2)     transient   retry with backoff
0xA9xx, 0xCxxx, 0x0122, other failures         permanent   dead-letter folder + reason file
association rejected, permanent (result 1)     permanent   dead-letter folder + reason file
no presentation context for the SOP class      permanent   dead-letter folder + reason file
=============================================  ==========  =================================

Nothing is marked delivered without a Success or Warning status. Retries are scheduled in
the job store (so they survive restarts) after ``retry_initial_s * 2**(attempts)`` seconds,
capped at ``retry_max_s``, times a jitter in [0.5, 1]; a job still undelivered
``give_up_after_s`` after its results were written is dead-lettered. Output UIDs are
deterministic, so sending an instance again after a crash does not make a second copy.

Logging while the PACS fails (one line per change, not per attempt): a job's first failed
attempt is a WARNING, its further attempts DEBUG; every :data:`SUMMARY_S` seconds with
failures a WARNING sums them up (attempts, jobs, the last reason, jobs awaiting delivery);
the first delivery after failures says the PACS takes results again. pynetdicom's own ERROR
lines for a failed association request (two to five per attempt) are dropped: the reason
is in ours (see :class:`_RequestFailures`).
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from typing import Callable, Sequence

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from ecg_dicom import metrics
from ecg_dicom.config import Folders, Pacs
from ecg_dicom.dicom.codes import OUTPUT_SOP_CLASSES
from ecg_dicom.dicom.network import LOW_LATENCY_HANDLERS
from ecg_dicom.files import write_reason
from ecg_dicom.logsafe import uid_hash
from ecg_dicom.outputs import commitment
from ecg_dicom.outputs.destination import Destination, Outcome, dicom_results, summary
from ecg_dicom.memory import release_freed_memory
from ecg_dicom.queue import Job, JobQueue
from ecg_dicom.tls import client_context

LOG = logging.getLogger("ecg_dicom.pacs")
WARNING_STATUSES = (0xB000, 0xB006, 0xB007)
REJECTED_PERMANENT = 1
ERROR_PAUSE_S = 5.0
IDLE_RELEASE_S = 2.0  # an association kept open for the next results is released after this long unused
SUMMARY_S = 60.0      # while deliveries fail: one summary line per this many seconds


class _RequestFailures(logging.Filter):
    """Drops pynetdicom's ERROR lines about an association *we* requested that failed
    (connection refused, A-ASSOCIATE-RJ: only the delivery requests associations) and keeps
    the last one, for our own line about it."""

    PREFIXES = ("Association request failed", "TCP Initialisation Error", "Association Rejected", "Result: ",
                "Reason: ")

    def __init__(self) -> None:
        super().__init__()
        self.last = ""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.ERROR and message.startswith(self.PREFIXES):
            if message.startswith(("TCP Initialisation Error", "Reason: ")):
                self.last = message
            return False
        return True


REQUEST_FAILURES = _RequestFailures()


def classify_status(status: Dataset | None) -> tuple[Outcome, str]:
    """Outcome of one C-STORE response (``None`` or empty: no response) and a short text."""
    code = getattr(status, "Status", None) if status is not None else None
    if code is None:
        return Outcome.TRANSIENT, "no response (timeout or abort)"
    code = int(code)
    text = f"status 0x{code:04X}"
    if code == 0x0000:
        return Outcome.DELIVERED, text
    if code in WARNING_STATUSES:
        return Outcome.DELIVERED, f"{text} (warning)"
    if 0xA700 <= code <= 0xA7FF:
        return Outcome.TRANSIENT, f"{text} (out of resources)"
    return Outcome.PERMANENT, f"{text} (failure)"


def backoff_s(attempts: int, pacs: Pacs, rng: random.Random) -> float:
    """Seconds to wait before the next try after ``attempts`` failed tries (>= 1)."""
    base = min(pacs.retry_max_s, pacs.retry_initial_s * 2.0 ** (attempts - 1))
    return base * rng.uniform(0.5, 1.0)


class CStore:
    """C-STORE to the configured peer over one association per batch (kept open between
    batches while results keep coming); with ``pacs.storage_commitment`` each stored job is
    then asked to be committed (N-ACTION) and waits for the report.

    Parameters
    ----------
    queue : the job store (a commitment request is recorded there before it is sent).
    pacs : the peer, its timeouts and TLS.
    folders : where the results are.
    ae_title : our calling AE title.
    on_report : where a storage commitment report arriving on this association goes.
    """

    key = "dicom"

    def __init__(self, queue: JobQueue, pacs: Pacs, folders: Folders, ae_title: str,
                 on_report: Callable[[commitment.Report], None]) -> None:
        self.queue = queue
        self.pacs = pacs
        self.folders = folders
        self.label = str(pacs.ae_title)
        self.ae = AE(ae_title=ae_title)
        for uid in OUTPUT_SOP_CLASSES:
            self.ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        if pacs.storage_commitment:
            self.ae.add_requested_context(commitment.StorageCommitmentPushModel,
                                          [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = pacs.timeout_s
        self.ae.connection_timeout = pacs.timeout_s
        # DICOM TLS: the PACS's certificate checked against pacs.tls.ca and its host name
        self.tls_args = (client_context(pacs.tls), pacs.host) if pacs.tls is not None else None
        # a PACS may send the commitment report on the association the request came on
        self.handlers = [(evt.EVT_N_EVENT_REPORT, commitment.handle_event_report, [on_report]), *LOW_LATENCY_HANDLERS]
        self._open = None  # the association kept open between batches, and when it was last used
        self._last_used = 0.0

    def idle(self, seconds: float) -> bool:
        return self._open is not None and time.monotonic() - self._last_used > seconds

    def release(self) -> None:
        """Release the association kept open, if any."""
        assoc, self._open = self._open, None
        if assoc is not None and assoc.is_established:
            assoc.release()

    def send(self, jobs: Sequence[Job], keep_open: bool) -> dict[int, tuple[Outcome, str]]:
        """One association for ``jobs`` (the one kept open, while it still is, else a new one)."""
        assoc, self._open = self._open, None
        if assoc is None or not assoc.is_established:
            assoc = self.ae.associate(self.pacs.host, self.pacs.port, ae_title=self.pacs.ae_title,
                                      tls_args=self.tls_args, evt_handlers=self.handlers)
        if not assoc.is_established:
            if assoc.is_rejected and getattr(assoc.acceptor.primitive, "result", None) == REJECTED_PERMANENT:
                reason = "association rejected permanently by PACS (check AE titles / PACS config)"
                return {job.id: (Outcome.PERMANENT, reason) for job in jobs}
            what = "rejected (transient)" if assoc.is_rejected else "not established (refused, timeout or abort)"
            return {job.id: (Outcome.TRANSIENT, f"association {what}") for job in jobs}
        results: dict[int, tuple[Outcome, str]] = {}
        try:
            for job in jobs:
                outcome, text = self._send_job(assoc, job)
                if sum(name.endswith(".dcm") for name in job.outputs) > 3:  # a split result: ~110 for an hour
                    release_freed_memory()
                if outcome is Outcome.DELIVERED and self.pacs.storage_commitment:
                    outcome, text = self._request_commitment(assoc, job, text)
                results[job.id] = (outcome, text)
        finally:
            if keep_open and assoc.is_established:
                self._open, self._last_used = assoc, time.monotonic()
            elif assoc.is_established:
                assoc.release()
        return results

    def _request_commitment(self, assoc, job: Job, stored: str) -> tuple[Outcome, str]:
        """N-ACTION for the job's instances, recorded first (the report may come at once)."""
        instances = []
        for name in dicom_results(job):
            try:
                ds = dcmread(self.folders.output / name, stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID"])
            except (OSError, InvalidDicomError) as exc:
                return Outcome.PERMANENT, f"result file {name} unreadable: {exc}"
            instances.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        if not instances:
            return Outcome.DELIVERED, stored
        uid = commitment.new_transaction_uid()
        self.queue.await_commitment(job.id, uid, [i for _, i in instances],
                                    time.time() + self.pacs.commitment_timeout_s)
        try:
            accepted, text = commitment.send_request(assoc, uid, instances)
        except (ValueError, RuntimeError) as exc:  # no context for it / association lost
            return Outcome.TRANSIENT, f"storage commitment request not sent ({exc})"
        return (Outcome.PENDING if accepted else Outcome.TRANSIENT), f"{stored}; {text}"

    def _send_job(self, assoc, job: Job) -> tuple[Outcome, str]:
        """C-STORE every DICOM output of ``job`` (the waveform object(s) and the report's PDF
        object); the job's outcome is its worst file's, so it is delivered only when all are."""
        worst, texts = Outcome.DELIVERED, []
        for name in (n for n in job.outputs if n.endswith(".dcm")):
            if not assoc.is_established:
                return Outcome.TRANSIENT, "association lost"
            try:
                ds = dcmread(self.folders.output / name)
            except (OSError, InvalidDicomError) as exc:
                return Outcome.PERMANENT, f"result file {name} unreadable: {exc}"
            try:
                status = assoc.send_c_store(ds)
            except ValueError as exc:  # no accepted presentation context for this SOP class
                return Outcome.PERMANENT, f"PACS does not accept it: {exc}"
            except RuntimeError:  # aborted (e.g. a timeout) between the check above and the send
                return Outcome.TRANSIENT, "association lost"
            outcome, text = classify_status(status)
            texts.append(text)
            if outcome is Outcome.PERMANENT:
                return outcome, text
            if outcome is Outcome.TRANSIENT:
                worst = outcome
            elif "warning" in text:
                LOG.warning("%s: PACS answered %s, counted as delivered", job.tag, text)
        return worst, summary(texts) or "no DICOM output"


class Delivery:
    """Delivers the DICOM results of ``delivering`` jobs to every configured destination
    (C-STORE peer, STOW-RS endpoint, or both); run :meth:`run` in a thread. A job is done
    when every destination holds its results (committed, with storage commitment).

    Parameters
    ----------
    queue : the job store (jobs in ``delivering``, with their next attempt time).
    pacs : where to send and how hard to try.
    folders : output (where the results are) and dead-letter folders.
    ae_title : our calling AE title.
    batch_size : jobs per association / per round.
    """

    def __init__(self, queue: JobQueue, pacs: Pacs, folders: Folders, ae_title: str, batch_size: int) -> None:
        self.queue = queue
        self.pacs = pacs
        self.folders = folders
        self.batch_size = batch_size
        self.rng = random.Random()
        self._lock = threading.Lock()  # a job settled by this thread or by a commitment report, not both
        # failing since (Unix time), failed attempts, last reason; None while delivery works.
        # Written by the delivery thread, read by /health (one tuple: replaced whole).
        self._failing: tuple[float, int, str] | None = None
        for name in ("pynetdicom.transport", "pynetdicom.acse"):
            if REQUEST_FAILURES not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(REQUEST_FAILURES)
        # failures since the last summary: attempts, jobs, the last reason; when the last summary was
        self._failed_attempts, self._failed_jobs, self._last_reason = 0, set(), ""
        self._summary_at = time.monotonic()
        self.destinations: list[Destination] = []
        if pacs.cstore:
            self.destinations.append(CStore(queue, pacs, folders, ae_title, self.commitment_report))
        if pacs.dicomweb is not None:
            from ecg_dicom.outputs.dicomweb import StowRs  # requests + dicomweb-client only when used
            self.destinations.append(StowRs(pacs, folders))

    def run(self, stop: threading.Event) -> None:
        """Deliver due jobs until ``stop`` is set; the association in hand is finished first."""
        try:
            while not stop.is_set():
                try:
                    self._summarise()
                    jobs = self.queue.due(time.time(), self.batch_size)
                    if jobs:
                        self.deliver(jobs, keep_open=True)
                        continue
                except Exception:  # job store or dead-letter folder failing: keep going, jobs stay recorded
                    LOG.exception("delivery error; pausing")
                    self._release()
                    stop.wait(ERROR_PAUSE_S)
                    continue
                for destination in self.destinations:
                    if destination.idle(IDLE_RELEASE_S):
                        destination.release()
                held = any(destination.idle(0.0) for destination in self.destinations)
                nxt = self.queue.next_due()
                wait = 1.0 if nxt is None else min(1.0, max(0.05, nxt - time.time()))
                self.queue.wait_for_delivery(min(wait, IDLE_RELEASE_S) if held else wait)
        finally:
            self._release()

    def _release(self) -> None:
        for destination in self.destinations:
            destination.release()

    def concern(self) -> str | None:
        """Why delivery is degraded (the PACS unreachable, refusing associations, out of
        resources: attempts failing since the first of them, none delivered), or None."""
        failing = self._failing
        if failing is None:
            return None
        since, attempts, reason = failing
        return (f"delivery to {self._where()} failing for {time.time() - since:.0f} s"
                f" ({attempts} failed attempts, none delivered since; last: {reason})")

    def _where(self) -> str:
        """Where results go, as an operator names it: ``PACS at host:104`` (and/or STOW-RS URL)."""
        return self.pacs.describe().replace("@", " at ")

    def _failed(self, reason: str) -> None:
        """One failed attempt that says the PACS is not taking results (not one object's fault)."""
        failing = self._failing
        if failing is None:
            LOG.warning("delivery to %s degraded: %s", self._where(), reason)
            self._failing = (time.time(), 1, reason)
        else:
            self._failing = (failing[0], failing[1] + 1, reason)

    def _succeeded(self) -> None:
        failing, self._failing = self._failing, None
        if failing is not None:
            LOG.info("delivery to %s works again after %.0f s (%d failed attempts)", self._where(),
                     time.time() - failing[0], failing[1])

    def deliver(self, jobs: list[Job], keep_open: bool = False) -> None:
        """Send ``jobs`` wherever they are still missing; each job ends delivered, awaiting its
        storage commitment report, retried later, or dead. ``keep_open``: keep connections for
        the next call instead of releasing them."""
        fresh = []
        for job in jobs:
            if job.commitment is not None:  # due again with its report still missing
                with self._lock:
                    current = self.queue.find(job.id)
                    if current is not None and current.state == "delivering" and current.commitment is not None:
                        metrics.COMMITMENTS.labels("timeout").inc()
                        self._retry(current, f"no storage commitment report within {self.pacs.commitment_timeout_s:g} s")
            else:
                fresh.append(job)
        results: dict[int, list[tuple[Destination, Outcome, str]]] = {job.id: [] for job in fresh}
        for destination in self.destinations:
            todo = [job for job in fresh if destination.key not in job.delivered_to]
            if not todo:
                continue
            for job_id, (outcome, text) in destination.send(todo, keep_open).items():
                results[job_id].append((destination, outcome, text))
                if outcome is Outcome.DELIVERED:
                    self.queue.delivered_to(job_id, destination.key)
        for job in fresh:
            with self._lock:
                self._settle(job, results[job.id])

    def _settle(self, job: Job, results: list[tuple[Destination, Outcome, str]]) -> None:
        """The job's fate from what each destination answered this time (and before)."""
        current = self.queue.find(job.id)
        if current is None or current.state != "delivering":  # a commitment report settled it meanwhile
            return
        text = "; ".join(f"{d.label}: {t}" if len(self.destinations) > 1 else t for d, _, t in results)
        outcomes = {outcome for _, outcome, _ in results}
        if Outcome.PERMANENT in outcomes:
            self._dead(current, text)
        elif Outcome.TRANSIENT in outcomes:
            self._retry(current, text)
        elif all(d.key in current.delivered_to for d in self.destinations):
            self._finish(current, text or "already delivered")
        elif Outcome.PENDING in outcomes:
            LOG.info("%s stored at %s; awaiting its storage commitment report", job.tag, self.pacs.ae_title)

    def _finish(self, job: Job, text: str) -> None:
        self._succeeded()
        self.queue.delivered(job.id)
        metrics.JOBS_FINISHED.labels("done").inc()
        if job.created:
            metrics.DELIVERY_SECONDS.observe(max(0.0, time.time() - job.created))
        LOG.info("%s delivered to %s (%s)", job.tag, self.pacs.describe(), text)

    def commitment_report(self, report: commitment.Report) -> None:
        """A storage commitment report (from our listener, or on the delivery association):
        the job is delivered to the C-STORE peer when every instance asked for is committed,
        else retried."""
        with self._lock:
            job = self.queue.awaiting_commitment(report.transaction_uid)
            if job is None:
                LOG.warning("storage commitment report for transaction %s: no job awaits it (late, or "
                            "answered already); ignored", uid_hash(report.transaction_uid))
                return
            asked = list(job.commitment["instances"])
            failed = dict(report.failed)
            missing = [uid for uid in asked if uid not in set(report.committed) and uid not in failed]
            if failed or missing:
                metrics.COMMITMENTS.labels("failed").inc()
                reasons = summary([commitment.reason_text(code) for code in failed.values()]
                                  + ["not in the report"] * len(missing))
                self._retry(job, f"storage commitment failed for {len(failed) + len(missing)} of {len(asked)} "
                                 f"instance(s): {reasons}")
                return
            if not self.queue.committed(job.id, report.transaction_uid):
                return
            metrics.COMMITMENTS.labels("committed").inc()
            self.queue.delivered_to(job.id, CStore.key)
            job = self.queue.get(job.id)
            LOG.info("%s: %d instance(s) committed by %s", job.tag, len(asked), self.pacs.ae_title)
            if all(d.key in job.delivered_to for d in self.destinations):
                self._finish(job, f"{len(asked)} committed")

    def _retry(self, job: Job, reason: str) -> None:
        metrics.PACS_FAILURES.labels("transient").inc()
        self._failed(reason)
        attempts = job.attempts + 1
        since = job.deliver_since or time.time()
        if time.time() - since > self.pacs.give_up_after_s:
            self._dead(job, f"gave up after {attempts} attempts over {time.time() - since:.0f} s: {reason}")
            return
        delay = backoff_s(attempts, self.pacs, self.rng)
        self.queue.retry_later(job.id, time.time() + delay, reason)
        detail = f"{reason}; {REQUEST_FAILURES.last}" if "not established" in reason and REQUEST_FAILURES.last \
            else reason
        self._failed_attempts += 1
        self._failed_jobs.add(job.id)
        self._last_reason = detail
        if attempts == 1:   # the job's change of state: from delivering to retrying
            LOG.warning("%s: delivery failed (%s); retried with backoff (up to %g s apart) until delivered or "
                        "dead-lettered after %g s", job.tag, detail, self.pacs.retry_max_s, self.pacs.give_up_after_s)
        else:
            LOG.debug("%s: delivery attempt %d failed (%s); next in %.1f s", job.tag, attempts, detail, delay)

    def _summarise(self) -> None:
        """While deliveries fail: one WARNING per SUMMARY_S seconds instead of one per attempt."""
        now = time.monotonic()
        if now - self._summary_at < SUMMARY_S:
            return
        if self._failed_attempts:
            waiting = self.queue.counts().get("delivering", 0)
            LOG.warning("delivery to %s failing: %d attempts for %d jobs failed in the last %.0f s (last: %s); %d "
                        "jobs awaiting delivery", self.pacs.describe(), self._failed_attempts, len(self._failed_jobs),
                        now - self._summary_at, self._last_reason, waiting)
        self._failed_attempts, self._failed_jobs = 0, set()
        self._summary_at = now

    def _dead(self, job: Job, reason: str) -> None:
        """Copy the job's DICOM results to the dead-letter folder with a reason file."""
        folder = self.folders.dead_letter
        folder.mkdir(parents=True, exist_ok=True)
        for name in (n for n in job.outputs if n.endswith(".dcm")):
            src = self.folders.output / name
            if src.exists():
                shutil.copy2(src, folder / name)
        write_reason(folder, job.result_stem, reason)
        self.queue.dead(job.id, reason)
        metrics.PACS_FAILURES.labels("permanent").inc()
        metrics.JOBS_FINISHED.labels("dead_lettered").inc()
        LOG.error("%s dead-lettered: %s", job.tag, reason)
