"""DICOM Storage Commitment Push Model (PS3.4 Annex J) as its SCU: after the C-STOREs of a
job, an N-ACTION asks the PACS to commit the instances; the PACS answers later with an
N-EVENT-REPORT, on the same association or (as Orthanc and most PACS do) on a new one to our
listener, where it plays the SCP role of the SOP class (role selection) and we the SCU.

==========================================  =====================================================
report                                      what becomes of the job
==========================================  =====================================================
every requested instance committed (type 1) delivered (to the C-STORE peer)
some failed (type 2) or missing             retried: stored and asked again after the back-off
none within ``commitment_timeout_s``        retried the same way (a transient failure)
unknown or outdated transaction UID         ignored (logged); answered Success
==========================================  =====================================================

Nothing here decides: :func:`handle_event_report` decodes the report and hands it to the
delivery (:meth:`ecg_dicom.outputs.pacs.Delivery.commitment_report`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance

LOG = logging.getLogger("ecg_dicom.commitment")
REQUEST_ACTION = 1          # N-ACTION Action Type ID: Request Storage Commitment
EVENT_SUCCESS = 1           # N-EVENT-REPORT Event Type ID: all committed
EVENT_FAILURES = 2          # ... some failed
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
FAILURE_REASONS = {0x0110: "processing failure", 0x0112: "no such object instance",
                   0x0213: "resource limitation", 0x0122: "SOP class not supported",
                   0x0119: "class/instance conflict", 0x0131: "duplicate transaction UID"}

__all__ = ["StorageCommitmentPushModel", "Report", "request_dataset", "new_transaction_uid",
           "handle_event_report", "reason_text"]


@dataclass(frozen=True)
class Report:
    """One N-EVENT-REPORT: the transaction it answers, the SOP Instance UIDs committed, and
    (SOP Instance UID, Failure Reason) for those that were not."""

    transaction_uid: str
    committed: tuple[str, ...]
    failed: tuple[tuple[str, int], ...]


def new_transaction_uid() -> str:
    return str(generate_uid())


def request_dataset(transaction_uid: str, instances: list[tuple[str, str]]) -> Dataset:
    """The N-ACTION Action Information: the transaction UID and a Referenced SOP Sequence of
    ``instances`` ((SOP Class UID, SOP Instance UID) pairs)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    refs = []
    for class_uid, instance_uid in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = class_uid
        item.ReferencedSOPInstanceUID = instance_uid
        refs.append(item)
    ds.ReferencedSOPSequence = refs
    return ds


def send_request(assoc, transaction_uid: str, instances: list[tuple[str, str]]) -> tuple[bool, str]:
    """N-ACTION on ``assoc``: (accepted, text). Not accepted: no response or a failure status."""
    status, _ = assoc.send_n_action(request_dataset(transaction_uid, instances), REQUEST_ACTION,
                                    StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
    code = getattr(status, "Status", None) if status is not None else None
    if code is None:
        return False, "storage commitment request: no response (timeout or abort)"
    if int(code) != SUCCESS:
        return False, f"storage commitment request refused: status 0x{int(code):04X}"
    return True, f"storage commitment requested for {len(instances)} instance(s)"


def parse_report(event_type: int | None, info: Dataset) -> Report:
    """The :class:`Report` in an N-EVENT-REPORT's Event Information. Raises ValueError when
    it is not a storage commitment report."""
    if event_type not in (EVENT_SUCCESS, EVENT_FAILURES):
        raise ValueError(f"event type {event_type} is not a storage commitment result")
    uid = str(info.get("TransactionUID", "") or "")
    if not uid:
        raise ValueError("no Transaction UID")
    committed = tuple(str(item.get("ReferencedSOPInstanceUID", "")) for item in info.get("ReferencedSOPSequence", []))
    failed = tuple((str(item.get("ReferencedSOPInstanceUID", "")), int(item.get("FailureReason", PROCESSING_FAILURE)))
                   for item in info.get("FailedSOPSequence", []))
    return Report(uid, committed, failed)


def reason_text(code: int) -> str:
    return f"0x{code:04X} {FAILURE_REASONS.get(code, 'failure')}"


def handle_event_report(event: evt.Event, on_report: Callable[[Report], None]) -> tuple[int, None]:
    """EVT_N_EVENT_REPORT (on our listener or on the delivery's own association): decode the
    report and hand it to ``on_report``; answer Success (0x0110 Processing Failure when it
    cannot be read, so the PACS knows it was not taken)."""
    if event.request.AffectedSOPClassUID != StorageCommitmentPushModel:
        LOG.warning("N-EVENT-REPORT for another SOP class ignored")
        return PROCESSING_FAILURE, None
    try:
        report = parse_report(event.request.EventTypeID, event.event_information)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        LOG.warning("storage commitment report not understood: %s", exc)
        return PROCESSING_FAILURE, None
    on_report(report)
    return SUCCESS, None
