"""Fault tests for issue 10, items 2, 5, 7 and 8 at the listener: idle connections, the
association limit, back-pressure, size limits on the wire and DICOM TLS. The listener runs
in-process (no worker, so the backlog stays where a test puts it); the peers are real:
DCMTK echoscu/storescu (with +tls), pynetdicom SCUs, plain TCP sockets, openssl certificates."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from certs import make_certs
from peers import CART_AET, SERVICE_AET, dcmtk, free_port, stored_ok, storescu, wait_for
from pydicom import dcmread
from pynetdicom import AE

import crafted
from ecg_dicom import metrics
from ecg_dicom.config import load_config
from ecg_dicom.ingest import Spool
from ecg_dicom.ingest.scp import TOO_LARGE, start_scp
from ecg_dicom.queue import JobQueue

pytestmark = pytest.mark.slow
TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"


class Listener:
    """start_scp() on a free port with a temporary config; the job store is inspectable."""

    def __init__(self, folder: Path, **overrides) -> None:
        listen = {"host": "127.0.0.1", "port": free_port(), "timeout_s": 10, **overrides.pop("listen", {})}
        config = {"ae_title": SERVICE_AET, "listen": listen, "allowed_callers": [CART_AET],
                  "folders": {"watch": "in", "output": "out", "work": "work"}, **overrides}
        path = folder / "site.yaml"
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        self.settings = load_config(path)
        self.port = self.settings.listen.port
        self.queue = JobQueue(self.settings.folders.queue_db)
        self.ae, self.server = start_scp(self.settings, Spool(self.settings.folders.spool, self.queue))

    def close(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()
        self.queue.close()


@pytest.fixture
def listener(tmp_path):
    made: list[Listener] = []

    def make(**overrides) -> Listener:
        made.append(Listener(tmp_path / f"site{len(made)}", **overrides))
        return made[-1]

    yield make
    for item in made:
        item.close()


def refusals(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("ecg_dicom_association_refusals_total", {"reason": reason}) or 0.0


def stores(status: str) -> float:
    return metrics.REGISTRY.get_sample_value("ecg_dicom_stores_total", {"status": status}) or 0.0


def echo(port: int, *tls: str, calling: str = CART_AET) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("echoscu"), *tls, "-aet", calling, "-aec", SERVICE_AET, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def ecg_copies(shared_data: Path, folder: Path, n: int) -> list[Path]:
    ds = crafted.read_real(shared_data)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"ecg{i}.dcm")
        paths[-1].write_bytes(crafted.encode(crafted.with_marker(ds)))
    return paths


# -- item 2 -------------------------------------------------------------------------------------
def test_idle_connections_do_not_lock_carts_out(listener, caplog):
    """Ten silent TCP connections used to hold every slot for ~30 s (Local Limit Exceeded)."""
    svc = listener(max_associations=2, listen={"handshake_timeout_s": 1.0, "max_pending": 8})
    before = refusals("handshake_timeout") + refusals("pending_evicted")
    idle = [socket.create_connection(("127.0.0.1", svc.port)) for _ in range(10)]
    try:
        t0 = time.monotonic()
        for _ in range(3):
            result = echo(svc.port)
            assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - t0 < 5
        for sock in idle:  # each is closed by the listener: handshake timeout or pushed out
            sock.settimeout(10)
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: refusals("handshake_timeout") + refusals("pending_evicted") - before >= 10, 5,
             "ten refusals counted")
    assert "no A-ASSOCIATE request within 1 s" in caplog.text


def test_a_plain_tcp_health_check_does_not_fail_cart_echoes(listener):
    """A TCP check every 0.3 s that waits a second for a banner (as many checkers do) before
    closing: the old listener counted each such socket against max_associations."""
    svc = listener(max_associations=1, listen={"handshake_timeout_s": 2.0})
    stop = threading.Event()

    def check() -> None:
        with socket.create_connection(("127.0.0.1", svc.port)) as sock:
            sock.settimeout(1.0)
            try:
                sock.recv(1)
            except TimeoutError:
                pass

    def probe() -> None:
        while not stop.is_set():
            threading.Thread(target=check, daemon=True).start()
            stop.wait(0.3)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        results = [echo(svc.port).returncode for _ in range(10)]
    finally:
        stop.set()
        thread.join(5)
    assert results == [0] * 10


class Flood:
    """An attacker on loopback: ``sockets`` plain TCP connections that never send anything and
    ``associations`` associations from an allowed AE title that send nothing, each replaced
    as soon as the listener closes it (issue 22, item 2)."""

    def __init__(self, port: int, sockets: int, associations: int) -> None:
        self.port, self.stop = port, threading.Event()
        self.socks: list[socket.socket] = []
        self.assocs: list = [None] * associations
        self.threads = [threading.Thread(target=self._sockets, args=(sockets,), daemon=True),
                        threading.Thread(target=self._associations, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _sockets(self, n: int) -> None:
        while not self.stop.is_set():
            self.socks = [s for s in self.socks if not _closed_by_peer(s)]
            while len(self.socks) < n and not self.stop.is_set():
                try:
                    self.socks.append(socket.create_connection(("127.0.0.1", self.port), timeout=5))
                except OSError:
                    break
            self.stop.wait(0.2)

    def _associations(self) -> None:
        ae = AE(ae_title=CART_AET)
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.acse_timeout = ae.network_timeout = 60
        while not self.stop.is_set():
            for i, assoc in enumerate(self.assocs):
                if assoc is None or not assoc.is_established:
                    self.assocs[i] = ae.associate("127.0.0.1", self.port, ae_title=SERVICE_AET)
            self.stop.wait(0.2)

    def established(self) -> int:
        return sum(1 for a in self.assocs if a is not None and a.is_established)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        for sock in self.socks:
            sock.close()
        for assoc in self.assocs:
            if assoc is not None and assoc.is_established:
                assoc.abort()


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        closed = sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        closed = True
    if closed:
        sock.close()
    return closed


def test_a_flood_of_idle_sockets_and_idle_associations_does_not_lock_a_cart_out(listener, shared_data, tmp_path,
                                                                                 caplog):
    """200 idle sockets and 12 idle associations from an allowed AE title, each replaced when
    closed: 50 idle sockets used to get a real storescu refused ("by pynetdicom's checks"),
    12 idle associations held all 10 slots for listen.timeout_s. Now 20 DCMTK stores all
    succeed, each within 2 s."""
    svc = listener(max_associations=10)
    files = ecg_copies(shared_data, tmp_path / "ecgs", 20)
    before = refusals("idle_preempted")
    flood = Flood(svc.port, sockets=200, associations=12)
    try:
        wait_for(lambda: len(flood.socks) >= 200 and flood.established() >= 10, 60, "the flood in place")
        assert svc.server.admission.active() == 10 and svc.server.admission.pending() >= 50
        took = []
        for path in files:
            t0 = time.monotonic()
            result = storescu(svc.port, [path], timeout=30)
            took.append(time.monotonic() - t0)
            assert stored_ok(result.stdout + result.stderr) == [str(path)], result.stdout + result.stderr
        assert max(took) < 2.0, took
        print(f"flood: 20 stores, median {sorted(took)[10]:.2f} s, slowest {max(took):.2f} s")
        assert flood.established() >= 8  # the attacker's associations were there all along
    finally:
        flood.close()
    assert svc.queue.backlog() == 20
    assert refusals("idle_preempted") - before >= 1
    assert "by pynetdicom's checks" not in caplog.text


def test_an_association_that_sends_nothing_is_closed_after_the_idle_timeout(listener):
    """An admitted association used to keep its slot for listen.timeout_s (30 s) of silence."""
    svc = listener(listen={"idle_timeout_s": 1.0})
    ae = AE(ae_title=CART_AET)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", svc.port, ae_title=SERVICE_AET)
    assert assoc.is_established
    t0 = time.monotonic()
    wait_for(lambda: not assoc.is_established, 10, "the idle association to be aborted")
    assert time.monotonic() - t0 < 5
    wait_for(lambda: svc.server.admission.active() == 0, 5, "its slot to be given back")


def test_stopping_with_a_connection_waiting_for_its_request_leaves_no_traceback(tmp_path):
    """A health check still connected when the service stops: pynetdicom's shutdown used to
    abort it before its A-ASSOCIATE request, an event its state machine rejects, and the
    association thread died with a traceback (InvalidEventError, Evt15 in Sta2)."""
    svc = Listener(tmp_path / "site", listen={"handshake_timeout_s": 30.0})
    errors: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        with socket.create_connection(("127.0.0.1", svc.port)):
            wait_for(lambda: svc.server.admission.pending() == 1, 5, "the connection to be pending")
            svc.close()  # as the service stops: the server, then the AE
            time.sleep(0.5)
    finally:
        threading.excepthook = previous
    assert errors == []


@pytest.mark.parametrize("limit, burst", [(10, 30), (64, 100)])
def test_a_burst_admits_exactly_the_limit(listener, caplog, limit, burst):
    """Bursts above max_associations used to admit fewer than the limit (10 -> 8-9), or more
    (64 -> 66 of a burst of 100)."""
    # admitted ones stay (silent, not preempted) while all are answered
    svc = listener(max_associations=limit, listen={"timeout_s": 120, "idle_timeout_s": 120, "preempt_idle_s": 120})
    before = refusals("local_limit")
    start, hold = threading.Barrier(burst), threading.Event()
    outcomes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        ae = AE(ae_title=CART_AET)
        ae.add_requested_context("1.2.840.10008.1.1")
        start.wait()
        assoc = ae.associate("127.0.0.1", svc.port, ae_title=SERVICE_AET)
        if assoc.is_established:
            outcome = "established"
        elif assoc.is_rejected:
            rj = assoc.acceptor.primitive
            outcome = f"rejected {rj.result}/{rj.result_source}/{rj.diagnostic}"
        else:
            outcome = "other"
        with lock:
            outcomes.append(outcome)
        hold.wait(30)
        if assoc.is_established:
            assoc.release()

    threads = [threading.Thread(target=one, daemon=True) for _ in range(burst)]
    for t in threads:
        t.start()
    wait_for(lambda: len(outcomes) == burst, 60, "every association to be answered")
    hold.set()
    for t in threads:
        t.join(30)
    assert outcomes.count("established") == limit, sorted(outcomes)
    assert outcomes.count("rejected 2/3/2") == burst - limit, sorted(outcomes)  # transient, local limit
    assert refusals("local_limit") - before == burst - limit
    assert f"{limit} associations open (max_associations)" in caplog.text
    wait_for(lambda: svc.server.admission.active() == 0, 10, "the slots to be given back")
    assert echo(svc.port).returncode == 0


# -- item 7 -------------------------------------------------------------------------------------
def test_backpressure_answers_out_of_resources_at_the_high_water_mark(listener, shared_data, tmp_path, caplog):
    """Stores used to be accepted whatever the backlog (it grew without bound)."""
    svc = listener(limits={"queue_high_water": 3})
    files = ecg_copies(shared_data, tmp_path / "ecgs", 5)
    before = stores("queue_full")
    result = storescu(svc.port, files)
    out = result.stdout + result.stderr
    assert len(stored_ok(out)) == 3 and svc.queue.backlog() == 3
    assert "Refused: OutOfResources" in out, out  # DCMTK's name for 0xA700; it then stops sending
    assert stores("queue_full") - before >= 1
    assert "back-pressure: 3 jobs waiting" in caplog.text
    # the worker catches up: stores are accepted again
    for job in svc.queue.claim(3):
        svc.queue.processed(job.id, [], deliver=False)
    result = storescu(svc.port, files[3:])
    assert len(stored_ok(result.stdout + result.stderr)) == 2


# -- item 5 -------------------------------------------------------------------------------------
def c_store(port: int, ds, transfer_syntax) -> object:
    ae = AE(ae_title=CART_AET)
    ae.add_requested_context(ds.SOPClassUID, transfer_syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=SERVICE_AET)
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def test_a_store_over_the_byte_limit_gets_a_failure_status(listener, shared_data, caplog):
    svc = listener(limits={"max_input_bytes": 100_000})
    ds = crafted.with_marker(crafted.read_real(shared_data))
    status = c_store(svc.port, ds, ds.file_meta.TransferSyntaxUID)
    assert status.Status == TOO_LARGE and "limits.max_input_bytes" in status.ErrorComment
    assert svc.queue.counts()["waiting"] == 0 and not list(svc.settings.folders.spool.iterdir())
    assert "refused (0xC001)" in caplog.text


def test_a_deflate_bomb_is_refused_on_the_wire(listener, shared_data):
    """A 328 KB deflated C-STORE inflating to 200 MiB was accepted and processed (+401 MiB RSS)."""
    svc = listener(limits={"max_inflated_bytes": 8 << 20})
    bomb = crafted.deflate_bomb(crafted.read_real(shared_data), 64)
    status = c_store(svc.port, bomb, bomb.file_meta.TransferSyntaxUID)
    assert status.Status == TOO_LARGE and "inflates to more than" in status.ErrorComment
    assert svc.queue.counts()["waiting"] == 0
    ok = crafted.with_marker(crafted.read_real(shared_data))
    assert c_store(svc.port, ok, ok.file_meta.TransferSyntaxUID).Status == 0


def test_a_pdu_longer_than_announced_is_not_read(listener):
    """A PDU header claiming 1 GiB, before any association: the connection is closed at once."""
    svc = listener()
    before = refusals("oversize_pdu")
    with socket.create_connection(("127.0.0.1", svc.port)) as sock:
        sock.sendall(bytes([0x01, 0]) + (1 << 30).to_bytes(4, "big") + b"\0" * 1000)
        sock.settimeout(10)
        assert sock.recv(1) == b""
    assert refusals("oversize_pdu") - before == 1


# -- item 8: DICOM TLS --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_args(certs, who: str = "client") -> list[str]:
    return ["+tls", str(getattr(certs, f"{who}_key")), str(getattr(certs, f"{who}_crt")), "+cf", str(certs.ca_crt)]


def test_tls_listener_takes_tls_and_refuses_plain(listener, certs, shared_data, tmp_path, caplog):
    """`storescu +tls` failed with 'wrong version number': there was no TLS."""
    svc = listener(listen={"tls": {"cert": str(certs.server_crt), "key": str(certs.server_key),
                                   "ca": str(certs.ca_crt), "require_client_cert": True}})
    [ecg] = ecg_copies(shared_data, tmp_path / "tls", 1)
    # a silent connection must not block the handshakes of others (it used to run in the accept loop)
    with socket.create_connection(("127.0.0.1", svc.port)):
        result = subprocess.run([dcmtk("storescu"), "-v", *tls_args(certs), "-aet", CART_AET, "-aec", SERVICE_AET,
                                 "127.0.0.1", str(svc.port), str(ecg)], capture_output=True, text=True, timeout=60)
    assert stored_ok(result.stdout + result.stderr) == [str(ecg)], result.stdout + result.stderr
    assert echo(svc.port, *tls_args(certs)).returncode == 0
    before = refusals("tls_handshake")
    assert echo(svc.port).returncode != 0                                     # plain DICOM
    assert echo(svc.port, *tls_args(certs, "rogue")).returncode != 0          # a certificate we do not trust
    wait_for(lambda: refusals("tls_handshake") - before >= 2, 5, "two TLS refusals")
    assert "TLS handshake failed" in caplog.text
    assert svc.queue.counts()["waiting"] == 1


def test_pacs_delivery_over_tls(tmp_path, certs, shared_data):
    """The PACS client speaks TLS to a DCMTK storescp +tls that requires our client certificate."""
    from test_service_pacs import PACS_AET, deliver_once

    from ecg_dicom.config import Folders

    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "work")
    folders.output.mkdir(parents=True)
    src = shared_data / crafted.MORTARA
    (folders.output / "r.dcm").write_bytes(src.read_bytes())
    queue = JobQueue(folders.queue_db)
    job_id = queue.add("k" * 16, "r", "scp", "spooled")
    queue.claim(1)
    queue.processed(job_id, ["r.dcm"], deliver=True)
    port = free_port()
    received = tmp_path / "pacs"
    received.mkdir()
    proc = subprocess.Popen([dcmtk("storescp"), *tls_args(certs, "server"), "-aet", PACS_AET, "-od", str(received),
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10, "storescp +tls")
        from ecg_dicom.config import ClientTls
        tls = ClientTls(ca=certs.ca_crt, cert=certs.client_crt, key=certs.client_key)
        job = deliver_once(folders, queue, port, tls=tls)
        assert job.state == "done", job.reason
        [stored] = list(received.iterdir())
        assert dcmread(stored).SOPInstanceUID == dcmread(src).SOPInstanceUID
        # a PACS whose certificate our CA did not sign: not delivered, retried later
        queue.redeliver([job_id])   # as ecg-dicom redeliver does (the job store forgets where it went)
        rogue = ClientTls(ca=certs.rogue_crt, cert=certs.client_crt, key=certs.client_key)
        assert deliver_once(folders, queue, port, tls=rogue).state == "delivering"
    finally:
        proc.terminate()
        proc.wait(10)
        queue.close()


def test_the_watched_folder_waits_while_the_backlog_is_at_high_water(tmp_path):
    from ecg_dicom.config import Watcher as WatcherSettings
    from ecg_dicom.ingest.watcher import FolderWatcher

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    queue = JobQueue(tmp_path / "work" / "queue.sqlite3")
    spool = Spool(tmp_path / "work" / "spool", queue)
    queue.add("a" * 16, "earlier", "scp", "x")          # one job waiting: the backlog is at 1
    watcher = FolderWatcher(inbox, spool, WatcherSettings(stable_s=0.1, rescan_s=0.1, sidecar_wait_s=0.0),
                            high_water=1)   # no wait for a sidecar: taken as soon as the backlog allows
    (inbox / "new.npy").write_bytes(b"x" * 10)
    watcher.notify(inbox / "new.npy", complete=True)
    assert watcher.take_ready() == 0 and (inbox / "new.npy").exists() and watcher.paused
    for job in queue.claim(1):
        queue.processed(job.id, [], deliver=False)
    assert watcher.take_ready() == 1 and not (inbox / "new.npy").exists() and not watcher.paused
    queue.close()


def test_the_high_water_mark_is_never_passed_by_concurrent_senders(listener, shared_data, tmp_path):
    """Issue 22 item 5: check and insert were not atomic across associations (203 for 200)."""
    svc = listener(limits={"queue_high_water": 20}, max_associations=10)
    files = ecg_copies(shared_data, tmp_path / "ecgs", 64)
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], svc.queue.backlog())
            stop.wait(0.005)

    sampler = threading.Thread(target=watch, daemon=True)
    sampler.start()
    senders = [subprocess.Popen([dcmtk("storescu"), "-v", "-aet", CART_AET, "-aec", SERVICE_AET, "127.0.0.1",
                                 str(svc.port), *map(str, files[i::8])], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(8)]
    outputs = [p.communicate(timeout=120)[0] for p in senders]
    stop.set()
    sampler.join(5)
    accepted = sum(len(stored_ok(out)) for out in outputs)
    assert accepted == 20 and svc.queue.backlog() == 20 and peak[0] <= 20, (accepted, peak)
    assert all("Refused: OutOfResources" in out for out in outputs if len(stored_ok(out)) < 8)


def test_the_watched_folder_resumes_below_90_percent_of_the_mark(tmp_path, caplog):
    """The watcher flapped between "back-pressure" and "over" at every job around the mark."""
    from ecg_dicom.config import Watcher as WatcherSettings
    from ecg_dicom.ingest.watcher import FolderWatcher

    caplog.set_level("INFO", logger="ecg_dicom")
    (tmp_path / "inbox").mkdir()
    queue = JobQueue(tmp_path / "work" / "queue.sqlite3")
    spool = Spool(tmp_path / "work" / "spool", queue)
    for i in range(10):
        queue.add(f"{i:016d}", f"job{i}", "scp", "x")
    watcher = FolderWatcher(tmp_path / "inbox", spool, WatcherSettings(), high_water=10)
    paused = []
    for _ in range(3):   # the worker finishes one job, another arrives, ... around the mark
        paused.append(watcher._backlog_full())
        job = queue.claim(1)[0]
        queue.processed(job.id, [], deliver=False)
        paused.append(watcher._backlog_full())   # 9 of 10: still paused (resumes below 9)
        queue.add(f"{job.id + 100:016d}", "again", "scp", "x")
    assert paused == [True] * 6
    for job in queue.claim(2):
        queue.processed(job.id, [], deliver=False)
    assert watcher._backlog_full() is False      # 8: below 90 % of the mark
    assert caplog.text.count("back-pressure: 10 jobs waiting") == 1
    assert caplog.text.count("back-pressure over") == 1
    queue.close()


def test_health_and_metrics_endpoints():
    import json
    import urllib.error
    import urllib.request

    from ecg_dicom.service.monitor import Monitor

    state = {"worker": True}
    port = free_port()
    monitor = Monitor("127.0.0.1", port, {"listener": lambda: True, "worker": lambda: state["worker"],
                                          "job_store": lambda: 1 / 0}).start()
    try:
        def get(path: str) -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as rsp:
                    return rsp.status, rsp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        code, body = get("/health")   # a check that raises is a failing check
        assert code == 503 and json.loads(body) == {"status": "unavailable", "checks": {
            "listener": True, "worker": True, "job_store": False}}
        monitor.checks["job_store"] = lambda: True
        assert get("/health")[0] == 200
        state["worker"] = False
        assert get("/health")[0] == 503
        code, body = get("/metrics")
        text = body.decode()
        assert code == 200 and "ecg_dicom_association_refusals_total" in text
        assert "ecg_dicom_store_seconds_bucket" in text and 'ecg_dicom_jobs_finished_total{outcome="rejected"}' in text
        assert get("/other")[0] == 404
    finally:
        monitor.stop()


def test_associations_have_nagle_off_on_both_ends_we_own(listener):
    """Issue 20 item 8: with Nagle on, a C-STORE's short last PDU waited for a delayed ACK
    (up to 40 ms on Linux): our listener's accepted sockets set TCP_NODELAY, as DCMTK does."""
    from pydicom.uid import ExplicitVRLittleEndian

    running = listener()
    scu = AE(ae_title=CART_AET)
    scu.add_requested_context(TWELVE_LEAD, ExplicitVRLittleEndian)
    assoc = scu.associate("127.0.0.1", running.port, ae_title=SERVICE_AET)
    try:
        assert assoc.is_established
        accepted = wait_for(lambda: running.server.active_associations, 10, "the association on the listener")
        sock = accepted[0].dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        # the cart's end is the cart's business: pynetdicom's default leaves it on
        assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    finally:
        assoc.release()
