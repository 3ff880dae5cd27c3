"""Delivery to PACS: the status table, backoff, and misbehaving peers (DCMTK storescp,
and a pynetdicom SCP answering chosen statuses). No model is involved: the result sent
is a real 12-lead ECG file."""

from __future__ import annotations

import json
import random
import shutil
import time

import pytest
from peers import PACS_AET, StoreSCP, free_port
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from ecg_dicom.queue import new_key
from ecg_dicom.config import Folders, Pacs
from ecg_dicom.dicom.codes import OUTPUT_SOP_CLASSES
from ecg_dicom.outputs.pacs import Delivery, Outcome, backoff_s, classify_status
from ecg_dicom.queue import Job, JobQueue

pytestmark = pytest.mark.slow


def status(code: int | None) -> Dataset | None:
    if code is None:
        return Dataset()
    ds = Dataset()
    ds.Status = code
    return ds


@pytest.mark.parametrize("code, outcome", [
    (0x0000, Outcome.DELIVERED), (0xB000, Outcome.DELIVERED), (0xB007, Outcome.DELIVERED),
    (0xB006, Outcome.DELIVERED), (0xA700, Outcome.TRANSIENT), (0xA7FF, Outcome.TRANSIENT),
    (None, Outcome.TRANSIENT), (0xA900, Outcome.PERMANENT), (0xC000, Outcome.PERMANENT),
    (0xCFFF, Outcome.PERMANENT), (0x0122, Outcome.PERMANENT), (0x0211, Outcome.PERMANENT),
])
def test_status_table(code, outcome):
    assert classify_status(status(code))[0] is outcome


def test_backoff_grows_with_jitter_and_is_capped():
    pacs = Pacs("P", "h", 1, retry_initial_s=2.0, retry_max_s=60.0)
    rng = random.Random(1)
    for attempts, base in ((1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)):
        delays = [backoff_s(attempts, pacs, rng) for _ in range(200)]
        assert base * 0.5 <= min(delays) and max(delays) <= base
        assert max(delays) - min(delays) > base * 0.3     # jitter spreads retries out


def deliver_once(folders: Folders, queue: JobQueue, port: int, **pacs_args) -> Job:
    pacs = Pacs(PACS_AET, "127.0.0.1", port, **{"timeout_s": 5.0, "retry_initial_s": 10.0, **pacs_args})
    Delivery(queue, pacs, folders, "ECGDICOM", 8).deliver(queue.due(time.time(), 8))
    return queue.jobs()[0]


def assert_retry_scheduled(job: Job, initial_s: float = 10.0) -> None:
    assert job.state == "delivering" and job.attempts == 1
    assert time.time() + 0.4 * initial_s < job.next_attempt <= time.time() + initial_s


def test_delivered_to_storescp(site, tmp_path):
    folders, queue, _ = site
    with StoreSCP(tmp_path / "pacs") as pacs:
        job = deliver_once(folders, queue, pacs.port)
    assert job.state == "done"
    [received] = list((tmp_path / "pacs").iterdir())
    assert dcmread(received).SOPInstanceUID == dcmread(folders.output / "r.dcm").SOPInstanceUID


def test_nobody_listening_is_retried_later(site):
    folders, queue, _ = site
    assert_retry_scheduled(deliver_once(folders, queue, free_port()))


def test_abort_during_store_is_retried_later(site, tmp_path):
    folders, queue, _ = site
    with StoreSCP(tmp_path / "pacs", "--abort-during") as pacs:
        assert_retry_scheduled(deliver_once(folders, queue, pacs.port))


def test_timeout_is_retried_later(site, tmp_path):
    folders, queue, _ = site
    with StoreSCP(tmp_path / "pacs", "--sleep-during", "4") as pacs:
        job = deliver_once(folders, queue, pacs.port, timeout_s=1.0)
    assert_retry_scheduled(job)


def test_refused_association_is_dead_lettered(site, tmp_path):
    folders, queue, job_id = site
    with StoreSCP(tmp_path / "pacs", "--refuse") as pacs:  # A-ASSOCIATE-RJ, rejected permanent
        # storescp closes the socket right after its A-ASSOCIATE-RJ; pynetdicom sometimes sees
        # the close first and reports an abort (transient, retried). Measured: 0 of 60 on a quiet
        # machine, 1 of 60 with both cores busy, and the full suite once saw 5 in a row while the
        # machine was loaded: allow up to 30 attempts, a moment apart
        for _ in range(30):
            job = deliver_once(folders, queue, pacs.port)
            if job.state != "delivering":
                break
            time.sleep(0.2)
            queue.retry_later(job_id, 0.0, "test: due again now")
    assert job.state == "dead"
    assert (folders.dead_letter / "r.dcm").is_file()
    assert "rejected permanently" in (folders.dead_letter / "r.reason.txt").read_text()


