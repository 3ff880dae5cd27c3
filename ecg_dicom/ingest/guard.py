"""Who the listener serves: connection and association admission, TLS, wire size.

pynetdicom alone counts every open TCP connection (and every association it is busy
refusing) against ``maximum_associations``, and keeps a silent connection for the full ACSE
timeout, so ten idle sockets lock every cart out. Here instead:

* a new connection is *pending* until its A-ASSOCIATE-RQ arrives; it must complete the TLS
  handshake (if any) and send the request within ``listen.handshake_timeout_s``; at most
  ``listen.max_pending`` connections may be pending, and a new one pushes out the oldest
  pending connection of the address that holds the most (a cart sends its request within
  milliseconds, an idle socket never does; one flooding address cannot push out another's);
  pending connections take no association slot (pynetdicom's own count, which includes
  them, is set above what pending plus admitted can reach);
* only associations that passed the AE title checks take a slot; the slots are counted
  under one lock, so a burst admits exactly ``max_associations``;
* a slot is not held by silence: an association on which nothing arrives for
  ``listen.idle_timeout_s`` is aborted (pynetdicom's network timeout), and while every slot
  is taken, a new request takes the slot of the association idle longest (counted as
  ``idle_preempted``), if it is not in the middle of a store and has been idle
  ``listen.preempt_idle_s`` without ever sending a DIMSE message (a cart sends its first
  within milliseconds of being accepted; one that sends nothing only holds a slot), or
  :data:`WORKING_PREEMPT_S` after its last message;
* every refusal is logged with its reason and counted in
  ``ecg_dicom_association_refusals_total{reason=...}``;
* a PDU longer than we can have announced is refused before it is read, and a C-STORE data
  set growing past ``limits.max_input_bytes`` stops being kept (the store is then answered
  with a failure status, see :mod:`ecg_dicom.ingest.scp`).
"""

from __future__ import annotations

