"""Durable job store and spool: states, restarts, kill -9, recovery, disk full."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from peers import free_port
from pydicom import dcmread
from pynetdicom import AE

from ecg_dicom.config import load_config
from ecg_dicom.ingest import Spool, output_name
from ecg_dicom.ingest.scp import OUT_OF_RESOURCES, start_scp
from ecg_dicom.queue import STATES, JobQueue, new_key

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def queue(tmp_path):
    q = JobQueue(tmp_path / "work" / "queue.sqlite3")
    yield q
    q.close()


@pytest.fixture
def spool(tmp_path, queue):
    return Spool(tmp_path / "work" / "spool", queue)


class TestJobQueue:
    def test_life_of_a_job_with_delivery(self, queue):
        job_id = queue.add(new_key(), "a", "scp", "file-a")
        assert queue.counts()["waiting"] == 1
        [job] = queue.claim(8)
        assert job.id == job_id and queue.get(job_id).state == "processing"
        queue.processed(job_id, ["a.npy", "a.dcm"], deliver=True)
        job = queue.get(job_id)
        assert job.state == "delivering" and job.outputs == ("a.npy", "a.dcm")
        assert [j.id for j in queue.due(job.next_attempt, 8)] == [job_id]
        queue.retry_later(job_id, job.next_attempt + 60, "PACS down")
        assert queue.due(job.next_attempt + 1, 8) == []
        assert queue.next_due() == pytest.approx(job.next_attempt + 60)
        assert queue.get(job_id).attempts == 1
        queue.delivered(job_id)
        assert queue.counts() == {**dict.fromkeys(STATES, 0), "done": 1}

    def test_without_delivery_processed_is_done(self, queue):
        job_id = queue.add(new_key(), "a", "watch", "f")
        queue.claim(1)
        queue.processed(job_id, ["a.npy"], deliver=False)
        assert queue.get(job_id).state == "done"

    def test_claim_takes_oldest_first_and_only_waiting(self, queue):
        ids = [queue.add(new_key(), f"n{i}", "scp", f"f{i}") for i in range(5)]
        assert [j.id for j in queue.claim(2)] == ids[:2]
        assert [j.id for j in queue.claim(10)] == ids[2:]
        assert queue.claim(10) == []

    def test_state_survives_reopen_and_processing_goes_back_to_waiting(self, tmp_path, queue):
        a = queue.add(new_key(), "a", "scp", "fa")
        b = queue.add(new_key(), "b", "scp", "fb")
        queue.claim(1)
        queue.close()
        again = JobQueue(tmp_path / "work" / "queue.sqlite3")
        try:
            assert again.get(a).state == "processing"
            assert again.recover() == 1
            assert [j.id for j in again.claim(5)] == [a, b]
        finally:
            again.close()

    def test_accepted_jobs_survive_kill_9(self, tmp_path):
        """A child stores inputs as fast as it can and reports each accepted id; kill -9 it;
        every reported job is in the store with its complete spool file."""
        work = tmp_path / "work"
        payload = b"x" * 50_000
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            from ecg_dicom.ingest import Spool
            from ecg_dicom.queue import JobQueue
            spool = Spool({str(work / 'spool')!r}, JobQueue({str(work / 'queue.sqlite3')!r}))
            i = 0
            while True:
                job_id = spool.store_bytes(b"x" * 50_000, f"1.2.3.{{i}}.dcm", "scp")
                print(job_id, flush=True)
                i += 1
        """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
        acked = [int(child.stdout.readline()) for _ in range(40)]
        child.send_signal(signal.SIGKILL)
        child.wait()
        acked += [int(line) for line in child.stdout.read().split()]
        q = JobQueue(work / "queue.sqlite3")
        try:
            spool = Spool(work / "spool", q)
            spool.recover()
            for job_id in acked:
                job = q.get(job_id)
                assert job.state == "waiting"
                assert spool.path(job).read_bytes() == payload
            assert not list((work / "spool").glob(".*part"))
        finally:
            q.close()


