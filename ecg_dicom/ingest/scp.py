"""C-STORE SCP: ECG carts and PACS send us waveform objects over DICOM.

Only the ECG waveform SOP classes (plus Verification) get a presentation context, so an
image is refused at association time. Who may connect, and for how long before sending
its request, is decided by :mod:`ecg_dicom.ingest.guard` (DICOM TLS too). The store handler
does no decoding and no model work: it refuses a data set beyond ``limits`` (failure
0xC001 with a reason in Error Comment) and answers Out of Resources (0xA700, the sender
retries later) while the backlog is at ``limits.queue_high_water``; otherwise it writes
the encoded data set to the spool durably, records the job, and only then answers
Success. Validation and inference happen later in the worker.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any

from pydicom import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification
from pynetdicom.transport import ThreadedAssociationServer

from ecg_dicom import metrics
from ecg_dicom.config import Settings
from ecg_dicom.dicom.codes import ECG_WAVEFORM_SOP_CLASSES
from ecg_dicom.dicom.network import LOW_LATENCY_HANDLERS
from ecg_dicom.errors import InputError
from ecg_dicom.ingest import Spool
from ecg_dicom.ingest.guard import Admission, GuardedServer, caller_text
from ecg_dicom.limits import Limits, check_inflated_size, check_input_bytes
from ecg_dicom.tls import server_context

LOG = logging.getLogger("ecg_dicom.scp")
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     ExplicitVRBigEndian]

# Status codes we answer (PS3.4 Annex B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
TOO_LARGE = 0xC001  # Error: Cannot understand (the data set is beyond this service's limits)
BACKPRESSURE_LOG_S = 10.0  # at most one back-pressure warning per this many seconds


class StoreCounter:
    """Instances stored per association, for the audit line written when it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}

    def add(self, assoc: Association) -> None:
        with self._lock:
            self._counts[id(assoc)] = self._counts.get(id(assoc), 0) + 1

    def pop(self, assoc: Association) -> int:
        with self._lock:
            return self._counts.pop(id(assoc), 0)


def build_ae(settings: Settings) -> AE:
    """The listening AE: ECG waveform contexts + Verification, caller and called AE checks."""
    ae = AE(ae_title=settings.ae_title)
    for uid in ECG_WAVEFORM_SOP_CLASSES:
        ae.add_supported_context(uid, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    if commitment_reports(settings):
        # the PACS sends its storage commitment report (N-EVENT-REPORT) on a new association,
        # in the SCP role of the SOP class (role selection), we in the SCU role
        ae.add_supported_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                                 scu_role=False, scp_role=True)
    callers = allowed_callers(settings)
    if callers is not None:
        ae.require_calling_aet = list(callers)
    ae.require_called_aet = True
    # associations are counted by the Admission (see guard.py); pynetdicom's own count includes
    # the pending connections (and those being closed), so it is set where it never bites first
    ae.maximum_associations = settings.max_associations + 2 * settings.listen.max_pending + 16
    # before the A-ASSOCIATE-RQ (ARTIM): short; afterwards a message must be complete within the
    # DIMSE timeout, and an association on which nothing arrives is aborted after idle_timeout_s
    ae.acse_timeout = settings.listen.handshake_timeout_s
    ae.dimse_timeout = settings.listen.timeout_s
    ae.network_timeout = settings.listen.idle_timeout_s
    return ae


def commitment_reports(settings: Settings) -> bool:
    """True when the PACS sends storage commitment reports to this listener."""
    return settings.pacs is not None and settings.pacs.storage_commitment


def allowed_callers(settings: Settings) -> tuple[str, ...] | None:
    """``allowed_callers``, plus the PACS's AE title when it sends commitment reports."""
    callers = settings.allowed_callers
    if callers is not None and commitment_reports(settings) and settings.pacs.ae_title not in callers:
        callers = (*callers, settings.pacs.ae_title)
    return callers


