"""``ecg-dicom redeliver --config site.yaml [--dead-letter] [--since WHEN] [JOB ...]``:
send results to the PACS again.

For results made before a PACS was configured (jobs ``done`` without a delivery) and for
dead letters after the PACS fault was fixed: the chosen jobs go back to ``delivering``
with a fresh retry schedule, and the service sends them: at once when it is running
(within a second), else at its next start. The results are sent from the output folder
as they are (same SOP Instance UIDs, so an instance PACS already holds is not
duplicated); a job whose result file is no longer there is named and left alone.
A re-queued dead letter's copies in ``dead-letter/`` are removed (the result is in the
output folder; a new failure puts them back).

Which jobs: the ids given; ``--dead-letter``: every dead-lettered job; ``--since``: jobs
whose state last changed since then (alone: done and dead-lettered ones). At least one.
"""

from __future__ import annotations

import argparse
import sys

from ecg_dicom.config import Settings, load_config_or_report
from ecg_dicom.files import REASON_SUFFIX
from ecg_dicom.service.lock import running_service
from ecg_dicom.queue import Job, JobQueue
from ecg_dicom.service.status import since_timestamp

REDELIVERABLE = ("done", "dead")


def run(args: argparse.Namespace) -> int:
    """0 when every chosen job was queued, 1 when some could not be, 2 for a bad command or config."""
    settings = load_config_or_report(args.config, "redeliver")
    if settings is None:
        return 2
    if settings.pacs is None:
        print(f"ecg-dicom redeliver: {settings.source} has no 'pacs' section: nowhere to deliver to",
              file=sys.stderr)
        return 2
    if not (args.jobs or args.dead_letter or args.since):
        print("ecg-dicom redeliver: say which jobs: JOB ids, --dead-letter and/or --since", file=sys.stderr)
        return 2
    try:
        since = since_timestamp(args.since) if args.since else None
    except ValueError as exc:
        print(f"ecg-dicom redeliver: --since: {exc}", file=sys.stderr)
        return 2
    queue = JobQueue(settings.folders.queue_db)
    try:
        return redeliver(settings, queue, args.jobs or [], args.dead_letter, since)
    finally:
        queue.close()


def redeliver(settings: Settings, queue: JobQueue, job_ids: list[int], dead_letter: bool,
              since: float | None) -> int:
    chosen, problems = select(queue, job_ids, dead_letter, since)
    ready = []
    for job in chosen:
        results = [name for name in job.outputs if name.endswith(".dcm")]
        missing = [name for name in results if not (settings.folders.output / name).is_file()]
        if not results:
            problems.append(f"job {job.id}: has no DICOM result to send")
        elif missing:
            problems.append(f"job {job.id}: {len(missing)} of its results are no longer in "
                            f"{settings.folders.output} (e.g. {missing[0]}); not queued")
        else:
            ready.append(job)
    queued = queue.redeliver([job.id for job in ready])
    for job in ready:
        _clear_dead_letter(settings, job)
    for problem in problems:
        print(f"ecg-dicom redeliver: {problem}", file=sys.stderr)
    files = sum(1 for job in ready for name in job.outputs if name.endswith(".dcm"))
    service = running_service(settings.folders.work)
    when = (f"the running service (pid {service.get('pid', '?')}) sends them now" if service is not None
            else "the service is not running: they are sent at its next start")
    print(f"queued {queued} job(s), {files} DICOM result(s), for {settings.pacs.describe()}; {when}"
          + (f": {' '.join(str(job.id) for job in ready)}" if ready and len(ready) <= 20 else ""))
    return 1 if problems else 0


def select(queue: JobQueue, job_ids: list[int], dead_letter: bool, since: float | None) -> tuple[list[Job], list[str]]:
    """The jobs to send again, and a line for each id that cannot be."""
    chosen: dict[int, Job] = {}
    problems = []
    for job_id in job_ids:
        job = queue.find(job_id)
        if job is None:
            problems.append(f"job {job_id}: no such job")
        elif job.state not in REDELIVERABLE:
            problems.append(f"job {job_id}: is {job.state}, not done or dead-lettered; left alone")
        else:
            chosen[job.id] = job
    if dead_letter or (since is not None and not job_ids):
        states = ("dead",) if dead_letter else REDELIVERABLE
        for state in states:
            for job in queue.jobs(state):
                if since is None or job.updated >= since:
                    chosen.setdefault(job.id, job)
    elif since is not None:
        chosen = {i: job for i, job in chosen.items() if job.updated >= since}
    return sorted(chosen.values(), key=lambda job: job.id), problems


def _clear_dead_letter(settings: Settings, job: Job) -> None:
    """Remove a re-queued dead letter's copies from ``dead-letter/``."""
    if job.state != "dead":
        return
    folder = settings.folders.dead_letter
    for name in [*(n for n in job.outputs if n.endswith(".dcm")), f"{job.result_stem}{REASON_SUFFIX}"]:
        (folder / name).unlink(missing_ok=True)
