"""Storage commitment against a pynetdicom PACS that answers what the test chooses, on the
same association (as dcm4chee may): failed instances are retried, a report naming every
instance settles the job, an unknown transaction is ignored. The Orthanc path (report on a
new association to the listener) is in test_service_commitment.py."""

from __future__ import annotations

import threading
import time

import pytest
from peers import PACS_AET, free_port, wait_for
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance

from ecg_dicom.config import Pacs
from ecg_dicom.dicom.codes import OUTPUT_SOP_CLASSES
from ecg_dicom.outputs.commitment import Report
from ecg_dicom.outputs.pacs import Delivery

pytestmark = pytest.mark.slow


@pytest.fixture
def committing_pacs():
    """Stores everything; answers each N-ACTION Success, then 0.2 s later sends the report on
    the same association: every instance committed, or those in ``Peer.fail`` failed."""
    class Peer:
        port = free_port()
        fail: dict[str, int] = {}
        requests: list[str] = []

    def report(assoc, info: Dataset) -> None:
        time.sleep(0.2)
        out = Dataset()
        out.TransactionUID = info.TransactionUID
        ok, failed = [], []
        for item in info.ReferencedSOPSequence:
            ref = Dataset()
            ref.ReferencedSOPClassUID = item.ReferencedSOPClassUID
            ref.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
            if item.ReferencedSOPInstanceUID in Peer.fail:
                ref.FailureReason = Peer.fail[item.ReferencedSOPInstanceUID]
                failed.append(ref)
            else:
                ok.append(ref)
        if ok:
            out.ReferencedSOPSequence = ok
        if failed:
            out.FailedSOPSequence = failed
        assoc.send_n_event_report(out, 2 if failed else 1, StorageCommitmentPushModel,
                                  StorageCommitmentPushModelInstance)

    def on_action(event: evt.Event):
        info = event.action_information
        Peer.requests.append(str(info.TransactionUID))
        threading.Thread(target=report, args=(event.assoc, info), daemon=True).start()
        return 0x0000, None

    ae = AE(ae_title=PACS_AET)
    for uid in [*OUTPUT_SOP_CLASSES, StorageCommitmentPushModel]:
        ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", Peer.port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_N_ACTION, on_action)])
    yield Peer
    server.shutdown()


def delivery(site, port: int) -> Delivery:
    folders, queue, _ = site
    pacs = Pacs(PACS_AET, "127.0.0.1", port, timeout_s=5.0, retry_initial_s=10.0, storage_commitment=True)
    return Delivery(queue, pacs, folders, "ECGDICOM", 8)


def test_failed_instances_are_retried_and_a_full_report_settles_the_job(site, committing_pacs):
    folders, queue, job_id = site
    uid = str(dcmread(folders.output / "r.dcm", stop_before_pixels=True).SOPInstanceUID)
    committing_pacs.fail = {uid: 0x0112}
    sender = delivery(site, committing_pacs.port)
    try:
        sender.deliver(queue.due(time.time(), 8), keep_open=True)   # the report comes on this association
        job = wait_for(lambda: (j := queue.get(job_id)).attempts and j, 10, "the failure report")
        assert job.state == "delivering" and job.commitment is None
        assert job.reason == "storage commitment failed for 1 of 1 instance(s): 0x0112 no such object instance"
        assert queue.uncommitted() == [job]       # what ecg-dicom status lists

        committing_pacs.fail = {}
        queue.retry_later(job_id, 0.0, job.reason)   # due again now
        sender.deliver(queue.due(time.time(), 8), keep_open=True)
        wait_for(lambda: queue.get(job_id).state == "done", 10, "the job to be committed")
        assert len(committing_pacs.requests) == 2 and len(set(committing_pacs.requests)) == 2
        assert queue.get(job_id).delivered_to == ("dicom",)
    finally:
        sender._release()


def test_a_report_for_an_unknown_or_outdated_transaction_changes_nothing(site, committing_pacs, caplog):
    folders, queue, job_id = site
    sender = delivery(site, committing_pacs.port)
    with caplog.at_level("WARNING", logger="ecg_dicom.pacs"):
        sender.commitment_report(Report("1.2.3.4", ("1.2.3.5",), ()))
    assert queue.get(job_id).state == "delivering" and "no job awaits it" in caplog.text
    assert "1.2.3.4" not in caplog.text     # UIDs are logged as hashes
