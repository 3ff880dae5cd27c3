"""The running delivery keeps one association to PACS open between batches of results and
releases it once idle (issue 13: a new association per result cost a negotiation each time)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

from peers import PACS_AET, free_port, wait_for
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from ecg_dicom.config import Folders, Pacs
from ecg_dicom.dicom.codes import OUTPUT_SOP_CLASSES
from ecg_dicom.outputs import pacs as pacs_module
from ecg_dicom.outputs.pacs import Delivery
from ecg_dicom.queue import JobQueue, new_key


def test_one_association_for_results_arriving_apart_released_when_idle(tmp_path: Path, shared_data: Path,
                                                                       monkeypatch) -> None:
    monkeypatch.setattr(pacs_module, "IDLE_RELEASE_S", 1.0)
    opened, released, stored = [], [], []
    ae = AE(ae_title=PACS_AET)
    for uid in OUTPUT_SOP_CLASSES:
        ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])

    def on_store(event):
        stored.append(event.dataset.SOPInstanceUID)
        return 0x0000

    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, on_store), (evt.EVT_ACCEPTED, lambda event: opened.append(1)),
        (evt.EVT_RELEASED, lambda event: released.append(1))])
    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "work")
    folders.output.mkdir()
    queue = JobQueue(folders.queue_db)
    delivery = Delivery(queue, Pacs(PACS_AET, "127.0.0.1", port, timeout_s=5.0), folders, "ECGDICOM", 8)
    stop = threading.Event()
    thread = threading.Thread(target=delivery.run, args=(stop,), daemon=True)
    thread.start()
    try:
        for n in range(3):  # results arriving one by one, as the worker finishes them
            shutil.copy(shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm",
                        folders.output / f"r{n}.dcm")
            job_id = queue.add(new_key(), f"r{n}", "scp", "spooled")
            queue.claim(1)
            queue.processed(job_id, [f"r{n}.dcm"], deliver=True)
            wait_for(lambda: len(stored) == n + 1, 30, f"result {n} stored")
            time.sleep(0.3)
            # Nagle off: no 40 ms delayed-ACK stall per store
            kept = wait_for(lambda: delivery.destinations[0]._open, 10, "the association kept open")
            assert kept.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert len(opened) == 1 and not released, "one association, kept open between results"
        wait_for(lambda: len(released) == 1, 10, "the idle association released")
        assert [job.state for job in queue.jobs()] == ["done"] * 3
    finally:
        stop.set()
        thread.join(10)
        server.shutdown()
        queue.close()
    assert len(opened) == 1
