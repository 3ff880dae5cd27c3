"""Watched folder with a real inotify observer: complete files only, each taken once."""

from __future__ import annotations

import os
import threading
import time

import pytest
from peers import wait_for

from ecg_dicom.config import Watcher as WatcherSettings
from ecg_dicom.ingest import Spool
from ecg_dicom.ingest.watcher import FolderWatcher
from ecg_dicom.queue import JobQueue


@pytest.fixture
def watched(tmp_path):
    """(inbox, queue, spool, start): ``start()`` runs a watcher until the test ends."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    queue = JobQueue(tmp_path / "work" / "queue.sqlite3")
    spool = Spool(tmp_path / "work" / "spool", queue)
    watchers = []

    def start() -> FolderWatcher:
        watcher = FolderWatcher(inbox, spool, WatcherSettings(stable_s=0.5, rescan_s=0.5))
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        watchers.append((watcher, thread))
        time.sleep(0.3)  # observer scheduled
        return watcher

    yield inbox, queue, spool, start
    for watcher, thread in watchers:
        watcher.stop()
        thread.join(5)
    queue.close()


def spooled(queue: JobQueue, spool: Spool) -> dict[str, bytes]:
    return {job.name: spool.path(job).read_bytes() for job in queue.jobs()}


def test_files_present_at_start_are_taken(watched):
    inbox, queue, spool, start = watched
    (inbox / "a.npy").write_bytes(b"A" * 100)
    (inbox / "b.dcm").write_bytes(b"B" * 100)
    start()
    wait_for(lambda: len(queue.jobs()) == 2, 10, "both files")
    assert spooled(queue, spool) == {"a": b"A" * 100, "b": b"B" * 100}
    assert list(inbox.iterdir()) == []


def test_a_file_still_being_written_waits_for_its_close(watched):
    inbox, queue, spool, start = watched
    start()
    with open(inbox / "slow.npy", "wb") as fh:
        fh.write(b"first half ")
        fh.flush()
        os.fsync(fh.fileno())
        time.sleep(1.5)  # three times stable_s without a change: still open, not taken
        assert queue.jobs() == []
        fh.write(b"second half")
    wait_for(lambda: queue.jobs(), 5, "the closed file")
    assert spooled(queue, spool) == {"slow": b"first half second half"}


def test_moved_in_file_with_sidecar_is_taken_once(watched, tmp_path):
    inbox, queue, spool, start = watched
    start()
    (inbox / "rec.json").write_text('{"fs": 250}')
    staged = tmp_path / "rec.npy"
    staged.write_bytes(b"npy")
    os.replace(staged, inbox / "rec.npy")
    wait_for(lambda: queue.jobs(), 5, "the moved-in file")
    time.sleep(1.5)  # rescans and late events must not take it again
    [job] = queue.jobs()
    assert spool.sidecar(job).read_text() == '{"fs": 250}'
    assert list(inbox.iterdir()) == []


def test_hidden_partial_and_lone_sidecar_files_are_left_alone(watched):
    inbox, queue, _, start = watched
    for name in (".hidden.npy", "upload.npy.part", "x.tmp", "lone.json"):
        (inbox / name).write_bytes(b"x")
    start()
    time.sleep(1.5)
    assert queue.jobs() == []
    assert len(list(inbox.iterdir())) == 4
