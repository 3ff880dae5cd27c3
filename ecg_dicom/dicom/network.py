"""Socket settings for our DICOM associations, as pynetdicom handlers.

pynetdicom leaves Nagle's algorithm on. A C-STORE is written as several P-DATA PDUs; with
Nagle on, the last, short one waits until the peer acknowledges what is in flight, and a
peer that delays its ACKs (Linux: up to 40 ms) stalls every such store. Measured here on a
~120 KB waveform object to Orthanc on loopback: a C-STORE took ~11 ms or ~55 ms, about half
of them the slow one, before; ~11 ms always with ``TCP_NODELAY``. DCMTK sets
``TCP_NODELAY`` on its associations by default for the same reason.
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt

LOG = logging.getLogger("ecg_dicom.network")


def no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: switch Nagle's algorithm off on the association's TCP socket (plain or
    TLS). A socket that refuses (not TCP) is left as it is."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        LOG.debug("TCP_NODELAY not set: %s", exc)


# the binding to add to an AE's or an association's event handlers
NO_DELAY_HANDLER = (evt.EVT_CONN_OPEN, no_delay)
