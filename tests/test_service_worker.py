"""Worker in-process: batching, sidecars, rejections, names that stay inside the folders."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
from conftest import synthetic_lead

from ecg_dicom.config import Folders
from ecg_dicom.config import Worker as WorkerSettings
from ecg_dicom.ingest import Spool
from ecg_dicom.queue import JobQueue
from ecg_dicom.service.worker import Worker


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.fixture
def site(tmp_path, tiny_reconstructor):
    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "work")
    for folder in (folders.output, folders.rejected):
        folder.mkdir(parents=True)
    queue = JobQueue(folders.queue_db)
    spool = Spool(folders.spool, queue)
    calls = []
    original = tiny_reconstructor.reconstruct_batch

    def spy(leads, fs, *args, **kwargs):
        calls.append(len(leads))
        return original(leads, fs, *args, **kwargs)

    tiny_reconstructor.reconstruct_batch = spy
    worker = Worker(queue, spool, tiny_reconstructor, folders, WorkerSettings(batch_size=8, max_wait_s=0.0),
                    deliver=False)
    yield folders, queue, spool, worker, calls
    del tiny_reconstructor.reconstruct_batch
    queue.close()


def run_once(worker: Worker) -> None:
    worker.process(worker.next_batch(threading.Event()))


def test_good_inputs_share_one_model_call_and_a_bad_one_is_rejected_alone(site):
    folders, queue, spool, worker, calls = site
    for i in range(3):
        spool.store_bytes(npy_bytes(synthetic_lead(seconds=5.0, seed=i)), f"rec{i}.npy", "test")
    spool.store_bytes(b"garbage", "bad.npy", "test")
    run_once(worker)
    assert calls == [3]
    for i in range(3):
        leads = np.load(folders.output / f"rec{i}.npy")
        assert leads.shape == (12, 2500)
        np.testing.assert_allclose(leads[0], synthetic_lead(seconds=5.0, seed=i), atol=1e-3)  # lead I kept
        assert (folders.output / f"rec{i}.dcm").is_file()
    assert "neither a .npy array nor a DICOM file" in (folders.rejected / "bad.reason.txt").read_text()
    assert (folders.rejected / "bad.npy").read_bytes() == b"garbage"
    assert queue.counts()["done"] == 3 and queue.counts()["rejected"] == 1
    assert list(spool.folder.iterdir()) == []


def test_a_lone_job_is_not_held_back_but_a_burst_waits_for_its_batch_to_fill(site):
    """Issue 20 item 8: max_wait_s is for bursts; a job that arrives alone is claimed at once."""
    import time

    folders, queue, spool, worker, calls = site
    worker.settings = WorkerSettings(batch_size=8, max_wait_s=1.0)
    spool.store_bytes(npy_bytes(synthetic_lead(seconds=5.0, seed=0)), "alone.npy", "test")
    t0 = time.monotonic()
    assert [job.name for job in worker.next_batch(threading.Event())] == ["alone"]
    assert time.monotonic() - t0 < 0.5  # not the 1 s batch wait
    for i in range(2):
        spool.store_bytes(npy_bytes(synthetic_lead(seconds=5.0, seed=i)), f"burst{i}.npy", "test")
    late = threading.Timer(0.2, lambda: spool.store_bytes(npy_bytes(synthetic_lead(seconds=5.0, seed=9)),
                                                          "late.npy", "test"))
    late.start()
    try:
        batch = worker.next_batch(threading.Event())
    finally:
        late.join()
    assert [job.name for job in batch] == ["burst0", "burst1", "late"]  # two waiting: it waited for the third


def test_sidecar_sets_the_rate(site):
    folders, queue, spool, worker, _ = site
    lead = synthetic_lead(seconds=6.0, fs=250.0)
    job = queue.get(spool.store_bytes(npy_bytes(lead), "slow.npy", "test"))
    spool.sidecar(job).write_text(json.dumps({"fs": 250, "lead": "lead I"}))
    run_once(worker)
    assert np.load(folders.output / "slow.npy").shape == (12, lead.size)
    assert queue.get(job.id).state == "done"


@pytest.mark.parametrize("sidecar, reason", [
    ({"fs": 500, "lead": "II"}, "model in use takes lead I"),
    ({"fs": "fast"}, "'fs' must be a positive number"),
    ({"rate": 500}, "unknown key 'rate'"),
    ({"lead": "V9"}, "not a lead name"),
    ("not json", "not readable JSON"),
])
def test_bad_sidecars_are_rejected_with_a_reason(site, sidecar, reason):
    folders, queue, spool, worker, calls = site
    job = queue.get(spool.store_bytes(npy_bytes(synthetic_lead()), "x.npy", "test"))
    spool.sidecar(job).write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    run_once(worker)
    assert reason in (folders.rejected / "x.reason.txt").read_text()
    assert (folders.rejected / "x.json").is_file() and calls == []


def test_names_from_outside_never_leave_the_output_folder(site, tmp_path):
    folders, queue, spool, worker, _ = site
    spool.store_bytes(npy_bytes(synthetic_lead()), "../../escape.npy", "test")
    spool.store_bytes(b"junk", "..\\..\\evil", "test")
    run_once(worker)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert all(str(p).startswith(("out/", "work/")) for p in written), written
    assert (folders.output / "escape.npy").is_file()


def test_inputs_whose_names_clean_up_alike_each_keep_their_own_results(site):
    """Issue 10: `x y.npy` / `x_y.npy` / `x_y.npy` again, and a split result's part names
    (`long_001.dcm`) against an input called `long_001.npy`: every job its own files."""
    folders, queue, spool, worker, _ = site
    inputs = [(name, synthetic_lead(seconds=secs, seed=i)) for i, (name, secs) in enumerate(
        [("x y.npy", 5.0), ("x_y.npy", 5.0), ("x_y.npy", 6.0), ("long.npy", 40.0), ("long_001.npy", 5.0)])]
    ids = [spool.store_bytes(npy_bytes(lead), name, "test") for name, lead in inputs]
    run_once(worker)
    jobs = [queue.get(i) for i in ids]
    assert [j.state for j in jobs] == ["done"] * 5
    assert [j.result_stem for j in jobs] == ["x_y", "x_y-2", "x_y-3", "long", "long_001-2"]
    assert jobs[3].outputs == ("long.npy", "long_001.dcm", "long_002.dcm", "long.json")
    every = [name for job in jobs for name in job.outputs]
    assert len(every) == len(set(every)) == 3 * 3 + 4 + 3   # each with its <stem>.json
    for job, (_, lead) in zip(jobs, inputs):
        npy = np.load(folders.output / f"{job.result_stem}.npy")
        np.testing.assert_allclose(npy[0], lead, atol=1e-3)   # each result holds its own input
    assert [j.source_name for j in jobs] == [name for name, _ in inputs]


def test_a_result_already_in_the_output_folder_is_not_overwritten(site):
    folders, queue, spool, worker, _ = site
    (folders.output / "rec.npy").write_bytes(b"someone else's file")
    job_id = spool.store_bytes(npy_bytes(synthetic_lead()), "rec.npy", "test")
    run_once(worker)
    assert (folders.output / "rec.npy").read_bytes() == b"someone else's file"
    assert queue.get(job_id).outputs == ("rec-2.npy", "rec-2.dcm", "rec-2.json")


def test_a_job_done_again_after_a_crash_keeps_its_names(site):
    folders, queue, spool, worker, _ = site
    first = spool.store_bytes(npy_bytes(synthetic_lead(seed=1)), "rec.npy", "test")
    second = spool.store_bytes(npy_bytes(synthetic_lead(seed=2)), "rec.npy", "test")
    run_once(worker)
    # as if killed after writing, before the job was recorded done: it is done again
    queue._db.execute("UPDATE jobs SET state = 'waiting' WHERE id = ?", (second,))
    spool.path(queue.get(second)).write_bytes(npy_bytes(synthetic_lead(seed=2)))
    run_once(worker)
    assert queue.get(first).outputs == ("rec.npy", "rec.dcm", "rec.json")
    assert queue.get(second).outputs == ("rec-2.npy", "rec-2.dcm", "rec-2.json")
    assert sorted(p.name for p in folders.output.glob("rec*")) == ["rec-2.dcm", "rec-2.json", "rec-2.npy",
                                                                  "rec.dcm", "rec.json", "rec.npy"]


def test_a_rejected_input_is_never_overwritten(site):
    """Issue 11 item 2: the second rejection of the same name keeps the first input and reason."""
    folders, queue, spool, worker, _ = site
    first = spool.store_bytes(b"first garbage", "x.npy", "test")
    run_once(worker)
    second = spool.store_bytes(b"\x93NUMPY broken", "x.npy", "test")
    run_once(worker)
    assert (folders.rejected / "x.npy").read_bytes() == b"first garbage"
    assert (folders.rejected / "x-2.npy").read_bytes() == b"\x93NUMPY broken"
    assert "no NUMPY magic" in (folders.rejected / "x.reason.txt").read_text()
    assert "not a readable .npy" in (folders.rejected / "x-2.reason.txt").read_text()
    assert queue.get(first).outputs == ("rejected/x.npy", "rejected/x.reason.txt")
    assert queue.get(second).outputs == ("rejected/x-2.npy", "rejected/x-2.reason.txt")


def test_a_sidecar_files_the_result_under_its_patient_and_study(site):
    """Issue 11 item 1: patient, study, acquisition time and device from the sidecar."""
    from peers import dciodvfy_errors
    from pydicom import dcmread

    folders, queue, spool, worker, _ = site
    patient = {"PatientID": "MRN-0042", "PatientName": "Müller^Hans", "PatientBirthDate": "19700101",
               "PatientSex": "M", "StudyInstanceUID": "1.2.826.0.1.3680043.10.543.1", "AccessionNumber": "A1234",
               "StudyDate": "20240501", "StudyTime": "101500", "AcquisitionDateTime": "20240501101502",
               "InstitutionName": "General Hospital", "Manufacturer": "AliveCor",
               "ManufacturerModelName": "KardiaMobile"}
    job = queue.get(spool.store_bytes(npy_bytes(synthetic_lead(fs=300.0)), "rec.npy", "test"))
    spool.sidecar(job).write_text(json.dumps({"fs": 300, **patient}), encoding="utf-8")
    run_once(worker)
    assert queue.get(job.id).state == "done"
    ds = dcmread(folders.output / "rec.dcm")
    for keyword, value in patient.items():
        if keyword not in ("AcquisitionDateTime", "InstitutionName", "Manufacturer", "ManufacturerModelName"):
            assert str(ds[keyword].value) == value, keyword
    assert ds.AcquisitionDateTime.startswith("20240501101502")
    assert float(ds.WaveformSequence[0].SamplingFrequency) == 300.0
    processing, acquisition = ds.ContributingEquipmentSequence
    assert (acquisition.Manufacturer, acquisition.ManufacturerModelName, acquisition.InstitutionName) == \
        ("AliveCor", "KardiaMobile", "General Hospital")
    assert acquisition.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Acquisition Equipment"
    assert processing.Manufacturer == "ecg-dicom" and "unknown" not in str(ds.PatientName).lower()
    assert dciodvfy_errors(folders.output / "rec.dcm") == []


def test_without_a_patient_the_result_says_the_patient_is_unknown(site):
    from peers import dciodvfy_errors
    from pydicom import dcmread

    folders, queue, spool, worker, _ = site
    spool.store_bytes(npy_bytes(synthetic_lead(seed=1)), "a.npy", "test")
    spool.store_bytes(npy_bytes(synthetic_lead(seed=2)), "b.npy", "test")
    run_once(worker)
    a, b = dcmread(folders.output / "a.dcm"), dcmread(folders.output / "b.dcm")
    assert str(a.PatientName) == "UNKNOWN" and a.PatientID.startswith("UNKNOWN-")
    assert a.PatientID != b.PatientID          # two unknown recordings are not one patient
    assert a.IssuerOfPatientID == "ecg-dicom (no patient identity given)"
    assert "Patient unknown" in a.PatientComments
    assert "Patient unknown" in a.WaveformAnnotationSequence[1].UnformattedTextValue
    assert dciodvfy_errors(folders.output / "a.dcm") == []


def test_a_rejection_carries_the_note_ingest_left(site, tmp_path):
    folders, queue, spool, worker, _ = site
    (tmp_path / "x.npy").write_bytes(b"second part of a file")
    job_id = spool.claim(tmp_path / "x.npy", "watch", note="A file of the same name was taken 2.5 s before it.")
    run_once(worker)
    reason = (folders.rejected / "x.reason.txt").read_text()
    assert "no NUMPY magic" in reason and "taken 2.5 s before it" in reason
    assert queue.get(job_id).reason == reason.strip()


def test_a_long_input_does_not_hold_short_ones_back(site):
    """Issue 11 item 6: a 10-minute input is worked on a forward batch at a time; a short
    job that arrives meanwhile is done before it, and the long result is what one pass gives."""
    from ecg_dicom.service.worker import LONG_JOB_WINDOWS

    folders, queue, spool, worker, calls = site
    long_lead = synthetic_lead(seconds=600.0, seed=5)
    long_id = spool.store_bytes(npy_bytes(long_lead), "long.npy", "test")
    worker.step(threading.Event())
    assert worker.long is not None and worker.long.task.total > LONG_JOB_WINDOWS
    short_id = spool.store_bytes(npy_bytes(synthetic_lead(seed=6)), "short.npy", "test")
    worker.step(threading.Event())
    assert queue.get(short_id).state == "done" and queue.get(long_id).state == "processing"
    steps = 0
    while worker.long is not None:
        assert worker.step(threading.Event())
        steps += 1
    assert steps > 3
    assert queue.get(long_id).state == "done"
    np.testing.assert_array_equal(np.load(folders.output / "long.npy"),
                                  worker.reconstructor.reconstruct(long_lead.astype(np.float64), 500.0))


def test_a_stop_puts_the_long_job_in_hand_back(site):
    folders, queue, spool, worker, _ = site
    long_id = spool.store_bytes(npy_bytes(synthetic_lead(seconds=600.0)), "long.npy", "test")
    worker.step(threading.Event())
    worker.step(threading.Event())
    assert worker.long is not None and queue.get(long_id).state == "processing"
    stop = threading.Event()
    stop.set()
    worker.run(stop)
    assert worker.long is None and queue.get(long_id).state == "waiting"
    assert spool.path(queue.get(long_id)).is_file()


def test_a_second_long_input_waits_for_the_first(site):
    folders, queue, spool, worker, _ = site
    first = spool.store_bytes(npy_bytes(synthetic_lead(seconds=300.0, seed=1)), "a.npy", "test")
    second = spool.store_bytes(npy_bytes(synthetic_lead(seconds=300.0, seed=2)), "b.npy", "test")
    worker.step(threading.Event())
    assert worker.long.job.id == first and queue.get(second).state == "waiting"
    while queue.get(second).state != "done":
        assert worker.step(threading.Event())
    assert queue.get(first).state == "done"


def test_the_service_says_how_to_declare_millivolts(site):
    """Issue 11 item 9: the hint names the sidecar's `units`, the service's way to say it."""
    folders, queue, spool, worker, _ = site
    spool.store_bytes(npy_bytes(synthetic_lead() / 1000), "mv.npy", "test")
    run_once(worker)
    assert '"units": "mV" in the .npy\'s <stem>.json sidecar' in (folders.rejected / "mv.reason.txt").read_text()


def test_a_wfdb_record_is_read_from_its_companions_and_rejected_with_them(site, shared_data, tmp_path):
    """The spool keeps a header's signal files in <spool file>.files/: read from there, removed
    when done, moved to rejected/ beside the header (as <name>.files/) when refused."""
    folders, queue, spool, worker, calls = site
    inbox = tmp_path / "drop"
    inbox.mkdir()
    header = (shared_data / "ecg12/ptbxl/00001_lr.hea").read_text()
    data = (shared_data / "ecg12/ptbxl/00001_lr.dat").read_bytes()
    for stem, payload in (("good", data), ("short", data[:500])):
        (inbox / f"{stem}.hea").write_text(header.replace("00001_lr", stem))
        (inbox / f"{stem}.dat").write_bytes(payload)
        spool.claim(inbox / f"{stem}.hea", "watch", companions=[inbox / f"{stem}.dat"])
    assert list(inbox.iterdir()) == []
    run_once(worker)
    assert np.load(folders.output / "good.npy").shape[0] == 12
    assert "holds 20 of the 1000 samples" in (folders.rejected / "short.reason.txt").read_text()
    assert (folders.rejected / "short.files" / "short.dat").read_bytes() == data[:500]
    assert (folders.rejected / "short.hea").is_file()
    assert list(spool.folder.iterdir()) == []


def test_an_assumed_rate_is_logged_and_written_with_the_result(site, caplog):
    """Issue 20 item 5: the service says when a .npy's rate is assumed, and whose sidecar sets it."""
    folders, queue, spool, worker, _ = site
    spool.store_bytes(npy_bytes(synthetic_lead()), "bare.npy", "test")
    job = queue.get(spool.store_bytes(npy_bytes(synthetic_lead(fs=250.0)), "told.npy", "test"))
    spool.sidecar(job).write_text(json.dumps({"fs": 250}))
    with caplog.at_level("WARNING", logger="ecg_dicom.worker"):
        run_once(worker)
    assert json.loads((folders.output / "bare.json").read_text())["fs_source"] == "assumed (no sidecar)"
    assert json.loads((folders.output / "told.json").read_text())["fs_source"] == "sidecar"
    assumed = [r.getMessage() for r in caplog.records if "rate was assumed" in r.getMessage()]
    assert len(assumed) == 1 and "assumed to be 500 Hz" in assumed[0]


