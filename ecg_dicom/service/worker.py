"""Worker: waiting jobs -> model (batched) -> ``<name>.npy`` + ``<name>.dcm`` in the output folder.

Jobs are claimed in batches (up to ``batch_size``, waiting at most ``max_wait_s`` for a
batch to fill), read and checked one by one (a bad input is rejected alone, with its
reason), and reconstructed together in one :meth:`Reconstructor.reconstruct_isolated` call.
Outputs are written atomically before the job moves on, so a crash at any point leaves
either nothing or complete files, and the job is simply done again at restart.

Long inputs do not hold short ones back: an input of more than :data:`LONG_JOB_WINDOWS`
model windows (about 2.7 minutes of ECG) is a long job, worked on one forward batch at a
time (:class:`~ecg_dicom.core.inference.ReconstructionTask`) with the short jobs that
arrive meanwhile done in between; its progress is logged every :data:`PROGRESS_LOG_STEP` %. One long job is in hand at a time (others wait their turn in the job store), so
memory stays bounded, and what it freed is handed back to the system afterwards. A stop
request is honoured between two steps: a long job in hand goes back to ``waiting`` and
starts again at the next start.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass

from ecg_dicom.service import metrics
from ecg_dicom.config import Folders
from ecg_dicom.config import Worker as WorkerSettings
from ecg_dicom.core.inference import Reconstruction, ReconstructionTask, Reconstructor
from ecg_dicom.errors import InputError
from ecg_dicom.files import REASON_SUFFIX, REJECTED_PREFIX, free_stem, write_reason
from ecg_dicom.ingest import SIDECAR_SUFFIX, Spool
from ecg_dicom.inputs import LeadInput, load_input, refuse_links
from ecg_dicom.limits import DEFAULT_LIMITS, Limits
from ecg_dicom.logsafe import strip_wire, wire
from ecg_dicom.service.memory import release_freed_memory
from ecg_dicom.outputs.results import result_file_names, write_outputs
from ecg_dicom.queue import Job, JobQueue

LOG = logging.getLogger("ecg_dicom.worker")
NPY_DEFAULT_FS = 500.0
# How long to wait before trying again when outputs could not be written (disk full, ...)
OUTPUT_RETRY_S = 5.0
LONG_JOB_WINDOWS = 64      # model windows (5 s each, 2.5 s apart) above which a job is worked on in steps
PROGRESS_LOG_STEP = 10     # a long job logs its progress at every 10 %


@dataclass
class _LongJob:
    """The long job in hand: its input, its task, when it started, the last percentage logged."""

    job: Job
    inp: LeadInput
    task: ReconstructionTask
    started: float
    logged: int = 0


class Worker:
    """Turns waiting jobs into outputs; run :meth:`run` in a thread.

    Parameters
    ----------
    queue, spool : the job store and the spool its inputs are in.
    reconstructor : the loaded model.
    folders : output and rejected folders.
    settings : batch size and batch wait.
    deliver : True when a PACS is configured (processed jobs then go to ``delivering``).
    limits : input size limits (see :mod:`ecg_dicom.limits`).
    report_paper : paper size of the 12-lead page written with every result, None for none.
    """

    def __init__(self, queue: JobQueue, spool: Spool, reconstructor: Reconstructor, folders: Folders,
                 settings: WorkerSettings, deliver: bool, limits: Limits = DEFAULT_LIMITS,
                 report_paper: str | None = None) -> None:
        self.queue = queue
        self.spool = spool
        self.reconstructor = reconstructor
        self.folders = folders
        self.settings = settings
        self.deliver = deliver
        self.limits = limits
        self.report_paper = report_paper
        self.stop: threading.Event | None = None
        self.output_blocked = False  # set when outputs could not be written: pause, then retry
        self.long: _LongJob | None = None
        self._later: set[int] = set()  # long jobs put back while another one is in hand

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set: the record in hand is finished first, the rest of a
        short batch and a long job in hand go back to ``waiting`` (outputs are deterministic:
        redone at the next start)."""
        self.stop = stop
        while not stop.is_set():
            try:
                if not self.step(stop):
                    self.queue.wait_for_new(1.0)
            except Exception:  # the job store itself failing: keep going, jobs stay recorded
                LOG.exception("worker error; pausing before the next batch")
                self.output_blocked = True
            if self.output_blocked:
                self.output_blocked = False
                stop.wait(OUTPUT_RETRY_S)
        self.put_back_long_job()

    def step(self, stop: threading.Event) -> bool:
        """One unit of work: a batch of waiting jobs, else one step of the long job in hand.
        Returns False when there was nothing to do."""
        jobs = self.next_batch(stop)
        if jobs:
            self.process(jobs)
            return True
        if self.long is not None:
            self.advance_long_job()
            return True
        return False

    def next_batch(self, stop: threading.Event) -> list[Job]:
        """Claim up to ``batch_size`` jobs, waiting up to ``max_wait_s`` for more to arrive."""
        jobs = self.queue.claim(self.settings.batch_size, exclude=self._later)
        if not jobs:
            return jobs
        deadline = time.monotonic() + self.settings.max_wait_s
        while len(jobs) < self.settings.batch_size and not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.queue.wait_for_new(left)
            jobs += self.queue.claim(self.settings.batch_size - len(jobs), exclude=self._later)
        return jobs

    def process(self, jobs: list[Job]) -> None:
        """Read one batch of claimed jobs; reconstruct and write the short ones, take a long
        one in hand (or put it back for later when one is in hand already)."""
        loaded: list[tuple[Job, LeadInput]] = []
        for job in jobs:
            try:
                inp = self.load(job)
            except InputError as exc:
                self.reject(job, str(exc))
                continue
            except Exception as exc:  # an unexpected reader failure is still the input's problem
                LOG.exception("%s: unexpected error while reading", job.tag)
                self.reject(job, f"unreadable input ({type(exc).__name__}: {wire(exc)})")
                continue
            if self.reconstructor.count_windows(inp.signal_uv.shape[-1], inp.fs) <= LONG_JOB_WINDOWS:
                loaded.append((job, inp))
            elif self.long is None:
                self.take_long_job(job, inp)
            else:
                self.queue.release(job.id)
                self._later.add(job.id)
        if not loaded:
            return
        t0 = time.perf_counter()
        results = self._reconstruct([inp for _, inp in loaded])
        LOG.info("batch of %d reconstructed in %.2f s", len(loaded), time.perf_counter() - t0)
        for (job, inp), result in zip(loaded, results):
            if self.stop is not None and self.stop.is_set():  # writing (and drawing) takes time
                self.queue.release(job.id)
                continue
            if isinstance(result, Exception):
                self.reject(job, f"reconstruction failed ({type(result).__name__}: {wire(result)})")
            else:
                self.write(job, inp, result)

    def take_long_job(self, job: Job, inp: LeadInput) -> None:
        self.long = _LongJob(job, inp, self.reconstructor.start([inp.signal_uv], [inp.fs]), time.monotonic())
        LOG.info("%s: long input (%.0f s of ECG, %d model windows): worked on in steps, other jobs in between",
                 job.tag, inp.signal_uv.shape[-1] / inp.fs, self.long.task.total)

    def advance_long_job(self) -> None:
        """One forward batch of the long job in hand; write it when it is complete."""
        long = self.long
        try:
            long.task.step(self.reconstructor.batch_size)
            result = long.task.results()[0] if long.task.finished else None
        except Exception as exc:  # the model failing on this record: its problem, not the service's
            LOG.exception("%s: reconstruction failed", long.job.tag)
            self.finish_long_job()
            self.reject(long.job, f"reconstruction failed ({type(exc).__name__}: {wire(exc)})")
            return
        now = time.monotonic()
        if result is None:
            percent = 100 * long.task.done // long.task.total
            if percent >= long.logged + PROGRESS_LOG_STEP:
                long.logged = percent - percent % PROGRESS_LOG_STEP
                LOG.info("%s: %d%% (%d of %d windows) in %.0f s", long.job.tag, percent, long.task.done,
                         long.task.total, now - long.started)
            return
        LOG.info("%s: long input reconstructed in %.1f s", long.job.tag, now - long.started)
        self.finish_long_job()
        self.write(long.job, long.inp, result)
        del result, long
        release_freed_memory()

    def finish_long_job(self) -> None:
        """Let go of the long job in hand; the ones put back meanwhile may be claimed again."""
        self.long = None
        self._later.clear()

    def put_back_long_job(self) -> None:
        """At a stop: the long job in hand goes back to ``waiting`` (done again at the next start)."""
        if self.long is not None:
            LOG.info("%s: stopped at %d of %d windows; it starts again at the next start", self.long.job.tag,
                     self.long.task.done, self.long.task.total)
            self.queue.release(self.long.job.id)
            self.finish_long_job()

    def load(self, job: Job) -> LeadInput:
        """Read and check a job's input lead (sidecar honoured for .npy). Raises InputError.
        A symbolic link (dropped into the watched folder, as input or sidecar) is refused unread."""
        refuse_links(self.spool.path(job))
        sidecar = self.spool.sidecar(job)
        if os.path.lexists(sidecar):
            try:
                refuse_links(sidecar)
            except InputError as exc:
                raise InputError(f"sidecar .json: {exc}") from None
        return load_input(self.spool.path(job), self.reconstructor.input_lead, NPY_DEFAULT_FS, "uV",
                          sidecar, limits=self.limits)

    def _reconstruct(self, inputs: list[LeadInput]) -> list[Reconstruction | Exception]:
        """One batched call; if it fails, each record alone, so that a bad record fails alone."""
        return self.reconstructor.reconstruct_isolated([i.signal_uv for i in inputs], [i.fs for i in inputs])

    def write(self, job: Job, inp: LeadInput, result: Reconstruction) -> None:
        """Write ``<stem>.npy`` (12, N) µV and the DICOM object(s); then advance the job.

        The result's file names are reserved in the job store first (``<name>``, or
        ``<name>-2``... when another job holds that name), so no result is ever overwritten.
        """
        out = self.folders.output
        try:
            stem, names = self.queue.reserve_names(
                job.id, lambda s: result_file_names(s, result.leads.shape[-1], inp.fs, "both", False,
                                                    self.report_paper is not None),
                lambda name: (out / name).exists())
            if stem != job.name:
                LOG.info("%s: its output name is taken by another input; results get a distinct name "
                         "(ecg-dicom status %d shows them)", job.tag, job.id)
            written = write_outputs(out, stem, inp, result, self.reconstructor, "both", confidence=False,
                                    report=self.report_paper)
        except InputError as exc:
            self.reject(job, str(exc))
            return
        except OSError as exc:
            LOG.error("%s: cannot write outputs (%s); will try again", job.tag, exc)
            self.queue.release(job.id)
            self.output_blocked = True
            return
        except Exception as exc:  # the writer refusing this record: its problem, not the service's
            LOG.exception("%s: unexpected error while writing outputs", job.tag)
            self.reject(job, f"cannot write outputs ({type(exc).__name__}: {wire(exc)})")
            return
        outputs = [p.name for p in written]
        assert outputs == names, f"wrote {outputs}, reserved {names}"
        self.queue.processed(job.id, outputs, self.deliver)
        metrics.job_processed(job.created, self.deliver)
        metrics.record_uncertainty(self.reconstructor.uncertainty(result))
        self.spool.remove(job)
        LOG.info("%s: %d outputs written, signal quality %s, %s", job.tag, len(outputs),
                 inp.quality.status if inp.quality else "n/a", "awaiting delivery" if self.deliver else "done")

    def reject(self, job: Job, reason: str) -> None:
        """Move the input to ``rejected/`` and then write ``<stem>.reason.txt`` beside it, last,
        so that whoever polls for the reason file finds the input already there; the job is
        ``rejected``. ``<stem>`` is the job's name, or ``<name>-2``... when an earlier
        rejection holds it: a rejected input is never overwritten. The names are recorded in
        the job before anything moves. (Killed in between, the job is still pending: on
        restart it is rejected again, under the same names.)"""
        if job.note:
            reason = f"{reason.rstrip('.')}. {job.note}"
        rejected = self.folders.rejected
        rejected.mkdir(parents=True, exist_ok=True)
        original = job.spool.split("-", 1)[1]
        text = strip_wire(reason)  # values from the input kept, escaped; the log shows their hashes
        suffix = original[len(job.name):] if original.startswith(job.name) else ""
        planned = [name for name in job.outputs if name.startswith(REJECTED_PREFIX)]
        try:
            if planned:
                stem = planned[-1][len(REJECTED_PREFIX):-len(REASON_SUFFIX)]
            else:
                stem = free_stem(rejected, job.name, (suffix, REASON_SUFFIX, SIDECAR_SUFFIX))
            names = [f"{stem}{suffix}", f"{stem}{SIDECAR_SUFFIX}", f"{stem}{REASON_SUFFIX}"]
            if not os.path.lexists(self.spool.sidecar(job)) and not (rejected / names[1]).exists():
                names.remove(names[1])
            self.queue.set_outputs(job.id, [REJECTED_PREFIX + name for name in names])
            if os.path.lexists(self.spool.path(job)):  # lexists: a symbolic link is moved, not followed
                shutil.move(self.spool.path(job), rejected / names[0])
            if os.path.lexists(self.spool.sidecar(job)):
                shutil.move(self.spool.sidecar(job), rejected / f"{stem}{SIDECAR_SUFFIX}")
            write_reason(rejected, stem, text)
        except OSError as exc:
            LOG.error("%s: cannot move the rejected input (%s)", job.tag, exc)
        self.queue.reject(job.id, text)
        metrics.JOBS_FINISHED.labels("rejected").inc()
        LOG.warning("%s rejected: %s", job.tag, reason)
