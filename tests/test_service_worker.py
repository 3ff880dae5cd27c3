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
from ecg_dicom.worker import Worker


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

    def spy(leads, fs):
        calls.append(len(leads))
        return original(leads, fs)

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


def test_sidecar_sets_the_rate(site):
    folders, queue, spool, worker, _ = site
    lead = synthetic_lead(seconds=6.0, fs=250.0)
    job = queue.get(spool.store_bytes(npy_bytes(lead), "slow.npy", "test"))
    spool.sidecar(job).write_text(json.dumps({"fs": 250, "lead": "lead I"}))
    run_once(worker)
    assert np.load(folders.output / "slow.npy").shape == (12, lead.size)
    assert queue.get(job.id).state == "done"


@pytest.mark.parametrize("sidecar, reason", [
    ({"fs": 500, "lead": "II"}, "model takes lead I"),
    ({"fs": "fast"}, "'fs' has the wrong type"),
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
