"""DICOM TLS (PS3.15 B.9, BCP 195): SSL contexts for the listener and the PACS client.

Both use TLS 1.2 or newer with Python's default cipher suites. The listener presents
``cert``/``key``; with ``ca`` it verifies client certificates against it, and with
``require_client_cert`` a client without a valid certificate is refused during the
handshake. The PACS client verifies the PACS's certificate against ``ca`` (and its host
name), and presents ``cert``/``key`` when given (for PACS that require mutual TLS).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from ecg_dicom.errors import ConfigError

if TYPE_CHECKING:
    from ecg_dicom.config import ClientTls, ServerTls


def server_context(tls: "ServerTls", key: str = "listen.tls") -> ssl.SSLContext:
    """The listener's context; raises ConfigError naming the key of an unusable file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, tls.cert, tls.key, key)
    if tls.ca is not None:
        _load_ca(ctx, tls.ca, key)
    ctx.verify_mode = (ssl.CERT_REQUIRED if tls.require_client_cert
                       else ssl.CERT_OPTIONAL if tls.ca is not None else ssl.CERT_NONE)
    return ctx


def client_context(tls: "ClientTls", key: str = "pacs.tls") -> ssl.SSLContext:
    """The PACS client's context: the PACS certificate verified against ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(ctx, tls.ca, key)
    if tls.cert is not None:
        _load_chain(ctx, tls.cert, tls.key, key)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert, key_file, key: str) -> None:
    try:
        ctx.load_cert_chain(str(cert), str(key_file) if key_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}.cert/{key}.key: cannot load the certificate and key "
                          f"({getattr(exc, 'strerror', None) or exc})") from None


def _load_ca(ctx: ssl.SSLContext, ca, key: str) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}.ca: cannot load the CA certificates ({getattr(exc, 'strerror', None) or exc})") \
            from None
