"""Health and metrics over HTTP (``http: {host: 127.0.0.1, port: 9110}`` in the config).

``GET /health``: ``200 {"status": "ready", "checks": {...}}`` when the listener, the
worker and the job store all work, else ``503`` with ``"status": "unavailable"`` and the
failing checks. A part that works but not as it should makes it ``200 {"status": "degraded",
"checks": {...}, "degraded": {"pacs": "<reason>"}}`` (the PACS unreachable: results wait in the
job store), or ``"accuracy"`` (per lead the rolling median r and the model card's, when the
accuracy monitor found the reconstructions below the model card: :mod:`ecg_dicom.service.accuracy`):
still 200, because the service still accepts and converts and a load balancer must keep
sending to it; a monitor reads ``status``. Ready again as soon as the concern clears (the
first delivery that succeeds). ``GET /metrics``: the Prometheus text format (:mod:`ecg_dicom.metrics`).
One thread serves requests one at a time (they are cheap), each with a 5 s socket timeout,
so a slow client cannot pile up threads or job-store connections.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from ecg_dicom import metrics

LOG = logging.getLogger("ecg_dicom.monitor")
Check = Callable[[], bool]
Concern = Callable[[], "str | None"]


class Monitor:
    """The HTTP endpoint; ``checks``: name -> callable returning True when that part works;
    ``concerns``: name -> callable returning why that part is degraded, or None when it is not."""

    def __init__(self, host: str, port: int, checks: dict[str, Check],
                 concerns: dict[str, Concern] | None = None, degraded: Callable[[], dict] | None = None) -> None:
        self.checks = checks
        self.concerns = dict(concerns or {})
        self.degraded = degraded
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5.0
            server_version = "ecg-dicom"
            sys_version = ""

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/health":
                    state = monitor.health()
                    self._send(503 if state["status"] == "unavailable" else 200, "application/json",
                               json.dumps(state).encode())
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, metrics.exposition())
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found: try /health or /metrics\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                LOG.debug("http: " + format, *args)

        self.server = HTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def health(self) -> dict:
        """``{"status": "ready" | "degraded" | "unavailable", "checks": {name: bool}}``, plus
        ``"degraded": {name: reason}`` when a concern is raised and ``"accuracy"`` when the
        accuracy monitor finds leads below the model card."""
        results = {}
        for name, check in self.checks.items():
            try:
                results[name] = bool(check())
            except Exception:  # a check that fails to run is a failing check
                results[name] = False
        raised = {}
        for name, concern in self.concerns.items():
            try:
                reason = concern()
            except Exception:  # a concern that fails to run is raised, not hidden
                reason = "its check failed to run"
            if reason:
                raised[name] = reason
        below = self.accuracy_below() if all(results.values()) else {}
        status = "unavailable" if not all(results.values()) else "degraded" if raised or below else "ready"
        return {"status": status, "checks": results, **({"degraded": raised} if raised else {}),
                **({"accuracy": below} if below else {})}

    def accuracy_below(self) -> dict:
        """The accuracy monitor's leads below the model card ({} when none, or no monitor)."""
        if self.degraded is None:
            return {}
        try:
            return dict(self.degraded())
        except Exception:  # noqa: BLE001 - the monitor failing says nothing about accuracy
            LOG.exception("accuracy monitor check failed")
            return {}

    def start(self) -> "Monitor":
        self.thread.start()
        host, port = self.server.server_address[:2]
        LOG.info("health and metrics on http://%s:%d/health and /metrics", host, port)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