def test_gives_up_after_the_configured_age(site):
    folders, queue, _ = site
    time.sleep(0.05)
    job = deliver_once(folders, queue, free_port(), give_up_after_s=0.01)
    assert job.state == "dead" and "gave up after 1 attempts" in job.reason


@pytest.fixture
def answering_scp():
    """A pynetdicom SCP that answers every C-STORE with ``answering_scp.code``."""
    class Peer:
        code = 0x0000
        port = free_port()
        received: list[str] = []

    def handle(event: evt.Event) -> int:
        Peer.received.append(event.request.AffectedSOPInstanceUID)
        return Peer.code

    ae = AE(ae_title=PACS_AET)
    for uid in OUTPUT_SOP_CLASSES:
        ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", Peer.port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    yield Peer
    server.shutdown()


@pytest.mark.parametrize("code, state", [(0xB000, "done"), (0xA700, "delivering"), (0xA900, "dead"),
                                         (0xC000, "dead")])
def test_statuses_from_a_real_association(site, answering_scp, code, state):
    folders, queue, _ = site
    answering_scp.code = code
    job = deliver_once(folders, queue, answering_scp.port)
    assert job.state == state
    assert answering_scp.received == [dcmread(folders.output / "r.dcm").SOPInstanceUID]
    if state == "dead":
        assert f"0x{code:04X}" in (folders.dead_letter / "r.reason.txt").read_text()
    if state == "delivering":
        assert_retry_scheduled(job)


def test_a_split_result_is_logged_in_one_short_line(site, answering_scp, caplog):
    """Issue 11 item 9: an hour-long result is ~110 objects; its delivery line stays short."""
    folders, queue, job_id = site
    names = [f"r_{i:03d}.dcm" for i in range(1, 111)]
    for name in names:
        shutil.copy(folders.output / "r.dcm", folders.output / name)
    queue._db.execute("UPDATE jobs SET outputs = ? WHERE id = ?", (json.dumps(["r.npy", *names]), job_id))
    with caplog.at_level("INFO", logger="ecg_dicom.pacs"):
        assert deliver_once(folders, queue, answering_scp.port).state == "done"
    [line] = [r.getMessage() for r in caplog.records if "delivered to" in r.getMessage()]
    assert "110 x status 0x0000" in line and len(line) < 120


def test_a_pacs_that_stays_down_gives_one_line_per_job_and_a_periodic_summary(site, caplog, monkeypatch):
    """Issue 22 item 5: with the PACS down the log had two ERROR lines per attempt per job
    (738 in 60 s). Now: one WARNING when a job's delivery starts failing, a summary every
    SUMMARY_S, and pynetdicom's lines about the failed association requests dropped."""
    import threading

    import ecg_dicom.outputs.pacs as pacs_module

    caplog.set_level("INFO")
    folders, queue, _ = site
    for i in range(3):
        shutil.copy(folders.output / "r.dcm", folders.output / f"r{i}.dcm")
        job_id = queue.add(new_key(), f"r{i}", "scp", "spooled")
        queue.claim(1)
        queue.processed(job_id, [f"r{i}.dcm"], deliver=True)
    monkeypatch.setattr(pacs_module, "SUMMARY_S", 1.0)
    pacs = Pacs(PACS_AET, "127.0.0.1", free_port(), timeout_s=2.0, retry_initial_s=0.1, retry_max_s=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=Delivery(queue, pacs, folders, "ECGDICOM", 8).run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(3.5)
    stop.set()
    thread.join(10)
    attempts = [job.attempts for job in queue.jobs()]
    assert min(attempts) >= 4, attempts     # tried again and again meanwhile
    records = [r for r in caplog.records if r.levelno >= 30]
    failed = [r.getMessage() for r in records if "delivery failed" in r.getMessage()]
    assert len(failed) == 4 and all("Connection refused" in line for line in failed), failed
    summaries = [r.getMessage() for r in records if "attempts for 4 jobs failed" in r.getMessage()]
    assert 2 <= len(summaries) <= 4 and "4 jobs awaiting delivery" in summaries[0], summaries
    assert len(records) == len(failed) + len(summaries), [r.getMessage() for r in records]
