"""Socket settings for our DICOM associations, as pynetdicom handlers.

A C-STORE is a request of several P-DATA PDUs and a short response. Two TCP timers can
hold either end up to 40 ms (Linux's delayed ACK) when a peer leaves Nagle's algorithm on:

- our writes: pynetdicom leaves Nagle on, so the request's short last PDU waited for the
  peer's ACK of what was in flight. ``TCP_NODELAY`` on our sockets (as DCMTK sets on its
  requests). Measured here, a ~240 KB waveform object to Orthanc on loopback, results
  arriving apart: ~11 ms or ~55 ms per store, about half the slow one, before; ~11 ms after.
- the peer's writes: DCMTK answers as an acceptor with Nagle on (Orthanc, ``storescp``)
  and writes its C-STORE response in two parts; the second waits for our ACK of the first,
  which the kernel delays while stores follow one another on the association. ``TCP_QUICKACK``
  after every PDU we send or receive makes our ACKs immediate. Measured against
  ``storescp``, stores back to back on one association: 48 ms each before, 4.5 ms after.
  A cart that sends with Nagle on (pynetdicom's default) meets the same delay on our
  listener, hence the same setting after every PDU received.

``TCP_QUICKACK`` is not sticky (the kernel returns to delayed ACKs on its own), so it is set
again after each PDU; where the platform lacks it, only ``TCP_NODELAY`` is set.
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt

LOG = logging.getLogger("ecg_dicom.network")
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _tcp_socket(event: evt.Event) -> socket.socket | None:
    """The association's socket (plain or TLS), or None before it has one."""
    return getattr(getattr(event.assoc.dul, "socket", None), "socket", None)


def no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: switch Nagle's algorithm off on the association's TCP socket. A socket
    that refuses (not TCP) is left as it is."""
    sock = _tcp_socket(event)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        LOG.debug("TCP_NODELAY not set: %s", exc)


def quick_ack(event: evt.Event) -> None:
    """EVT_DATA_SENT / EVT_DATA_RECV: acknowledge what arrives next at once."""
    sock = _tcp_socket(event)
    if sock is None or _QUICKACK is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:  # closed meanwhile, or not TCP: nothing to speed up
        pass


# the bindings to add to an AE's or an association's event handlers
LOW_LATENCY_HANDLERS = [(evt.EVT_CONN_OPEN, no_delay), (evt.EVT_DATA_SENT, quick_ack),
                        (evt.EVT_DATA_RECV, quick_ack)]
