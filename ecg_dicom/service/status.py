"""``ecg-dicom status --config site.yaml [JOB ...]``: is the service running, what is in its
job store, and what went wrong lately.

Whether the service runs is read from the lock it holds in the work folder
(:mod:`ecg_dicom.service.lock`: right after kill -9 too), and, when the configuration has an
``http`` section, from its ``/health`` endpoint. Then one ``<state>: <count>`` line per job
state, and the most recent rejections, dead letters and jobs awaiting (or retried after) a
storage commitment, with their reasons. With job ids,
each job in full: where it came from, under which name, its state and the files it
produced (the job -> result files mapping). ``--json`` prints the same as one JSON object.
Everything printed from the wire or a dropped file's name is escaped.

Exit status, for scripts and monitors: 0 running (and ``/health`` ready, where configured);
1 a job asked for does not exist; 2 a bad configuration; 3 not running (:data:`NOT_RUNNING`,
as the LSB's ``status`` action); 4 running but ``/health`` is not ready (degraded,
unavailable or not answering: :data:`NOT_READY`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from ecg_dicom.config import Settings, load_config_or_report
from ecg_dicom.service.lock import running_service
from ecg_dicom.queue import Job, JobQueue
from ecg_dicom.service.accuracy import summarize

# state in the store -> how it is printed
LABELS = {"waiting": "waiting", "processing": "processing", "delivering": "delivering", "done": "done",
          "rejected": "rejected", "dead": "dead-lettered"}
RECENT = 10
HEALTH_TIMEOUT_S = 3.0
NOT_RUNNING = 3
NOT_READY = 4


def run(args: argparse.Namespace) -> int:
    """Print the status; exit 0 running (and ready), 1 a job asked for does not exist, 2 a bad
    configuration, 3 not running, 4 running but not ready (see the module's docstring)."""
    settings = load_config_or_report(args.config, "status")
    if settings is None:
        return 2
    if getattr(args, "accuracy", False):
        return run_accuracy(settings, getattr(args, "since", None), getattr(args, "json", False))
    queue = JobQueue(settings.folders.queue_db)
    try:
        report = collect(settings, queue, getattr(args, "jobs", None) or [], getattr(args, "recent", RECENT))
    finally:
        queue.close()
    if getattr(args, "json", False):
        print(json.dumps(report, indent=1))
    else:
        print_report(report, settings)
    return exit_status(report)


def exit_status(report: dict[str, Any]) -> int:
    """The exit status for a :func:`collect` report (the configuration was good)."""
    if report.get("unknown_jobs"):
        return 1
    if not report["service"]["running"]:
        return NOT_RUNNING
    if report.get("health_status", "ready") != "ready":
        return NOT_READY
    return 0


def run_accuracy(settings: Settings, since: str | None, as_json: bool) -> int:
    """``status --accuracy [--since WHEN]``: the accuracy monitor's figures; 2 for a bad WHEN."""
    try:
        start = since_timestamp(since) if since else None
    except ValueError as exc:
        print(f"ecg-dicom status: --since: {exc}", file=sys.stderr)
        return 2
    queue = JobQueue(settings.folders.queue_db)
    try:
        table = summarize(queue.accuracy_rows(start))
    finally:
        queue.close()
    if as_json:
        print(json.dumps({"since": start, "devices": table}, indent=1))
        return 0
    period = f"since {_when(start)}" if start else "all kept records"
    if not table:
        print(f"accuracy monitor ({period}): no records yet (it measures sources that also hold the leads"
              " the model reconstructs, such as 12-lead DICOM ECGs)")
        return 0
    print(f"accuracy monitor ({period}): r of the reconstruction against the leads the source measured"
          " (evaluate protocol); trend: median r of the newer half of the records less the older half")
    for device, leads in table.items():
        print(f"\ndevice model {_escape(device)}:")
        print(f"  {'lead':<5} {'n':>5} {'median r':>9} {'p10 r':>7} {'RMSE µV':>8} {'trend':>7}")
        for lead, v in leads.items():
            trend = f"{v['trend']:+.3f}" if v["trend"] is not None else "-"
            print(f"  {lead:<5} {v['n']:>5} {v['median_r']:>9.3f} {v['p10_r']:>7.3f} {v['median_rmse_uv']:>8.1f}"
                  f" {trend:>7}")
    return 0


def collect(settings: Settings, queue: JobQueue, job_ids: list[int], recent: int = RECENT) -> dict[str, Any]:
    """Everything ``status`` prints, as plain data."""
    service = running_service(settings.folders.work)
    report: dict[str, Any] = {"service": {"running": service is not None, **(service or {})}}
    health = _health(settings)
    if health is not None:
        report["health"], report["health_status"] = health
    report["counts"] = {LABELS[state]: n for state, n in queue.counts().items()}
    if job_ids:
        found = {i: queue.find(i) for i in job_ids}
        report["jobs"] = [_job_dict(job) for job in found.values() if job is not None]
        report["unknown_jobs"] = [i for i, job in found.items() if job is None]
    else:
        report["recent_rejections"] = [_job_dict(job) for job in queue.recent("rejected", recent)]
        report["recent_dead_letters"] = [_job_dict(job) for job in queue.recent("dead", recent)]
        report["uncommitted"] = [_job_dict(job) for job in queue.uncommitted(recent)]
    return report


def print_report(report: dict[str, Any], settings: Settings) -> None:
    service = report["service"]
    if service["running"]:
        since = _when(service["started"]) if "started" in service else "?"
        print(f"service:       running (pid {service.get('pid', '?')}, since {since}, "
              f"listening on {service.get('listen', '?')})")
    else:
        print(f"service:       NOT RUNNING (no ecg-dicom serve holds {settings.folders.work}/service.lock)")
    if "health" in report:
        print(f"health:        {report['health']}")
    counts = report["counts"]
    width = max(len(label) for label in LABELS.values())
    for label, n in counts.items():
        note = ""
        if not service["running"] and n and label in ("waiting", "processing", "delivering"):
            note = "  (the service is not running: resumed at its next start)"
        print(f"{label + ':':<{width + 1}} {n}{note}")
    for job in report.get("jobs", []):
        print()
        print(f"job {job['id']}: {LABELS[job['state']]}, from {job['origin']}"
              + (f" as {_escape(job['source_name'])!s}" if job["source_name"] else "")
              + f", arrived {_when(job['created'])}, last change {_when(job['updated'])}")
        if job["outputs"]:
            files = [_escape(o) for o in job["outputs"]]
            if len(files) > 8:  # a split hour: ~110 parts; --json lists them all
                files = [*files[:3], "…", *files[-2:], f"({len(job['outputs'])} files)"]
            print(f"  files ({settings.folders.output}): {' '.join(files)}")
        if job["reason"]:
            print(f"  reason: {_escape(job['reason'])}")
        if job["note"] and job["state"] != "rejected":  # a rejection's reason holds its note already
            print(f"  note: {_escape(job['note'])}")
        if job["state"] == "delivering" and job["attempts"]:
            print(f"  delivery attempts: {job['attempts']}, next {_when(job['next_attempt'])}")
        if job["delivered_to"] and job["state"] == "delivering":
            print(f"  already delivered to: {', '.join(job['delivered_to'])}")
        if job["commitment"]:
            print(f"  storage commitment: {_commitment_text(job)}")
    for unknown in report.get("unknown_jobs", []):
        print(f"\njob {unknown}: no such job", file=sys.stderr)
    for key, title in (("recent_rejections", "rejected"), ("recent_dead_letters", "dead-lettered"),
                       ("uncommitted", "awaiting storage commitment or retried after it failed")):
        jobs = report.get(key)
        if not jobs:
            continue
        print(f"\nlast {len(jobs)} {title} (newest first; ecg-dicom status JOB for one in full):")
        for job in jobs:
            name = _escape(job["source_name"] or job["name"])
            why = _commitment_text(job) if job["commitment"] else job["reason"] or "?"
            print(f"  job {job['id']:<6} {_when(job['updated'])}  {name}: {_escape(why)}")


def _commitment_text(job: dict[str, Any]) -> str:
    """``awaiting the report on 2 instance(s) requested 18:05:02, asked again 18:10:02 if none``"""
    request = job["commitment"]
    return (f"awaiting the PACS's report on {len(request.get('instances', []))} instance(s) requested "
            f"{_when(request.get('requested'))}; asked again {_when(job['next_attempt'])} if none comes")


def _job_dict(job: Job) -> dict[str, Any]:
    return {"id": job.id, "state": job.state, "origin": job.origin, "name": job.name, "stem": job.stem,
            "source_name": job.source_name, "outputs": list(job.outputs), "reason": job.reason,
            "attempts": job.attempts, "next_attempt": job.next_attempt, "created": job.created,
            "updated": job.updated, "delivered_to": list(job.delivered_to), "commitment": job.commitment,
            "note": job.note}


def _health(settings: Settings) -> tuple[str, str] | None:
    """What the service's ``/health`` says, when the configuration has an ``http`` section: a
    line to print and the status (``ready``, ``degraded``, ``unavailable``, ``no answer``)."""
    http = getattr(settings, "http", None)
    if http is None:
        return None
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
    url = f"http://{host}:{http.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as rsp:
            code, body = rsp.status, rsp.read(4000)
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read(4000)
    except (OSError, ValueError) as exc:
        return f"no answer ({getattr(exc, 'reason', exc)}; {url})", "no answer"
    try:
        state = json.loads(body)
        status = str(state["status"])
    except (ValueError, KeyError, TypeError):
        return f"{code} {_escape(body[:200].decode('utf-8', 'replace'))} ({url})", "unavailable"
    failing = [name for name, ok in state.get("checks", {}).items() if not ok]
    details = [f"{name} failing" for name in failing]
    details += [f"{name}: {reason}" for name, reason in state.get("degraded", {}).items()]
    return f"{code} {status}{': ' if details else ''}{'; '.join(_escape(d) for d in details)} ({url})", status


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _escape(text: str) -> str:
    """Control characters (from the wire, from a file name) shown as escapes, never acted on."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def since_timestamp(text: str, now: float | None = None) -> float:
    """``2026-12-01``, ``2026-12-01T18:00``, ``2026-12-01 18:00:05`` (local time) or a span
    back from now (``90m``, ``2h``, ``3d``, ``1w``) -> Unix time. Raises ValueError."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = text.strip()
    if text[-1:].lower() in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1].lower()]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is neither a date/time (2026-12-01, 2026-12-01T18:00) nor a span "
                         "back from now (90m, 2h, 3d, 1w)") from None