def test_a_job_whose_release_failed_on_a_full_disk_is_done_once_space_returns(site, monkeypatch, caplog):
    """Issue 22 item 1: the outputs cannot be written (ENOSPC) and the job store, on the same
    full disk, cannot take the job back either: the job used to stay `processing` until a
    restart. Now the worker hands it back itself once the store can be written again."""
    import sqlite3

    from peers import wait_for

    import ecg_dicom.service.worker as worker_module

    caplog.set_level("INFO", logger="ecg_dicom")
    folders, queue, spool, worker, _ = site
    job_id = spool.store_bytes(npy_bytes(synthetic_lead(seconds=5.0)), "full.npy", "test")
    failures = {"reserve": 1, "write": 3, "release": 1, "claim": 2}
    states: list[bool] = []
    real_write, real_release, real_claim = worker_module.write_outputs, queue.release, queue.claim
    real_reserve = queue.reserve_names

    def reserve(*args, **kwargs):   # the job store full when the names are reserved: not the input's fault
        if failures["reserve"]:
            failures["reserve"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real_reserve(*args, **kwargs)

    def write(*args, **kwargs):
        if failures["write"]:
            failures["write"] -= 1
            raise OSError(28, "No space left on device")
        return real_write(*args, **kwargs)

    def release(job: int) -> None:
        if failures["release"]:
            failures["release"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        real_release(job)

    def claim(*args, **kwargs):
        states.append(worker.storage_ok)
        if failures["claim"] and not failures["release"]:   # the store still full for a while
            failures["claim"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(worker_module, "write_outputs", write)
    monkeypatch.setattr(worker_module, "OUTPUT_RETRY_S", 0.05)
    monkeypatch.setattr(queue, "release", release)
    monkeypatch.setattr(queue, "claim", claim)
    monkeypatch.setattr(queue, "reserve_names", reserve)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: queue.get(job_id).state == "done", 30, "the job done without a restart")
    finally:
        stop.set()
        thread.join(10)
    assert (folders.output / "full.npy").is_file()
    assert False in states and worker.storage_ok    # not ready while failing, ready again after
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2, errors   # one when outputs start failing, one when the job store does
    assert "job store can be written again" in caplog.text and "outputs can be written again" in caplog.text
    assert "Traceback" not in caplog.text and queue.counts()["rejected"] == 0
