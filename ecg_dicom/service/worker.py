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
memory stays bounded, and what it freed is handed back to the system afterwards (as is what
a burst of inputs freed, whenever the worker runs out of work). A stop
request is honoured between two steps: a long job in hand goes back to ``waiting`` and
starts again at the next start.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass

from ecg_dicom import metrics
from ecg_dicom.config import Folders
from ecg_dicom.core.accuracy import source_complete
from ecg_dicom.config import Worker as WorkerSettings
from ecg_dicom.core.inference import Reconstruction, ReconstructionTask, Reconstructor
from ecg_dicom.errors import InputError
from ecg_dicom.files import REASON_SUFFIX, REJECTED_PREFIX, free_stem, write_reason
from ecg_dicom.ingest import COMPANIONS_SUFFIX, SIDECAR_SUFFIX, Spool
from ecg_dicom.inputs import NPY_DEFAULT_FS, LeadInput, load_input, refuse_links
from ecg_dicom.limits import DEFAULT_LIMITS, Limits
from ecg_dicom.logsafe import strip_wire, uid_hash, wire
from ecg_dicom.memory import release_freed_memory
from ecg_dicom.outputs.results import (result_accuracy, result_file_names, start_page, uid_anchor_hash,
                                       write_outputs)
from ecg_dicom.queue import Job, JobQueue
from ecg_dicom.report.background import PageRenderer
from ecg_dicom.service.accuracy import AccuracyMonitor, device_model