class TestSpool:
    def test_store_bytes_names_and_records(self, spool, queue):
        job_id = spool.store_bytes(b"data", "1.2.840.99.dcm", "scp")
        job = queue.get(job_id)
        assert job.name == "1.2.840.99" and job.spool.endswith("-1.2.840.99.dcm")
        assert spool.path(job).read_bytes() == b"data"

    def test_wire_names_cannot_escape_the_spool(self, spool, queue, tmp_path):
        job = queue.get(spool.store_bytes(b"d", "../../etc/passwd", "scp"))
        assert spool.path(job).parent == spool.folder and "/" not in job.name
        assert not (tmp_path / "etc").exists()

    def test_claim_moves_file_and_sidecar(self, spool, queue, tmp_path):
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        (inbox / "rec.npy").write_bytes(b"npy")
        (inbox / "rec.json").write_text('{"fs": 250}')
        job = queue.get(spool.claim(inbox / "rec.npy", "watch", sidecar=inbox / "rec.json"))
        assert job.name == "rec" and list(inbox.iterdir()) == []
        assert spool.path(job).read_bytes() == b"npy"
        assert spool.sidecar(job).read_text() == '{"fs": 250}'
        assert spool.claim(inbox / "rec.npy", "watch") is None  # already taken

    def test_claim_across_file_systems_copies_durably_then_removes(self, spool, queue, tmp_path, monkeypatch):
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        (inbox / "rec.dcm").write_bytes(b"dicom bytes")
        real_replace = os.replace

        def no_cross_device_rename(src, dst):
            if Path(src).parent == inbox:
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", no_cross_device_rename)
        job = queue.get(spool.claim(inbox / "rec.dcm", "watch"))
        assert spool.path(job).read_bytes() == b"dicom bytes"
        assert list(inbox.iterdir()) == [] and not list(spool.folder.glob(".*"))

    def test_recover_orphans_and_leftovers(self, spool, queue):
        key = new_key()
        (spool.folder / f"{key}-1.2.3.dcm").write_bytes(b"accepted, row never committed")
        (spool.folder / ".x.part").write_bytes(b"half written")
        done = queue.get(spool.store_bytes(b"d", "done.dcm", "scp"))
        queue.claim(5)
        queue.processed(done.id, ["done.npy"], deliver=False)
        assert spool.recover() == (1, 2)
        [job] = queue.jobs("waiting")
        assert job.key == key and job.name == "1.2.3" and job.origin == "recovered"
        assert sorted(p.name for p in spool.folder.iterdir()) == [f"{key}-1.2.3.dcm"]

    @pytest.mark.parametrize("filename, name", [("1.2.3.dcm", "1.2.3"), ("rec.NPY", "rec"), ("x.txt", "x.txt"),
                                                ("1.2.840.5", "1.2.840.5")])
    def test_output_name(self, filename, name):
        assert output_name(filename) == name


class FullDisk(Spool):
    def store_bytes(self, data: bytes, filename: str, origin: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_scp_answers_out_of_resources_when_disk_is_full(tmp_path, shared_data):
    """A real association: the store handler cannot spool -> 0xA700, nothing recorded."""
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"ae_title: ECGDICOM\nlisten: {{host: 127.0.0.1, port: {free_port()}}}\n"
                   "folders: {watch: in, output: out, work: work}\n")
    settings = load_config(cfg)
    queue = JobQueue(settings.folders.queue_db)
    ae, server = start_scp(settings, FullDisk(settings.folders.spool, queue))
    try:
        ds = dcmread(shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm")
        scu = AE(ae_title="CART1")
        scu.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = scu.associate("127.0.0.1", settings.listen.port, ae_title="ECGDICOM")
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
        assert status.Status == OUT_OF_RESOURCES
        assert queue.counts()["waiting"] == 0
    finally:
        server.shutdown()
        queue.close()


def test_a_store_from_the_previous_version_is_upgraded_and_its_results_keep_their_names(tmp_path):
    import sqlite3
    db = tmp_path / "queue.sqlite3"
    con = sqlite3.connect(db)
    con.executescript("""CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL, origin TEXT NOT NULL, spool TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'waiting',
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0, deliver_since REAL,
        reason TEXT, outputs TEXT NOT NULL DEFAULT '[]', created REAL NOT NULL, updated REAL NOT NULL);
        INSERT INTO jobs (key, name, origin, spool, state, outputs, created, updated)
        VALUES ('k1', 'rec', 'watch', 'k1-rec.npy', 'done', '["rec.npy", "rec.dcm"]', 1, 1);""")
    con.commit()
    con.close()
    queue = JobQueue(db)
    try:
        assert queue.get(1).result_stem == "rec" and queue.get(1).source_name is None
        job_id = queue.add(new_key(), "rec", "watch", "k2-rec.npy", source_name="rec.npy")
        stem, names = queue.reserve_names(job_id, lambda s: [f"{s}.npy", f"{s}.dcm"], lambda name: False)
        assert (stem, names) == ("rec-2", ["rec-2.npy", "rec-2.dcm"])   # results moved away still count
    finally:
        queue.close()
