"""C-STORE SCP: ECG carts and PACS send us waveform objects over DICOM.

Only the ECG waveform SOP classes (plus Verification) get a presentation context, so an
image is refused at association time. The store handler does no decoding and no model
work: it writes the encoded dataset to the spool durably, records the job, and only then
answers Success. Validation and inference happen later in the worker.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Any

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from ecg_dicom.config import Settings
from ecg_dicom.dicom.codes import ECG_WAVEFORM_SOP_CLASSES
from ecg_dicom.ingest import Spool

LOG = logging.getLogger("ecg_dicom.scp")
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     ExplicitVRBigEndian]

# Status codes we answer (PS3.4 Annex B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700


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
    if settings.allowed_callers is not None:
        ae.require_calling_aet = list(settings.allowed_callers)
    ae.require_called_aet = True
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = ae.dimse_timeout = settings.listen.timeout_s
    ae.network_timeout = settings.listen.timeout_s
    return ae


def handle_store(event: evt.Event, spool: Spool, counter: StoreCounter) -> int:
    """EVT_C_STORE: write the encoded dataset durably, record the job, then answer Success."""
    uid = str(event.request.AffectedSOPInstanceUID or "instance")
    try:
        data = event.encoded_dataset(include_meta=True)
        job_id = spool.store_bytes(data, f"{uid}.dcm", origin="scp")
    except (OSError, sqlite3.Error) as exc:
        LOG.error("store from %s not accepted: cannot spool it (%s)", _caller(event.assoc), exc)
        # Failed - Out of Resources (disk full, I/O error, queue unavailable): the sender retries
        return OUT_OF_RESOURCES
    counter.add(event.assoc)
    LOG.info("job %d accepted from %s (%d bytes)", job_id, _caller(event.assoc), len(data))
    return SUCCESS


def handle_echo(event: evt.Event) -> int:
    """EVT_C_ECHO: Success."""
    return SUCCESS


def handle_end(event: evt.Event, counter: StoreCounter) -> None:
    """EVT_RELEASED / EVT_ABORTED: the audit line of the association."""
    how = "released" if event.event is evt.EVT_RELEASED else "aborted"
    LOG.info("audit: association %s from %s, %d stored", how, _caller(event.assoc), counter.pop(event.assoc))


def handle_rejected(event: evt.Event) -> None:
    """EVT_REJECTED: the audit line of a refused association."""
    primitive = event.assoc.requestor.primitive
    called = getattr(primitive, "called_ae_title", "?")
    LOG.warning("audit: association refused from %s (called AE %r)", _caller(event.assoc), called)


def start_scp(settings: Settings, spool: Spool) -> tuple[AE, ThreadedAssociationServer]:
    """Start listening on ``settings.listen`` (non-blocking); returns the AE and its server."""
    ae = build_ae(settings)
    counter = StoreCounter()
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handle_store, [spool, counter]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_RELEASED, handle_end, [counter]),
        (evt.EVT_ABORTED, handle_end, [counter]),
        (evt.EVT_REJECTED, handle_rejected),
    ]
    server = ae.start_server((settings.listen.host, settings.listen.port), block=False, evt_handlers=handlers)
    LOG.info("listening as %s on %s:%d", settings.ae_title, settings.listen.host, settings.listen.port)
    return ae, server


def _caller(assoc: Association) -> str:
    """'AE@address:port' of the peer (AE titles are equipment names, not patient data)."""
    req = assoc.requestor
    return f"{(req.ae_title or '?').strip()}@{req.address}:{req.port}"
