"""Real peers for the service tests: our own ``serve`` process, Orthanc, DCMTK tools.

Every peer runs on 127.0.0.1 on a free port, is waited for until it answers, and is
always terminated (context managers / fixtures call :meth:`stop`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import yaml

ORTHANC = "/usr/sbin/Orthanc"
SERVICE_AET = "ECGDICOM"
CART_AET = "CART1"
PACS_AET = "TESTPACS"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- DCMTK ---------------------------------------------------------------------------------
def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().split(") ")[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def dcmtk(tool: str) -> str:
    """Absolute path of a DCMTK program. pynetdicom 3 installs Python apps of the same names
    (storescu, storescp, echoscu) into the virtualenv's bin/, which an activated venv puts
    first on PATH; the tests talk to the real DCMTK peers, so that folder is skipped."""
    venv_bin = Path(sys.prefix, "bin").resolve()
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != venv_bin)
    found = shutil.which(tool, path=path)
    if found is None:
        raise FileNotFoundError(f"DCMTK's {tool} is not installed (make system-deps)")
    return found


def storescu(port: int, files: list[Path], calling: str = CART_AET, called: str = SERVICE_AET,
             timeout: float = 120) -> subprocess.CompletedProcess:
    """C-STORE ``files`` with DCMTK storescu (-v: one line per request and response)."""
    return subprocess.run([dcmtk("storescu"), "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=timeout)


def echoscu(port: int, calling: str = CART_AET, called: str = SERVICE_AET) -> bool:
    """True when a C-ECHO to the port succeeds."""
    return subprocess.run([dcmtk("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, timeout=30).returncode == 0


def stored_ok(storescu_output: str) -> list[str]:
    """Files that storescu -v reports answered with Success (in order)."""
    ok, current = [], None
    for line in storescu_output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current:
            ok.append(current)
            current = None
    return ok


def dciodvfy_errors(path: Path) -> list[str]:
    """``Error`` lines of dciodvfy for ``path`` (its exit status is not reliable)."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stderr + out.stdout).splitlines() if line.startswith("Error")]


class StoreSCP:
    """DCMTK storescp as a PACS, with its misbehaviour flags (``--refuse``, ``--abort-during``...)."""

    def __init__(self, folder: Path, *flags: str, aet: str = PACS_AET) -> None:
        self.folder, self.flags, self.aet = Path(folder), flags, aet
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StoreSCP":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([dcmtk("storescp"), "-aet", self.aet, "-od", str(self.folder), *self.flags,
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _listening(self.port), 10, "storescp to listen")
        return self

    def stop(self) -> None:
        if self.proc:
            _stop_process(self.proc)

    def __enter__(self) -> "StoreSCP":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- Orthanc ---------------------------------------------------------------------------------
ORTHANC_PLUGINS = Path("/usr/lib/orthanc")  # Debian orthanc-dicomweb: libOrthancDicomWeb.so.<version>


def dicomweb_plugin() -> str:
    """Path of Orthanc's DICOMweb plugin (make system-deps installs it)."""
    found = sorted(ORTHANC_PLUGINS.glob("libOrthancDicomWeb.so*"))
    if not found:
        raise FileNotFoundError("Orthanc's DICOMweb plugin is not installed (make system-deps: orthanc-dicomweb)")
    return str(found[-1])


