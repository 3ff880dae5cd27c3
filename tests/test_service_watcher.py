"""Watched folder with a real inotify observer: complete files only, each taken once."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time

import numpy as np
import pytest
from conftest import synthetic_lead
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

    def start(**settings) -> FolderWatcher:
        watcher = FolderWatcher(inbox, spool, WatcherSettings(**{"stable_s": 0.5, "rescan_s": 0.5, **settings}),
                                tmp_path / "rejected")
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


def npy_bytes(seconds: float = 5.0) -> bytes:
    buf = io.BytesIO()
    np.save(buf, synthetic_lead(seconds=seconds))
    return buf.getvalue()


def write_in_two_opens(path, data: bytes, cut: int, pause: float) -> None:
    """What `head -c CUT f > path; sleep PAUSE; tail -c +CUT+1 f >> path` does."""
    with open(path, "wb") as fh:
        fh.write(data[:cut])
    time.sleep(pause)
    with open(path, "ab") as fh:
        fh.write(data[cut:])


@pytest.mark.parametrize("name", ["x.npy", "cart.dcm"])
def test_a_file_written_in_two_opens_is_taken_once_whole(watched, shared_data, name):
    """Issue 11 item 2: the first close must not hand over a half-written .npy or DICOM file."""
    inbox, queue, spool, start = watched
    start()
    if name.endswith(".npy"):
        data, cut = npy_bytes(), 10_000
    else:
        data = (shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm").read_bytes()
        cut = len(data) // 2
    write_in_two_opens(inbox / name, data, cut, 2.5)
    wait_for(lambda: queue.jobs(), 10, "the whole file")
    time.sleep(1.0)
    [job] = queue.jobs()
    assert spool.path(job).read_bytes() == data


def test_a_cut_short_file_is_taken_only_after_incomplete_wait_s(watched, caplog):
    inbox, queue, spool, start = watched
    start(incomplete_wait_s=3.0, sidecar_wait_s=0.0)
    (inbox / "cut.npy").write_bytes(npy_bytes()[:10_000])
    time.sleep(2.0)
    assert queue.jobs() == []
    wait_for(lambda: queue.jobs(), 10, "the cut-short file, after the wait")
    assert "still looks cut short" in caplog.text


def test_a_file_named_like_one_just_taken_carries_a_note(watched):
    inbox, queue, spool, start = watched
    start(sidecar_wait_s=0.0)
    (inbox / "x.npy").write_bytes(b"first part, not a .npy")
    wait_for(lambda: len(queue.jobs()) == 1, 10, "the first part")
    (inbox / "x.npy").write_bytes(b"second part")
    wait_for(lambda: len(queue.jobs()) == 2, 10, "the second part")
    first, second = queue.jobs()
    assert first.note is None and "taken" in second.note and f"(job {first.id})" in second.note


def test_a_npy_waits_for_a_sidecar_that_comes_just_after_it(watched):
    """Issue 11 item 3: the sidecar 0.3 s after its .npy is still taken with it."""
    inbox, queue, spool, start = watched
    start(sidecar_wait_s=2.0)
    (inbox / "af.npy").write_bytes(npy_bytes())
    time.sleep(0.3)
    (inbox / "af.json").write_text(json.dumps({"fs": 300}))
    wait_for(lambda: queue.jobs(), 10, "the .npy")
    [job] = queue.jobs()
    assert json.loads(spool.sidecar(job).read_text()) == {"fs": 300}
    assert list(inbox.iterdir()) == []


def test_a_sidecar_later_than_the_wait_is_refused_with_a_reason(watched, tmp_path):
    inbox, queue, spool, start = watched
    start(sidecar_wait_s=0.5)
    (inbox / "late.npy").write_bytes(npy_bytes())
    wait_for(lambda: queue.jobs(), 10, "the .npy")
    (inbox / "late.json").write_text(json.dumps({"fs": 300}))
    wait_for(lambda: len(queue.jobs()) == 2, 10, "the late sidecar to be refused")
    taken, refused = queue.jobs()
    assert refused.state == "rejected" and f"after its .npy was taken (job {taken.id})" in refused.reason
    assert (tmp_path / "rejected" / "late.json").read_text() == '{"fs": 300}'
    assert "not applied" in (tmp_path / "rejected" / "late.json.reason.txt").read_text()
    assert refused.outputs == ("rejected/late.json", "rejected/late.json.reason.txt")
    assert list(inbox.iterdir()) == []


def test_a_stray_sidecar_is_refused_after_stray_sidecar_s(watched, tmp_path):
    inbox, queue, spool, start = watched
    (inbox / "alone.json").write_text("{}")
    (inbox / "coming.json").write_text("{}")
    (inbox / "coming.npy.part").write_bytes(b"upload in progress")
    start(stray_sidecar_s=1.5)
    wait_for(lambda: queue.jobs(), 10, "the stray sidecar to be refused")
    time.sleep(1.0)
    [job] = queue.jobs()
    assert job.state == "rejected" and "no .npy of the same name" in job.reason
    assert sorted(p.name for p in inbox.iterdir()) == ["coming.json", "coming.npy.part"]


WFDB_HEADER = "rec 2 500 2500\nrec.dat 16 200/mV 16 0 0 0 0 I\nrec.dat 16 200/mV 16 0 0 0 0 II\n"


def test_a_wfdb_header_waits_for_its_signal_file_and_both_go_as_one_job(watched, tmp_path):
    inbox, queue, spool, start = watched
    start(incomplete_wait_s=30)
    (inbox / "rec.hea").write_text(WFDB_HEADER)
    time.sleep(2.0)  # four times stable_s: the header alone is complete-looking but must wait
    assert queue.jobs() == []
    staged = tmp_path / "rec.dat"
    staged.write_bytes(b"\x01\x00" * 2 * 2500)
    os.replace(staged, inbox / "rec.dat")
    wait_for(lambda: queue.jobs(), 10, "the record")
    [job] = queue.jobs()
    assert job.name == "rec" and spool.path(job).read_text() == WFDB_HEADER
    assert (spool.companions(job) / "rec.dat").read_bytes() == b"\x01\x00" * 5000
    assert list(inbox.iterdir()) == []
    spool.remove(job)
    assert not spool.companions(job).exists()


def test_a_signal_file_cut_short_holds_its_header(watched):
    inbox, queue, spool, start = watched
    (inbox / "rec.dat").write_bytes(b"\x00" * 100)  # 10000 bytes declared
    (inbox / "rec.hea").write_text(WFDB_HEADER)
    start(incomplete_wait_s=1.5)
    time.sleep(1.0)
    assert queue.jobs() == []
    wait_for(lambda: queue.jobs(), 10, "the header, taken after incomplete_wait_s")
    [job] = queue.jobs()  # taken with what there is: the worker rejects it with the reason
    assert (spool.companions(job) / "rec.dat").stat().st_size == 100


def test_a_lone_signal_file_is_never_taken_and_refused_after_stray_sidecar_s(watched, tmp_path):
    inbox, queue, spool, start = watched
    (inbox / "orphan.dat").write_bytes(b"\x00" * 64)
    (inbox / "orphan.xyz").write_bytes(b"\x00" * 64)   # no header names it: an input of its own
    start(stray_sidecar_s=1.5)
    wait_for(lambda: len(queue.jobs()) == 2, 10, "the .xyz taken and the stray .dat refused")
    refused = next(j for j in queue.jobs() if j.state == "rejected")
    assert "WFDB signal file with no .hea header" in refused.reason
    assert (tmp_path / "rejected" / "orphan.dat").read_bytes() == b"\x00" * 64


def test_every_signal_file_a_header_names_goes_with_it(watched):
    """PTB keeps the Frank leads in X.xyz beside X.dat: both go with X.hea, neither alone."""
    inbox, queue, spool, start = watched
    header = WFDB_HEADER + "rec.xyz 16 200/mV 16 0 0 0 0 vx\n"
    header = header.replace("rec 2 ", "rec 3 ")
    (inbox / "rec.xyz").write_bytes(b"\x00" * 5000)
    (inbox / "rec.dat").write_bytes(b"\x00" * 10000)
    (inbox / "rec.hea").write_text(header)
    start()
    wait_for(lambda: queue.jobs(), 10, "the record")
    time.sleep(1.0)
    [job] = queue.jobs()
    assert sorted(p.name for p in spool.companions(job).iterdir()) == ["rec.dat", "rec.xyz"]
    assert list(inbox.iterdir()) == []


def test_a_refused_header_still_takes_its_signal_file_along(watched):
    """A header the reader will refuse (format 8) is still a header: its .dat goes with it."""
    inbox, queue, spool, start = watched
    (inbox / "rec.dat").write_bytes(b"\x00" * 10000)
    (inbox / "rec.hea").write_text(WFDB_HEADER.replace(" 16 ", " 8 "))
    start(stray_sidecar_s=1.0)
    wait_for(lambda: queue.jobs(), 10, "the record")
    time.sleep(1.5)
    [job] = queue.jobs()
    assert (spool.companions(job) / "rec.dat").is_file() and list(inbox.iterdir()) == []


def test_entries_that_can_never_be_inputs_are_moved_aside_with_a_reason(watched, tmp_path, caplog):
    """Issue 22 item 4: `..npy`, FIFOs, device nodes and folders named *.npy / *.dcm used to
    stay in the inbox forever without a word. A FIFO is never opened (that would block)."""
    inbox, queue, spool, start = watched
    (inbox / "..npy").write_bytes(npy_bytes())
    os.mkfifo(inbox / "pipe.npy")
    os.mkfifo(inbox / "plain_fifo")
    try:
        os.mknod(inbox / "dev.dcm", 0o600 | stat.S_IFCHR, os.makedev(1, 3))   # like /dev/null
        device = True
    except PermissionError:
        device = False
    (inbox / "folder.npy").mkdir()
    (inbox / "folder.npy" / "inside.npy").write_bytes(b"x")
    (inbox / "study.DCM").mkdir()
    (inbox / "archive").mkdir()            # an ordinary subfolder: not ours to move
    start()
    expected = 5 + device
    wait_for(lambda: len(queue.jobs()) == expected, 15, "every entry taken or refused")
    assert sorted(p.name for p in inbox.iterdir()) == ["archive"]
    rejected = tmp_path / "rejected"
    reasons = {p.name: p.read_text() for p in rejected.glob("*.reason.txt")}
    assert "named pipe (FIFO)" in reasons["pipe.npy.reason.txt"] and "named pipe" in reasons["plain_fifo.reason.txt"]
    assert stat.S_ISFIFO((rejected / "pipe.npy").lstat().st_mode)
    assert "folder named like an input" in reasons["folder.npy.reason.txt"]
    assert (rejected / "folder.npy" / "inside.npy").read_bytes() == b"x"   # moved whole, not emptied
    assert "folder named like an input" in reasons["study.DCM.reason.txt"]
    if device:
        assert "device node" in reasons["dev.dcm.reason.txt"]
    states = sorted(job.state for job in queue.jobs())
    assert states == ["rejected"] * (expected - 1) + ["waiting"]      # `..npy` is an input: taken
    [taken] = [job for job in queue.jobs() if job.state == "waiting"]
    assert taken.source_name == "..npy" and spool.path(taken).read_bytes() == npy_bytes()
    assert caplog.text.count("rejected: ") >= expected - 1


def test_an_entry_that_cannot_be_moved_aside_is_named_once_in_the_log(watched, tmp_path, caplog):
    inbox, queue, _, start = watched
    (tmp_path / "rejected").write_text("a file where the rejected folder should be")
    os.mkfifo(inbox / "pipe.npy")
    start()
    wait_for(lambda: "can never be an input stays in the watched folder" in caplog.text, 10, "the warning")
    time.sleep(1.5)   # three more rescans
    assert caplog.text.count("can never be an input stays in the watched folder") == 1
    assert queue.jobs() == [] and (inbox / "pipe.npy").exists()
