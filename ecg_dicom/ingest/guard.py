"""Who the listener serves: connection and association admission, TLS, wire size.

pynetdicom alone counts every open TCP connection (and every association it is busy
refusing) against ``maximum_associations``, and keeps a silent connection for the full ACSE
timeout, so ten idle sockets lock every cart out. Here instead:

* a new connection is *pending* until its A-ASSOCIATE-RQ arrives; it must complete the TLS
  handshake (if any) and send the request within ``listen.handshake_timeout_s``; at most
  ``listen.max_pending`` connections may be pending, and a new one pushes out the oldest
  (a cart sends its request within milliseconds, an idle socket never does);
* only associations that passed the AE title checks take a slot; the slots are counted
  under one lock, so a burst admits exactly ``max_associations``;
* every refusal is logged with its reason and counted in
  ``ecg_dicom_association_refusals_total{reason=...}``;
* a PDU longer than we can have announced is refused before it is read, and a C-STORE data
  set growing past ``limits.max_input_bytes`` stops being kept (the store is then answered
  with a failure status, see :mod:`ecg_dicom.ingest.scp`).
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import struct
import threading
import time
import weakref
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from ecg_dicom import metrics
from ecg_dicom.logsafe import escape

LOG = logging.getLogger("ecg_dicom.scp")
P_DATA_TF = 0x04
# The largest PDU a peer may send: what we announce (pynetdicom's 16382) for P-DATA; an
# A-ASSOCIATE-RQ is a few hundred bytes to a few KiB.
MIN_PDU_BOUND = 64 * 1024

# A-ASSOCIATE-RJ (result, source, diagnostic) per refusal reason
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)


def peer_text(address: Any) -> str:
    """'host:port' of a peer address tuple."""
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return "?"


def caller_text(assoc: Association) -> str:
    """'AE@host:port' of an association's requestor; the AE title is escaped (it is a
    device name from the wire, never patient data, but may hold anything)."""
    req = assoc.requestor
    return f"{escape((req.ae_title or '?').strip(), 16)}@{req.address}:{req.port}"


class Admission:
    """Pending connections and admitted associations of one listener.

    Parameters
    ----------
    ae_title : our AE title (the called AE a request must name).
    allowed_callers : calling AE titles let in, or None for any.
    max_associations : associations open at once.
    max_pending : connections waiting for their A-ASSOCIATE-RQ at once.
    max_store_bytes : a C-STORE data set larger than this is not kept.
    handshake_timeout_s : how long a connection may stay pending.
    """

    def __init__(self, ae_title: str, allowed_callers: tuple[str, ...] | None, max_associations: int,
                 max_pending: int, max_store_bytes: int, handshake_timeout_s: float) -> None:
        self.ae_title = ae_title.strip()
        self.allowed_callers = None if allowed_callers is None else {c.strip() for c in allowed_callers}
        self.max_associations = max_associations
        self.max_pending = max_pending
        self.max_store_bytes = max_store_bytes
        self.handshake_timeout_s = handshake_timeout_s
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, tuple[float, str]] = {}   # insertion order = arrival order
        self._admitted: dict[socket.socket, Association] = {}
        # per association: data-set bytes of the C-STORE being received, and whether it overflowed
        self._rx: weakref.WeakKeyDictionary[Association, list[int]] = weakref.WeakKeyDictionary()
        # association -> its connection's socket (pynetdicom forgets the socket once closed)
        self._sockets: weakref.WeakKeyDictionary[Association, socket.socket] = weakref.WeakKeyDictionary()

    def bind(self, assoc: Association, sock: socket.socket) -> None:
        """Remember which connection an association runs on."""
        with self._lock:
            self._sockets[assoc] = sock

    # -- connections ---------------------------------------------------------------------
    def connection_opened(self, sock: socket.socket, address: Any) -> None:
        """A new TCP connection: pending; the oldest pending one is dropped if there are too many."""
        evicted: list[tuple[socket.socket, str]] = []
        with self._lock:
            self._sweep_pending()
            while len(self._pending) >= self.max_pending:
                old, (_, peer) = next(iter(self._pending.items()))
                del self._pending[old]
                evicted.append((old, peer))
            self._pending[sock] = (time.monotonic(), peer_text(address))
        for old, peer in evicted:
            self.refused("pending_evicted", f"connection from {peer} closed: {self.max_pending} connections were "
                         "waiting for their A-ASSOCIATE request (listen.max_pending), it was the oldest")
            _shutdown(old)

    def close_pending(self) -> int:
        """Close every connection still waiting for its A-ASSOCIATE request (at service stop:
        pynetdicom's own shutdown would abort them, an event its state machine does not
        accept before a request, and the association thread would die with a traceback).
        Returns how many were closed."""
        with self._lock:
            pending = list(self._pending)
        for sock in pending:
            _shutdown(sock)
        return len(pending)

    def connection_closed(self, sock: socket.socket | None) -> None:
        """A connection ended (any way): it holds nothing any more."""
        if sock is None:
            return
        with self._lock:
            pending = self._pending.pop(sock, None)
            if self._admitted.pop(sock, None) is not None:
                metrics.ASSOCIATIONS_ACTIVE.set(len(self._admitted))
        if pending is not None:
            self._closed_pending(*pending)

    def _closed_pending(self, since: float, peer: str) -> None:
        if time.monotonic() - since >= self.handshake_timeout_s * 0.9:
            self.refused("handshake_timeout", f"connection from {peer} closed: no A-ASSOCIATE request within "
                         f"{self.handshake_timeout_s:g} s (listen.handshake_timeout_s)")
        else:
            LOG.debug("connection from %s closed by the peer before an A-ASSOCIATE request", peer)

    def pending(self) -> int:
        with self._lock:
            self._sweep_pending()
            return len(self._pending)

    def active(self) -> int:
        with self._lock:
            self._sweep_admitted()
            return len(self._admitted)

    def _sweep_pending(self) -> None:
        for sock in [s for s in self._pending if s.fileno() == -1]:
            since, peer = self._pending.pop(sock)
            self._closed_pending(since, peer)

    def _sweep_admitted(self) -> None:
        for sock in [s for s, a in self._admitted.items() if not a.is_alive() or s.fileno() == -1]:
            del self._admitted[sock]
        metrics.ASSOCIATIONS_ACTIVE.set(len(self._admitted))

    # -- associations (EVT_REQUESTED, in the association's thread) ------------------------
    def on_requested(self, event: evt.Event) -> None:
        """The A-ASSOCIATE-RQ arrived: check the AE titles, then take a slot or refuse."""
        assoc = event.assoc
        sock = self._sockets.get(assoc)
        primitive = assoc.requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        with self._lock:
            if sock is not None:
                self._pending.pop(sock, None)
            if called != self.ae_title:
                reason, rsd = "called_ae", REJECT_CALLED_AE
            elif self.allowed_callers is not None and calling not in self.allowed_callers:
                reason, rsd = "calling_ae", REJECT_CALLING_AE
            else:
                self._sweep_admitted()
                if len(self._admitted) >= self.max_associations:
                    reason, rsd = "local_limit", REJECT_LOCAL_LIMIT
                else:
                    reason, rsd = "", None
                    if sock is not None:
                        self._admitted[sock] = assoc
                    metrics.ASSOCIATIONS_ACTIVE.set(len(self._admitted))
        if rsd is None:
            return
        texts = {"called_ae": f"called AE title {escape(called, 16)!r} is not ours",
                 "calling_ae": "calling AE title not in allowed_callers",
                 "local_limit": f"{self.max_associations} associations open (max_associations), try later"}
        who = f"{escape(calling or '?', 16)}@{assoc.requestor.address}:{assoc.requestor.port}"
        self.refused(reason, f"audit: association refused from {who}: {texts[reason]}")
        assoc.acse.send_reject(*rsd)
        assoc.kill()  # waits until the A-ASSOCIATE-RJ is out and the connection closed

    @staticmethod
    def refused(reason: str, text: str) -> None:
        metrics.REFUSALS.labels(reason).inc()
        LOG.warning(text)

    # -- C-STORE data set size (EVT_DATA_RECV, in the DUL thread, before the PDU is decoded) --
    def on_data(self, event: evt.Event) -> None:
        """Count the data-set bytes of the message being received; past the limit, keep
        receiving but stop keeping them (the store is answered with a failure status)."""
        data: bytes = event.data
        if not data or data[0] != P_DATA_TF or len(data) < 6:
            return
        state = self._rx.setdefault(event.assoc, [0, 0])
        offset = 6
        while offset + 6 <= len(data):
            (length,) = struct.unpack_from(">I", data, offset)
            control = data[offset + 5] if length >= 2 else 0
            if not control & 1:  # a data-set fragment
                state[0] += max(0, length - 2)
                if state[0] > self.max_store_bytes and not state[1]:
                    state[1] = 1
                    _discard_dataset(event.assoc)
            offset += 4 + length
        if state[1]:
            _discard_dataset(event.assoc)

    def take_oversize(self, assoc: Association) -> int | None:
        """Data-set bytes of the store just received if it went past the limit (the flag is
        cleared), else None; the count starts again for the next message."""
        state = self._rx.pop(assoc, None)
        if state is None or not state[1]:
            return None
        return state[0]

    def handlers(self) -> list[Any]:
        return [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_DATA_RECV, self.on_data),
                (evt.EVT_CONN_CLOSE, self._on_conn_close)]

    def _on_conn_close(self, event: evt.Event) -> None:
        self.connection_closed(self._sockets.get(event.assoc))


class _Discard(io.BytesIO):
    """Where the rest of an oversized data set goes: nowhere."""

    def write(self, data: Any) -> int:  # type: ignore[override]
        return len(data)


def _discard_dataset(assoc: Association) -> None:
    message = getattr(assoc.dimse, "message", None)
    if message is not None and not isinstance(getattr(message, "data_set", None), _Discard):
        message.data_set = _Discard()
        file = getattr(message, "_data_set_file", None)
        if file is not None:  # chunked reception to a temporary file: stop writing it too
            message._data_set_file = None


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _BoundedAssociationSocket(AssociationSocket):
    """An AssociationSocket that refuses to read a PDU longer than ``max_pdu`` bytes."""

    max_pdu: int = MIN_PDU_BOUND
    admission: Admission | None = None

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self.max_pdu:
            if self.admission is not None:
                self.admission.refused("oversize_pdu", f"connection from {self.assoc.requestor.address}:"
                                       f"{self.assoc.requestor.port} closed: a PDU of {nr_bytes} bytes, more than the "
                                       f"{self.max_pdu} we accept")
            self._shutdown_socket()
            return bytearray()
        return super().recv(nr_bytes)


class _GuardedRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        server: GuardedServer = self.server  # type: ignore[assignment]
        # the same socket object, narrower behaviour: it will not read a PDU over the bound
        assoc.dul.socket.__class__ = server.socket_class
        server.admission.bind(assoc, self.request)
        return assoc


CLOSE_PENDING_S = 2.0  # at stop: how long pending connections get to notice they were closed


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with :class:`Admission` in front, the TLS handshake
    moved out of the accept loop (a silent client would block every other one there) into
    the connection's own thread, under ``handshake_timeout_s``."""

    # listen() backlog: socketserver's default of 5 drops the SYNs of a burst of carts, which
    # then connect seconds later (kernel retransmits) and may time out waiting for an answer
    request_queue_size = 128

    def __init__(self, *args: Any, admission: Admission, handshake_timeout_s: float, **kwargs: Any) -> None:
        self.admission = admission
        self.handshake_timeout_s = handshake_timeout_s
        self.max_pdu = MIN_PDU_BOUND
        super().__init__(*args, request_handler=_GuardedRequestHandler, **kwargs)
        self.max_pdu = max(MIN_PDU_BOUND, int(self.ae.maximum_pdu_size or 0)) + 6
        self.socket_class = type("BoundedAssociationSocket", (_BoundedAssociationSocket,),
                                 {"max_pdu": self.max_pdu, "admission": admission})

    def shutdown(self) -> None:
        """Stop accepting, then close the connections still waiting for their A-ASSOCIATE
        request (see :meth:`Admission.close_pending`), waiting up to ``CLOSE_PENDING_S`` for
        their threads to see it (the AE's own shutdown would otherwise abort them first)."""
        super().shutdown()
        if self.admission.close_pending():
            deadline = time.monotonic() + CLOSE_PENDING_S
            while self.admission.pending() and time.monotonic() < deadline:
                time.sleep(0.01)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        self.admission.connection_opened(client, address)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            started = time.monotonic()
            try:
                request.settimeout(self.handshake_timeout_s)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ValueError) as exc:
                timed_out = isinstance(exc, TimeoutError) or time.monotonic() - started >= self.handshake_timeout_s
                reason = "handshake_timeout" if timed_out else "tls_handshake"
                why = "no TLS handshake in time" if timed_out else \
                    f"TLS handshake failed ({escape(getattr(exc, 'reason', None) or type(exc).__name__, 60)})"
                self.admission.refused(reason, f"connection from {peer_text(client_address)} refused: {why}")
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.admission.connection_closed(request)
        super().shutdown_request(request)