class Orthanc:
    """Orthanc as the test PACS: temporary storage, REST on a free port.

    ``dicomweb``: load the DICOMweb plugin (STOW-RS at :attr:`dicomweb_url`); ``users``:
    {name: password} for HTTP basic auth (the REST helpers below log in as the first);
    ``modalities``: {AE title: port on 127.0.0.1} Orthanc may call (where it sends storage
    commitment reports). ``stop()`` then ``start()`` again keeps the same ports and storage
    (the attributes may be changed in between). For HTTPS see :class:`TlsProxy` (Orthanc
    1.10.1's own, SslEnabled, died with SIGSEGV on the first request here).
    """

    def __init__(self, folder: Path, aet: str = PACS_AET, dicomweb: bool = False,
                 users: dict[str, str] | None = None, modalities: dict[str, int] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.aet = aet
        self.dicomweb = dicomweb
        self.users = users or {}
        self.modalities = modalities or {}
        self.extra = dict(extra or {})  # more configuration keys (DicomModalities, ...)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def _request(self, path: str, body: bytes | None = None) -> urllib.request.Request:
        req = urllib.request.Request(self.url + path, data=body, method="GET" if body is None else "POST")
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        return req

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "Orthanc":
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {"Name": "test-pacs", "StorageDirectory": str(self.folder / "db"),
                  "IndexDirectory": str(self.folder / "db"), "HttpPort": self.http_port,
                  "Plugins": [dicomweb_plugin()] if self.dicomweb else [],
                  "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/", "EnableWado": False},
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users),
                  "RegisteredUsers": self.users,
                  "DicomModalities": {aet: [aet, "127.0.0.1", port] for aet, port in self.modalities.items()},
                  "DicomAet": self.aet,
                  "DicomPort": self.dicom_port, "DicomCheckCalledAet": True, "DicomAlwaysAllowEcho": True,
                  "DicomAlwaysAllowStore": True, "SaveJobs": False, "OrthancExplorerEnabled": False,
                  "WebDavEnabled": False, **self.extra}
        cfg = self.folder / "orthanc.json"
        cfg.write_text(json.dumps(config))
        with open(self.folder / "orthanc.log", "ab") as log:
            self.proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=subprocess.DEVNULL, stderr=log)
        wait_for(self._ready, 30, "Orthanc to answer GET /system")
        return self

    def _ready(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited with {self.proc.returncode}; see {self.folder / 'orthanc.log'}")
        try:
            self.get("/system")
            return _listening(self.dicom_port)
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self) -> None:
        if self.proc:
            _stop_process(self.proc)
            self.proc = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self._request(path), timeout=10) as rsp:
            data = rsp.read()
        return json.loads(data) if rsp.headers.get_content_type() == "application/json" else data

    def post(self, path: str, body: bytes) -> Any:
        with urllib.request.urlopen(self._request(path, body), timeout=10) as rsp:
            return json.loads(rsp.read())

    def instances(self) -> list[str]:
        return self.get("/instances")

    def lookup(self, uid: str) -> list[dict]:
        """Orthanc resources whose UID is ``uid`` (``POST /tools/lookup``)."""
        return self.post("/tools/lookup", uid.encode())

    def copies_of(self, result: Path) -> int:
        """How many instances Orthanc holds with the SOP Instance UID of the DICOM file ``result``."""
        from pydicom import dcmread

        uid = str(dcmread(result, stop_before_pixels=True).SOPInstanceUID)
        return sum(1 for hit in self.lookup(uid) if hit["Type"] == "Instance")

    def download(self, instance_id: str, dest: Path) -> Path:
        dest.write_bytes(self.get(f"/instances/{instance_id}/file"))
        return dest

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TlsProxy:
    """A TLS endpoint (``cert``/``key``, PEM) on a free port forwarding each connection, in
    plain TCP, to ``target_port`` on 127.0.0.1: HTTPS in front of Orthanc's HTTP."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.server: socket.socket | None = None

    def start(self) -> "TlsProxy":
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed by stop()
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(conn, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def __enter__(self) -> "TlsProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until either side closes; then close both."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.close()
            except OSError:
                pass


# -- our service -------------------------------------------------------------------------------
def write_config(folder: Path, checkpoint: Path, pacs: dict | None = None, **overrides: Any) -> Path:
    """A site.yaml in ``folder`` with its own folders, a free port and fast test timings.

    The test sites deliver every result, those of sources holding all 12 measured leads too
    (the real cart files the delivery tests send): ``deliver_when_source_complete=None`` gives
    the product's default (kept locally; tests/test_accuracy_monitor.py)."""
    config: dict[str, Any] = {
        "ae_title": SERVICE_AET,
        "listen": {"host": "127.0.0.1", "port": free_port(), "timeout_s": 10},
        "allowed_callers": [CART_AET],
        "input_lead": "I",
        "checkpoint": str(checkpoint),
        "folders": {"watch": "inbox", "output": "outbox", "work": "work"},
        "worker": {"batch_size": 8, "max_wait_s": 0.1},
        "watcher": {"stable_s": 0.5, "rescan_s": 1.0},
        "log_level": "INFO",
        "deliver_when_source_complete": True,
    }
    if pacs is not None:
        config["pacs"] = {"timeout_s": 5, "retry_initial_s": 0.5, "retry_max_s": 1.0, **pacs}
    config.update(overrides)
    config = {k: v for k, v in config.items() if v is not None}  # None: leave the key out
    path = Path(folder) / "site.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def ecg_dicom(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m ecg_dicom ARGS`` (the CLI as a user runs it)."""
    return subprocess.run([sys.executable, "-m", "ecg_dicom", *args], capture_output=True, text=True,
                          timeout=timeout)


def status_counts(config: Path) -> dict[str, int]:
    """The job counts ``ecg-dicom status --config`` prints, as {label: count}."""
    out = ecg_dicom("status", "--config", str(config))
    assert out.returncode in (0, 3, 4), out.stderr  # running, not running, not ready: counts printed alike
    labels = ("waiting", "processing", "delivering", "done", "rejected", "dead-lettered")
    counts = {}
    for line in out.stdout.splitlines():
        label, _, value = line.partition(":")
        if label in labels:
            counts[label] = int(value.split()[0])
    return counts


class Service:
    """``python -m ecg_dicom serve --config ...`` as a real subprocess; log in ``<folder>/serve.log``."""

    def __init__(self, config: Path) -> None:
        self.config = Path(config)
        data = yaml.safe_load(self.config.read_text())
        self.port = data["listen"]["port"]
        base = self.config.parent
        self.watch, self.output, self.work = (base / data["folders"][k] for k in ("watch", "output", "work"))
        self.log = base / "serve.log"
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0

    def start(self, timeout: float = 60) -> "Service":
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "ecg_dicom", "serve", "--config",
                                          str(self.config)], stdout=subprocess.DEVNULL, stderr=log, env=env)
        wait_for(self._ready, timeout, "the service to log 'service ready'")
        return self

    def _ready(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        return "service ready" in self.log_text()

    def log_text(self) -> str:
        """The log written since the last start."""
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"serve did not exit within {timeout} s of SIGTERM")
        finally:
            self.proc = None

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def counts(self) -> dict[str, int]:
        """Job counts read straight from the job store (read-only)."""
        db = self.work / "queue.sqlite3"
        if not db.exists():
            return {}
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return dict(con.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        except sqlite3.OperationalError:
            return {}
        finally:
            con.close()

    def jobs(self) -> list[dict]:
        """Every job row of the job store (read-only), oldest first; ``outputs`` decoded."""
        db = self.work / "queue.sqlite3"
        if not db.exists():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        con.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in con.execute("SELECT * FROM jobs ORDER BY id")]
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()
        for row in rows:
            row["outputs"] = json.loads(row["outputs"])
        return rows

    def settled(self, expected: int) -> bool:
        """True when ``expected`` jobs exist and none is waiting, processing or delivering."""
        c = self.counts()
        busy = c.get("waiting", 0) + c.get("processing", 0) + c.get("delivering", 0)
        return sum(c.values()) >= expected and busy == 0

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            try:
                self.stop()
            except AssertionError:
                pass
