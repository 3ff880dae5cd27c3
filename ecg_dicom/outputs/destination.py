"""What every delivery kind offers :class:`~ecg_dicom.outputs.pacs.Delivery`: a destination
takes a batch of jobs and says, per job, what became of its DICOM results.

Kinds: :class:`~ecg_dicom.outputs.pacs.CStore` (DIMSE C-STORE, optionally with storage
commitment) and :class:`~ecg_dicom.outputs.dicomweb.StowRs` (DICOMweb STOW-RS). The
delivery records per job which destinations already hold its results (``Job.delivered_to``),
so a job that one of two destinations refused is sent again only where it is missing.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol, Sequence

from ecg_dicom.queue import Job


class Outcome(Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    PENDING = "pending"  # stored; the PACS's storage commitment report is awaited


class Destination(Protocol):
    """One place results go to.

    ``key``: how the job store records it (``dicom``, ``dicomweb``); ``label``: how logs name
    it (no credentials).
    """

    key: str
    label: str

    def send(self, jobs: Sequence[Job], keep_open: bool) -> dict[int, tuple[Outcome, str]]:
        """Send every DICOM result of ``jobs``; {job id: (outcome, short text)} for each job.
        ``keep_open``: keep the connection for the next call (released by :meth:`release`)."""
        ...

    def idle(self, seconds: float) -> bool:
        """True when a connection is held and has been unused for more than ``seconds``."""
        ...

    def release(self) -> None:
        """Close what is held open (nothing to do when nothing is)."""
        ...


def dicom_results(job: Job) -> list[str]:
    """The job's DICOM result files (waveform object(s), the report page), relative to the
    output folder."""
    return [name for name in job.outputs if name.endswith(".dcm")]


def summary(texts: list[str]) -> str:
    """``status 0x0000`` x 110 -> ``110 x status 0x0000``: one short line for a split result."""
    counts: dict[str, int] = {}
    for text in texts:
        counts[text] = counts.get(text, 0) + 1
    return ", ".join(text if n == 1 else f"{n} x {text}" for text, n in counts.items())