import io
import logging
import select
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
# while every slot is taken: an association that has sent DIMSE messages, idle this long, gives
# its slot to a new request (one that never sent any: after listen.preempt_idle_s)
WORKING_PREEMPT_S = 2.0


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
    preempt_idle_s : while every slot is taken, an association that has sent no DIMSE message
        and has been idle this long (seconds) gives its slot to a new request.
    """

    def __init__(self, ae_title: str, allowed_callers: tuple[str, ...] | None, max_associations: int,
                 max_pending: int, max_store_bytes: int, handshake_timeout_s: float,
                 preempt_idle_s: float = 0.2) -> None:
        self.ae_title = ae_title.strip()
        self.allowed_callers = None if allowed_callers is None else {c.strip() for c in allowed_callers}
        self.max_associations = max_associations
        self.max_pending = max_pending
        self.max_store_bytes = max_store_bytes
        self.handshake_timeout_s = handshake_timeout_s
        self.preempt_idle_s = preempt_idle_s
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, tuple[float, str]] = {}   # insertion order = arrival order
        self._admitted: dict[socket.socket, Association] = {}
        # admitted connection -> [monotonic time of its last PDU in or out, stores in progress,
        # 1 once it has sent a P-DATA (a DIMSE message)]
        self._activity: dict[socket.socket, list[float]] = {}
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
                old = self._oldest_of_busiest_host()
                evicted.append((old, self._pending.pop(old)[1]))
            self._pending[sock] = (time.monotonic(), peer_text(address))
        for old, peer in evicted:
            self.refused("pending_evicted", f"connection from {peer} closed: {self.max_pending} connections were "
                         "waiting for their A-ASSOCIATE request (listen.max_pending), it was the oldest of the "
                         "address holding the most")
            _shutdown(old)

    def _oldest_of_busiest_host(self) -> socket.socket:
        """The pending connection to push out: the oldest of the address with the most pending."""
        per_host: dict[str, int] = {}
        for _, peer in self._pending.values():
            host = peer.rsplit(":", 1)[0]
            per_host[host] = per_host.get(host, 0) + 1
        busiest = max(per_host, key=per_host.__getitem__)
        return next(s for s, (_, peer) in self._pending.items() if peer.rsplit(":", 1)[0] == busiest)

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
            self._activity.pop(sock, None)
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

    def is_pending(self, sock: socket.socket) -> bool:
        """Whether ``sock`` still waits for its A-ASSOCIATE request (not pushed out)."""
        with self._lock:
            return sock in self._pending

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
            self._activity.pop(sock, None)
        metrics.ASSOCIATIONS_ACTIVE.set(len(self._admitted))

    def _idlest(self) -> tuple[socket.socket, float] | None:
        """The admitted connection to preempt: idle longest of those not in a store and idle
        past their threshold (``preempt_idle_s`` if silent so far, else WORKING_PREEMPT_S)."""
        now = time.monotonic()
        idle = [(now - last, sock) for sock, (last, busy, spoke) in self._activity.items()
                if not busy and sock in self._admitted
                and now - last >= (WORKING_PREEMPT_S if spoke else self.preempt_idle_s)]
        if not idle:
            return None
        seconds, sock = max(idle, key=lambda item: item[0])
        return sock, seconds

    # -- activity of admitted associations ------------------------------------------------
    def _touch(self, assoc: Association, busy: int = 0, spoke: bool = False) -> None:
        sock = self._sockets.get(assoc)
        with self._lock:
            state = self._activity.get(sock) if sock is not None else None
            if state is not None:
                state[0] = time.monotonic()
                state[1] = max(0, state[1] + busy)
                state[2] = state[2] or spoke

    def store_started(self, assoc: Association) -> None:
        """A C-STORE is being handled on ``assoc``: its slot cannot be preempted meanwhile."""
        self._touch(assoc, +1)

    def store_finished(self, assoc: Association) -> None:
        self._touch(assoc, -1)

    # -- associations (EVT_REQUESTED, in the association's thread) ------------------------
    def on_requested(self, event: evt.Event) -> None:
        """The A-ASSOCIATE-RQ arrived: check the AE titles, then take a slot or refuse."""
        assoc = event.assoc
        sock = self._sockets.get(assoc)
        primitive = assoc.requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        victim = None
        with self._lock:
            if sock is not None:
                self._pending.pop(sock, None)
            if called != self.ae_title:
                reason, rsd = "called_ae", REJECT_CALLED_AE
            elif self.allowed_callers is not None and calling not in self.allowed_callers:
                reason, rsd = "calling_ae", REJECT_CALLING_AE
            else:
                self._sweep_admitted()
                victim = self._idlest() if len(self._admitted) >= self.max_associations else None
                if victim is not None:
                    preempted = (victim[0], self._admitted.pop(victim[0]), victim[1])
                    self._activity.pop(victim[0], None)
                if len(self._admitted) >= self.max_associations:
                    reason, rsd = "local_limit", REJECT_LOCAL_LIMIT
                else:
                    reason, rsd = "", None
                    if sock is not None:
                        self._admitted[sock] = assoc
                        self._activity[sock] = [time.monotonic(), 0, 0]
                    metrics.ASSOCIATIONS_ACTIVE.set(len(self._admitted))
        if victim is not None:
            old_sock, old, seconds = preempted
            self.refused("idle_preempted", f"audit: association from {caller_text(old)} closed: idle {seconds:.1f} s "
                         f"while all {self.max_associations} slots were taken and another association asked for one "
                         "(listen.preempt_idle_s)")
            _shutdown(old_sock)
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
        self._touch(event.assoc, spoke=bool(data) and data[0] == P_DATA_TF)
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
                (evt.EVT_DATA_SENT, lambda event: self._touch(event.assoc)),
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
        self._stopping = False
        self.max_pdu = MIN_PDU_BOUND
        super().__init__(*args, request_handler=_GuardedRequestHandler, **kwargs)
        self.max_pdu = max(MIN_PDU_BOUND, int(self.ae.maximum_pdu_size or 0)) + 6
        self.socket_class = type("BoundedAssociationSocket", (_BoundedAssociationSocket,),
                                 {"max_pdu": self.max_pdu, "admission": admission})

    def shutdown(self) -> None:
        """Stop accepting, then close the connections still waiting for their A-ASSOCIATE
        request (see :meth:`Admission.close_pending`), waiting up to ``CLOSE_PENDING_S`` for
        their threads to see it (the AE's own shutdown would otherwise abort them first)."""
        self._stopping = True
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
        started = time.monotonic()
        if isinstance(request, ssl.SSLSocket):
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
        if not self._first_bytes(request, started):
            self.shutdown_request(request)  # counted as handshake_timeout (or closed by the peer)
            return
        super().process_request_thread(request, client_address)

    def _first_bytes(self, request: socket.socket, started: float) -> bool:
        """Wait (blocked, no CPU) for the connection's first bytes, up to what is left of
        ``handshake_timeout_s``: pynetdicom's association and DUL threads each poll every
        millisecond, so a silent connection is handed to them only once it has spoken.
        False when nothing came (the connection is then closed)."""
        if isinstance(request, ssl.SSLSocket) and request.pending():
            return True
        left = self.handshake_timeout_s - (time.monotonic() - started)
        try:
            readable, _, _ = select.select([request], [], [], max(0.0, left))
        except (OSError, ValueError):  # closed meanwhile (evicted, or the service stopping)
            return False
        return bool(readable) and not self._stopping and self.admission.is_pending(request)

    def shutdown_request(self, request: Any) -> None:
        self.admission.connection_closed(request)
        super().shutdown_request(request)