LOG = logging.getLogger("ecg_dicom.worker")
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
    reconstructor : the loaded model (the one for the configured lead; lead I with ``auto``).
    folders : output and rejected folders.
    settings : batch size and batch wait.
    deliver : True when a PACS is configured (processed jobs then go to ``delivering``).
    limits : input size limits (see :mod:`ecg_dicom.limits`).
    report_paper : paper size of the 12-lead page written with every result, None for none.
    input_lead : the site's ``input_lead`` (I, II or auto); default: the reconstructor's lead.
    models : every loaded model by input lead (``auto`` needs one per lead it may choose).
    accuracy : the accuracy monitor, or None (figures still go into each result's .json).
    deliver_complete : deliver results of sources holding all 12 measured leads too
        (``deliver_when_source_complete``); else they are kept locally.
    pages : draws the page in its own process while the other files are written (None:
        drawn in the worker's thread).
    """

    def __init__(self, queue: JobQueue, spool: Spool, reconstructor: Reconstructor, folders: Folders,
                 settings: WorkerSettings, deliver: bool, limits: Limits = DEFAULT_LIMITS,
                 report_paper: str | None = None, input_lead: str | None = None,
                 models: dict[str, Reconstructor] | None = None, accuracy: AccuracyMonitor | None = None,
                 deliver_complete: bool = False, pages: PageRenderer | None = None) -> None:
        self.queue = queue
        self.spool = spool
        self.reconstructor = reconstructor
        self.input_lead = input_lead or reconstructor.input_lead
        self.models = dict(models or {reconstructor.input_lead: reconstructor})
        self.accuracy = accuracy
        self.deliver_complete = deliver_complete
        self.pages = pages
        self.folders = folders
        self.settings = settings
        self.deliver = deliver
        self.limits = limits
        self.report_paper = report_paper
        self.stop: threading.Event | None = None
        self.output_blocked = False  # set when outputs could not be written: pause, then retry
        # monotonic time since when outputs cannot be written / the job store cannot be
        # written (None: they can); /health is not ready meanwhile
        self.output_failing_since: float | None = None
        self.store_failing_since: float | None = None
        # jobs this worker claimed but could not give back (the job store failed too): handed
        # back to waiting as soon as the store can be written again
        self._unreleased: set[int] = set()
        self._orphans_possible = False
        self._store_failures = 0
        self._busy = False  # work was done since the worker last found nothing to do
        self.long: _LongJob | None = None
        self._later: set[int] = set()  # long jobs put back while another one is in hand

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set: the record in hand is finished first, the rest of a
        short batch and a long job in hand go back to ``waiting`` (outputs are deterministic:
        redone at the next start)."""
        self.stop = stop
        while not stop.is_set():
            try:
                failures = self._store_failures
                self.requeue_orphans()
                if self.step(stop):
                    self._busy = True
                else:
                    if self._busy:   # a burst is over: hand what it freed back to the system
                        self._busy = False
                        release_freed_memory()
                    self.queue.wait_for_new(1.0)
                if self._store_failures == failures:  # a whole step without a failure of the store
                    self._store_ok()
            except sqlite3.Error as exc:  # the job store failing (disk full...): jobs stay recorded
                self._store_failed(exc)
            except Exception:  # anything else: keep going, jobs stay recorded
                LOG.exception("worker error; pausing before the next batch")
                self._orphans_possible = True
                self.output_blocked = True
            if self.output_blocked:
                self.output_blocked = False
                stop.wait(OUTPUT_RETRY_S)
        self.put_back_long_job()

    @property
    def storage_ok(self) -> bool:
        """False while outputs or the job store cannot be written (``/health`` is then not ready)."""
        return self.output_failing_since is None and self.store_failing_since is None

    def requeue_orphans(self) -> None:
        """After a failure of the job store: every ``processing`` job this worker does not hold
        (one whose release failed, or claimed in a transaction that failed half-way) goes back
        to ``waiting``, without waiting for a restart. Raises sqlite3.Error while the store still
        cannot be written."""
        if not self._orphans_possible and not self._unreleased:
            return
        held = [self.long.job.id] if self.long is not None else []
        n = self.queue.recover(exclude=held)
        self._unreleased.clear()
        self._orphans_possible = False
        if n:
            LOG.info("%d job(s) the worker could not give back while the job store failed are waiting again", n)

    def _store_failed(self, exc: sqlite3.Error) -> None:
        """One ERROR when the job store starts failing (not one per retry); pause, then retry."""
        self._orphans_possible = True
        self.output_blocked = True
        self._store_failures += 1
        if self.store_failing_since is None:
            self.store_failing_since = time.monotonic()
            LOG.error("the job store cannot be written (%s: %s): pausing; tried again every %g s, /health is not "
                      "ready meanwhile", type(exc).__name__, exc, OUTPUT_RETRY_S)
        else:
            LOG.debug("the job store still cannot be written (%s)", exc)

    def _store_ok(self) -> None:
        if self.store_failing_since is not None:
            LOG.info("the job store can be written again (after %.0f s)", time.monotonic() - self.store_failing_since)
            self.store_failing_since = None

    def _release(self, job: Job) -> None:
        """Give a claimed job back to ``waiting``; if the job store fails, remember it and
        try again once the store works (:meth:`requeue_orphans`)."""
        try:
            self.queue.release(job.id)
        except sqlite3.Error as exc:
            self._unreleased.add(job.id)
            self._store_failed(exc)

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
        """Claim up to ``batch_size`` jobs; when more than one was waiting (a burst under way),
        wait up to ``max_wait_s`` for the batch to fill. A job that came alone is not held
        back: waiting for company that is not coming would only add to its latency."""
        jobs = self.queue.claim(self.settings.batch_size, exclude=self._later)
        if len(jobs) < 2:
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
            if self.model_for(inp).count_windows(inp.signal_uv.shape[-1], inp.fs) <= LONG_JOB_WINDOWS:
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

    def model_for(self, inp: LeadInput) -> Reconstructor:
        """The model for the lead ``inp`` carries."""
        return self.models[inp.lead]

    def take_long_job(self, job: Job, inp: LeadInput) -> None:
        self.long = _LongJob(job, inp, self.model_for(inp).start([inp.signal_uv], [inp.fs]), time.monotonic())
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
        companions = self.spool.companions(job)
        return load_input(self.spool.path(job), self.input_lead, NPY_DEFAULT_FS, "uV", sidecar, limits=self.limits,
                          models=tuple(self.models), signal_dir=companions if companions.is_dir() else None)

    def _reconstruct(self, inputs: list[LeadInput]) -> list[Reconstruction | Exception]:
        """One batched call per model; if it fails, each record alone, so that a bad record fails alone."""
        results: list[Reconstruction | Exception | None] = [None] * len(inputs)
        for lead, model in self.models.items():
            members = [k for k, inp in enumerate(inputs) if inp.lead == lead]
            if not members:
                continue
            done = model.reconstruct_isolated([inputs[k].signal_uv for k in members], [inputs[k].fs for k in members])
            for k, result in zip(members, done):
                results[k] = result
        return [r if r is not None else InputError(f"no model for lead {i.lead}") for r, i in zip(results, inputs)]

    def _accuracy(self, job: Job, inp: LeadInput, result: Reconstruction, model: Reconstructor) -> dict:
        """The result's accuracy against the source's measured leads ({} when it has none, or
        when measuring fails: the monitor never costs an output)."""
        if not inp.source_leads:
            return {}
        try:
            return result_accuracy(inp, result, model)
        except Exception:  # noqa: BLE001 - a monitor, not the product
            LOG.exception("%s: accuracy against the source's leads could not be measured", job.tag)
            return {}

    def write(self, job: Job, inp: LeadInput, result: Reconstruction) -> None:
        """Write ``<stem>.npy`` (12, N) µV and the DICOM object(s); then advance the job.

        The result's file names are reserved in the job store first (``<name>``, or
        ``<name>-2``... when another job holds that name), so no result is ever overwritten.
        """
        out = self.folders.output
        model = self.model_for(inp)
        page = None
        if self.pages is not None and self.report_paper is not None:  # drawn meanwhile, on the other core
            try:
                page = start_page(self.pages, inp, result, model, self.report_paper)
            except Exception:  # noqa: BLE001 - write_outputs draws it (or says why it cannot)
                LOG.exception("%s: the page could not be handed to its process; it is drawn here", job.tag)
        accuracy = self._accuracy(job, inp, result, model)
        try:
            stem, names = self.queue.reserve_names(
                job.id, lambda s: result_file_names(s, result.leads.shape[-1], inp.fs, "both", False,
                                                    self.report_paper is not None),
                lambda name: (out / name).exists())
            if stem != job.name:
                LOG.info("%s: its output name is taken by another input; results get a distinct name "
                         "(ecg-dicom status %d shows them)", job.tag, job.id)
            written = write_outputs(out, stem, inp, result, model, "both", confidence=False,
                                    report=self.report_paper, accuracy=accuracy, remarks=self.source_reuse(job, inp),
                                    page=page)
        except InputError as exc:
            self.reject(job, str(exc))
            return
        except sqlite3.Error as exc:  # the job store failing (disk full): not the input's fault
            self._store_failed(exc)
            self._release(job)
            return
        except OSError as exc:
            if self.output_failing_since is None:
                self.output_failing_since = time.monotonic()
                LOG.error("%s: cannot write outputs (%s); tried again every %g s, /health is not ready meanwhile",
                          job.tag, exc, OUTPUT_RETRY_S)
            else:
                LOG.debug("%s: still cannot write outputs (%s)", job.tag, exc)
            self.output_blocked = True
            self._release(job)
            return
        except Exception as exc:  # the writer refusing this record: its problem, not the service's
            LOG.exception("%s: unexpected error while writing outputs", job.tag)
            self.reject(job, f"cannot write outputs ({type(exc).__name__}: {wire(exc)})")
            return
        outputs = [p.name for p in written]
        assert outputs == names, f"wrote {outputs}, reserved {names}"
        if self.output_failing_since is not None:
            LOG.info("outputs can be written again (after %.0f s)", time.monotonic() - self.output_failing_since)
            self.output_failing_since = None
        complete = source_complete(inp.source_leads)
        deliver = self.deliver and (self.deliver_complete or not complete)
        self.queue.processed(job.id, outputs, deliver)
        metrics.job_processed(job.created, deliver)
        metrics.record_uncertainty(model.uncertainty(result))
        self.spool.remove(job)
        if accuracy and self.accuracy is not None:
            try:
                self.accuracy.record(job.id, device_model(inp.dataset), model.input_lead, accuracy)
            except Exception:  # noqa: BLE001 - a monitor, not the product
                LOG.exception("%s: accuracy figures could not be kept", job.tag)
        LOG.info("%s: %d outputs written from lead %s, signal quality %s, %s", job.tag, len(outputs), inp.lead,
                 inp.quality.status if inp.quality else "n/a",
                 "awaiting delivery" if deliver else
                 "kept locally: the source holds all 12 measured leads (deliver_when_source_complete: false)"
                 if self.deliver and complete else "done")
        if inp.fs_assumed:
            LOG.warning("%s: a .npy without a sidecar's fs: its rate was assumed to be %g Hz (a sidecar"
                        " <name>.json with \"fs\" says it)", job.tag, inp.fs)
        for flag in (inp.quality.flags if inp.quality is not None else []):
            if flag.code == "rate":
                LOG.warning("%s: %s", job.tag, flag.text)

    def source_reuse(self, job: Job, inp: LeadInput) -> dict | None:
        """A DICOM input whose SOP Instance UID came with other content in another job (a cart that
        reuses UIDs): logged (UID hashed), noted in the job and returned for the result's
        ``.json``; its outputs get their own UIDs (they derive from UID and content). None
        otherwise."""
        uid = str(inp.dataset.get("SOPInstanceUID", "") or "") if inp.dataset is not None else ""
        if not uid:
            return None
        others = self.queue.note_source(uid, uid_anchor_hash(inp), job.id)
        if not others:
            return None
        jobs = ", ".join(str(i) for i in others[:10]) + (" ..." if len(others) > 10 else "")
        text = (f"the source SOP Instance UID came with different content in job {jobs} too: the source reuses "
                "UIDs; this result has output UIDs of its own")
        LOG.warning("%s: source SOP Instance %s came with different content in job %s too: its results get output "
                    "UIDs of their own", job.tag, uid_hash(uid), jobs)
        self.queue.set_note(job.id, text)
        return {"source_uid_reused": {"other_jobs": others, "note": text}}

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
            if self.spool.companions(job).is_dir():  # a WFDB header's signal files, beside it as they came
                shutil.move(self.spool.companions(job), rejected / f"{stem}{COMPANIONS_SUFFIX}")
            write_reason(rejected, stem, text)
        except OSError as exc:
            LOG.error("%s: cannot move the rejected input (%s)", job.tag, exc)
        self.queue.reject(job.id, text)
        metrics.JOBS_FINISHED.labels("rejected").inc()
        LOG.warning("%s rejected: %s", job.tag, reason)