class StoreGate:
    """What the store handler checks before spooling: size limits and back-pressure."""

    def __init__(self, spool: Spool, limits: Limits, admission: Admission) -> None:
        self.spool = spool
        self.limits = limits
        self.admission = admission
        self._last_warning = 0.0
        self._lock = threading.Lock()

    def refusal(self, event: evt.Event, data: bytes | None) -> tuple[int, str, str] | None:
        """(status, metric label, reason) to answer instead of storing, or None to store
        (the backlog is checked by :meth:`ecg_dicom.ingest.Spool.admit`, with the store)."""
        received = self.admission.take_oversize(event.assoc)
        if received is not None:
            return TOO_LARGE, "too_large", (f"data set over {self.limits.max_input_bytes} bytes "
                                            "(limits.max_input_bytes)")
        if data is not None:
            try:
                check_input_bytes(len(data), self.limits)
                if event.context.transfer_syntax == DeflatedExplicitVRLittleEndian:
                    check_inflated_size(data, self.limits)
            except InputError as exc:
                return TOO_LARGE, "corrupt" if "corrupt" in str(exc) else "too_large", str(exc)
        return None

    def backpressure(self) -> tuple[int, str, str]:
        """The answer while the backlog is at the high-water mark (one warning per BACKPRESSURE_LOG_S)."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_warning >= BACKPRESSURE_LOG_S:
                self._last_warning = now
                LOG.warning("back-pressure: %d jobs waiting (limits.queue_high_water %d): stores answered "
                            "0xA700 Out of Resources until the backlog is below it", self.spool.queue.backlog(),
                            self.limits.queue_high_water)
        return OUT_OF_RESOURCES, "queue_full", "queue full: retry later"


def handle_store(event: evt.Event, spool: Spool, counter: StoreCounter, gate: StoreGate | None = None) -> Any:
    """EVT_C_STORE: check size and backlog, write the encoded dataset durably, record the
    job, then answer Success."""
    started = time.perf_counter()
    if gate is not None:
        gate.admission.store_started(event.assoc)
    try:
        return _store(event, spool, counter, gate)
    finally:
        if gate is not None:
            gate.admission.store_finished(event.assoc)
        metrics.STORE_SECONDS.observe(time.perf_counter() - started)


def _store(event: evt.Event, spool: Spool, counter: StoreCounter, gate: StoreGate | None) -> Any:
    uid = str(event.request.AffectedSOPInstanceUID or "instance")
    with spool.admit(gate.limits.queue_high_water if gate is not None else None) as admitted:
        return _admitted_store(event, spool, counter, gate, uid, admitted)


def _admitted_store(event: evt.Event, spool: Spool, counter: StoreCounter, gate: StoreGate | None, uid: str,
                    admitted: bool) -> Any:
    refusal = gate.refusal(event, None) if gate is not None else None
    if refusal is None and not admitted and gate is not None:
        refusal = gate.backpressure()
    data = b""
    if refusal is None:
        data = event.encoded_dataset(include_meta=False)
        refusal = gate.refusal(event, data) if gate is not None else None
    if refusal is not None:
        status, label, reason = refusal
        metrics.STORES.labels(label).inc()
        if status != OUT_OF_RESOURCES:
            LOG.warning("store from %s refused (0x%04X): %s", caller_text(event.assoc), status, reason)
        return _status(status, reason)
    was_failing = spool.failing
    try:
        data = event.encoded_dataset(include_meta=True)
        job_id = spool.store_bytes(data, f"{uid}.dcm", origin="scp")
    except (OSError, sqlite3.Error) as exc:
        # one ERROR when spooling starts failing (disk full...), not one per store meanwhile
        LOG.log(logging.DEBUG if was_failing else logging.ERROR, "store from %s not accepted: cannot spool it "
                "(%s); stores are answered 0xA700 Out of Resources until it works again", caller_text(event.assoc), exc)
        metrics.STORES.labels("out_of_resources").inc()
        # Failed - Out of Resources (disk full, I/O error, queue unavailable): the sender retries
        return OUT_OF_RESOURCES
    if was_failing:
        LOG.info("stores are spooled again")
    counter.add(event.assoc)
    metrics.STORES.labels("success").inc()
    LOG.info("job %d accepted from %s (%d bytes)", job_id, caller_text(event.assoc), len(data))
    return SUCCESS


def _status(code: int, comment: str) -> Dataset:
    """A C-STORE response status with its (0000,0902) Error Comment (LO: 64 characters)."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def handle_echo(event: evt.Event) -> int:
    """EVT_C_ECHO: Success."""
    return SUCCESS


def handle_end(event: evt.Event, counter: StoreCounter) -> None:
    """EVT_RELEASED / EVT_ABORTED: the audit line of the association."""
    how = "released" if event.event is evt.EVT_RELEASED else "aborted"
    LOG.info("audit: association %s from %s, %d stored", how, caller_text(event.assoc), counter.pop(event.assoc))


def handle_rejected(event: evt.Event) -> None:
    """EVT_REJECTED: pynetdicom refused an association itself (the Admission checks first,
    so this is a backstop)."""
    LOG.warning("audit: association refused from %s by pynetdicom's checks", caller_text(event.assoc))


def start_scp(settings: Settings, spool: Spool,
              extra_handlers: list[Any] | None = None) -> tuple[AE, ThreadedAssociationServer]:
    """Start listening on ``settings.listen`` (non-blocking, TLS if configured); returns the
    AE and its server (a :class:`GuardedServer`, its :class:`Admission` as ``.admission``).
    ``extra_handlers``: more (event, handler[, args]) bindings (the storage commitment report)."""
    ae = build_ae(settings)
    counter = StoreCounter()
    listen = settings.listen
    admission = Admission(settings.ae_title, allowed_callers(settings), settings.max_associations,
                          listen.max_pending, settings.limits.max_input_bytes, listen.handshake_timeout_s,
                          listen.preempt_idle_s)
    gate = StoreGate(spool, settings.limits, admission)
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handle_store, [spool, counter, gate]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_RELEASED, handle_end, [counter]),
        (evt.EVT_ABORTED, handle_end, [counter]),
        (evt.EVT_REJECTED, handle_rejected),
        *LOW_LATENCY_HANDLERS,
        *admission.handlers(),
        *(extra_handlers or []),
    ]
    ssl_context = server_context(listen.tls) if listen.tls is not None else None
    server = ae.make_server((listen.host, listen.port), ssl_context=ssl_context, evt_handlers=handlers,
                            server_class=GuardedServer, admission=admission,
                            handshake_timeout_s=listen.handshake_timeout_s)
    thread = threading.Thread(target=server.serve_forever, name="listener", daemon=True)
    thread.start()
    ae._servers.append(server)  # so that ae.shutdown() stops it, as for ae.start_server()
    server.thread = thread
    LOG.info("listening as %s on %s:%d%s", settings.ae_title, listen.host, listen.port,
             " (DICOM TLS" + (", client certificates required)" if listen.tls.require_client_cert else ")")
             if listen.tls is not None else "")
    return ae, server
