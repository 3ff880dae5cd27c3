"""Durable job store: SQLite (WAL, synchronous=FULL) in the work folder, no server to run.

A job is one accepted input. Its states::

    waiting -> processing -> done                  (no PACS configured)
                          -> delivering -> done    (results C-STOREd with success/warning, and/or
                                                    STOW-RS; committed, with storage commitment)
                                        -> dead    (permanent failure, or gave up)
                          -> rejected              (bad input; reason file written)

Every change is committed before the caller goes on, so an accepted job survives kill -9
and power loss. Jobs found ``processing`` at start were interrupted and go back to
``waiting``; outputs are deterministic, so doing them again is harmless.

The input files themselves live in the spool (see :mod:`ecg_dicom.ingest`); a job row
names its spool file, the name the input arrived under, and the files it produced.

Result names: two inputs can clean up to the same name (``x y.npy`` and ``x_y.npy``, a
C-STORE of UID ``U`` and a dropped ``U.npy``, the same name dropped twice). Before a job
writes anything it reserves its file names in ``output_names`` (one row per file, unique,
case-folded), taking ``<name>``, else ``<name>-2``, ``<name>-3``..., so no job ever
overwrites another job's results (nor a file already in the folder). A job done again
after a crash gets its own reservation back.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ecg_dicom.files import counted_stems
from ecg_dicom.logsafe import digest

STATES = ("waiting", "processing", "delivering", "done", "rejected", "dead")
KEY_LENGTH = 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    key           TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    origin        TEXT NOT NULL,
    spool         TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'waiting',
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  REAL NOT NULL DEFAULT 0,
    deliver_since REAL,
    reason        TEXT,
    outputs       TEXT NOT NULL DEFAULT '[]',
    created       REAL NOT NULL,
    updated       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, next_attempt);
CREATE TABLE IF NOT EXISTS source_uids (   -- which content arrived under which source SOP Instance UID
    uid     TEXT NOT NULL,
    content TEXT NOT NULL,            -- the content hash the output UIDs derive from
    job_id  INTEGER NOT NULL,
    PRIMARY KEY (uid, content)
);
CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS output_names (
    key    TEXT PRIMARY KEY,          -- the file name, case-folded
    job_id INTEGER NOT NULL
);
-- the accuracy monitor: per job and learned lead, the reconstruction against the lead the
-- source measured (see ecg_dicom.core.accuracy); device: the source's model name, never a patient
CREATE TABLE IF NOT EXISTS accuracy (
    job_id     INTEGER NOT NULL,
    lead       TEXT NOT NULL,
    at         REAL NOT NULL,
    device     TEXT NOT NULL,
    input_lead TEXT NOT NULL,
    r          REAL NOT NULL,
    rmse_uv    REAL NOT NULL,
    PRIMARY KEY (job_id, lead)
);
CREATE INDEX IF NOT EXISTS accuracy_at ON accuracy (at);
CREATE INDEX IF NOT EXISTS accuracy_lead_at ON accuracy (lead, at);  -- the monitor's last N of a lead
"""
# columns added after the first release: (name, declaration); added to an older store at open
_ADDED_COLUMNS = (("stem", "TEXT"), ("source_name", "TEXT"), ("note", "TEXT"), ("delivered_to", "TEXT"),
                  ("commitment", "TEXT"))



@dataclass(frozen=True)
class Job:
    """One row of the store.

    ``name``: the output name its input cleans up to; ``stem``: the result name reserved
    for it (``name`` or ``name-2``...; None until reserved); ``source_name``: the file name
    the input arrived under (wire or folder text, unescaped); ``outputs``: the files it
    produced, relative to the output folder (``rejected/...`` for a rejected input);
    ``created`` / ``updated``: Unix times; ``note``: a remark from ingest added to the reason
    should the input be rejected (e.g. "a file of the same name was taken 2.5 s before").
    ``delivered_to``: the destinations (``dicom``, ``dicomweb``) that already hold its results,
    skipped when it is tried again; ``commitment``: the storage commitment request awaiting its
    report (``{"uid": transaction UID, "instances": [SOP Instance UID, ...], "requested": t}``).
    """

    id: int
    key: str
    name: str
    origin: str
    spool: str
    state: str
    attempts: int
    next_attempt: float
    deliver_since: float | None
    reason: str | None
    outputs: tuple[str, ...]
    stem: str | None = None
    source_name: str | None = None
    created: float = 0.0
    updated: float = 0.0
    note: str | None = None
    delivered_to: tuple[str, ...] = ()
    commitment: dict | None = None

    @property
    def result_stem(self) -> str:
        """The name its result files carry: the reserved stem, else the plain name."""
        return self.stem or self.name

    @property
    def tag(self) -> str:
        """How the job appears in logs: id and a hash of its name (a UID, never a patient name)."""
        return f"job {self.id} [{digest(self.name, 10)}]"


@dataclass(frozen=True)
class AccuracyRow:
    """One kept accuracy figure: a job's reconstruction of ``lead`` against the source's
    measured lead; ``at``: Unix time; ``device``: the source's device model."""

    job_id: int
    lead: str
    at: float
    device: str
    input_lead: str
    r: float
    rmse_uv: float


def new_key() -> str:
    """A fresh job key (16 hex characters)."""
    return uuid.uuid4().hex[:KEY_LENGTH]


class JobQueue:
    """The job store at ``path``. Safe to use from several threads (one connection each).

    Parameters
    ----------
    path : Path
        SQLite file; created with its folder if missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._new_job = threading.Event()
        self._to_deliver = threading.Event()
        self._db.executescript(_SCHEMA)
        self._migrate()

    @property
    def _db(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            self._local.con = con
            with self._lock:
                self._connections.append(con)
        return con

    def _migrate(self) -> None:
        """Bring a store written by an older version up to this schema (adds columns, and
        reserves the names of results it already holds)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, declaration in _ADDED_COLUMNS:
            if column not in have:
                try:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise
        if "stem" not in have:
            self._db.execute(
                "INSERT OR IGNORE INTO output_names (key, job_id) SELECT lower(value), jobs.id "
                "FROM jobs, json_each(jobs.outputs)")

    def close(self) -> None:
        """Close every connection this queue opened."""
        with self._lock:
            for con in self._connections:
                con.close()
            self._connections.clear()
        self._local = threading.local()

    # -- ingest ------------------------------------------------------------------------
    def add(self, key: str, name: str, origin: str, spool: str, source_name: str | None = None,
            note: str | None = None) -> int:
        """Record an accepted input (already durable in the spool) as ``waiting``; returns its id.

        ``source_name``: the file name it arrived under, kept for ``ecg-dicom status``;
        ``note``: see :class:`Job`."""
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO jobs (key, name, origin, spool, source_name, note, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, name, origin, spool, source_name, note, now, now))
        self._new_job.set()
        return int(cur.lastrowid)

    def add_rejected(self, key: str, name: str, origin: str, source_name: str, reason: str,
                     outputs: list[str]) -> int:
        """Record an input refused at the door (it never enters the spool) as ``rejected``
        with its reason and the files it was moved to; returns its id."""
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO jobs (key, name, origin, spool, source_name, state, reason, outputs, created, updated) "
            "VALUES (?, ?, ?, '', ?, 'rejected', ?, ?, ?, ?)",
            (key, name, origin, source_name, reason, json.dumps(outputs), now, now))
        return int(cur.lastrowid)

    def state_of(self, key: str) -> str | None:
        """State of the job with ``key``, or None if there is no such job."""
        row = self._db.execute("SELECT state FROM jobs WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def backlog(self) -> int:
        """Jobs not yet processed (``waiting`` or ``processing``): the depth back-pressure watches."""
        row = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('waiting', 'processing')").fetchone()
        return int(row[0])

    def writable(self) -> bool:
        """Whether a change can be committed now (one probe row is rewritten; False on a full
        disk or a read-only store)."""
        try:
            self._db.execute("INSERT OR REPLACE INTO write_probe (id, at) VALUES (1, ?)", (time.time(),))
            return True
        except sqlite3.Error:
            return False

    def wait_for_new(self, timeout: float) -> None:
        """Block until a job is added (or ``timeout`` seconds pass)."""
        self._new_job.wait(timeout)
        self._new_job.clear()

    # -- worker ------------------------------------------------------------------------
    def recover(self, exclude: Iterable[int] = ()) -> int:
        """Put jobs interrupted while ``processing`` (but those in ``exclude``, still in hand)
        back to ``waiting``; returns how many."""
        skip = sorted(set(exclude))
        cur = self._db.execute(f"UPDATE jobs SET state = 'waiting', updated = ? WHERE state = 'processing' "
                               f"AND id NOT IN ({','.join('?' * len(skip))})", (time.time(), *skip))
        return cur.rowcount

    def claim(self, limit: int, exclude: Iterable[int] = ()) -> list[Job]:
        """Move up to ``limit`` oldest ``waiting`` jobs (not those in ``exclude``) to
        ``processing`` and return them."""
        db = self._db
        skip = sorted(set(exclude))
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(f"SELECT * FROM jobs WHERE state = 'waiting' AND id NOT IN ({','.join('?' * len(skip))}) "
                              "ORDER BY id LIMIT ?", (*skip, limit)).fetchall()
            db.executemany("UPDATE jobs SET state = 'processing', updated = ? WHERE id = ?",
                           [(time.time(), r["id"]) for r in rows])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return [_job(r) for r in rows]

    def reserve_names(self, job_id: int, names_for: Callable[[str], list[str]],
                      exists: Callable[[str], bool]) -> tuple[str, list[str]]:
        """Reserve the result files of a job; returns (stem, file names).

        ``names_for(stem)`` gives the files a stem would produce (``x.npy``, ``x.dcm`` or
        ``x_001.dcm``...); ``exists(file name)`` says whether such a file is already in the
        output folder. The first of the job's own earlier stem, ``name``, ``name-2``,
        ``name-3``... whose every file is either this job's already or reserved by nobody
        and absent from the folder is taken.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT name, stem FROM jobs WHERE id = ?", (job_id,)).fetchone()
            base, earlier = row["name"], row["stem"]
            candidates = itertools.chain([earlier] if earlier else [], counted_stems(base))
            for stem in candidates:
                names = names_for(stem)
                owners = {}
                for name in names:
                    hit = db.execute("SELECT job_id FROM output_names WHERE key = ?", (name.lower(),)).fetchone()
                    owners[name] = None if hit is None else hit[0]
                if all(owner == job_id or (owner is None and not exists(name)) for name, owner in owners.items()):
                    db.executemany("INSERT OR IGNORE INTO output_names (key, job_id) VALUES (?, ?)",
                                   [(name.lower(), job_id) for name in names])
                    db.execute("UPDATE jobs SET stem = ?, updated = ? WHERE id = ?", (stem, time.time(), job_id))
                    db.execute("COMMIT")
                    return stem, names
            raise AssertionError("unreachable: the counter always finds a free name")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def note_source(self, uid: str, content: str, job_id: int) -> list[int]:
        """Record that ``job_id`` brought ``content`` under source SOP Instance UID ``uid``;
        returns the jobs that brought *other* content under the same UID (a source reusing
        its UIDs), oldest first."""
        db = self._db
        db.execute("INSERT OR IGNORE INTO source_uids (uid, content, job_id) VALUES (?, ?, ?)", (uid, content, job_id))
        rows = db.execute("SELECT job_id FROM source_uids WHERE uid = ? AND content != ? ORDER BY job_id",
                          (uid, content)).fetchall()
        return [int(r[0]) for r in rows]

    def set_note(self, job_id: int, note: str) -> None:
        """Attach a remark to a job (shown by ``ecg-dicom status``)."""
        self._db.execute("UPDATE jobs SET note = ?, updated = ? WHERE id = ?", (note, time.time(), job_id))

    def set_outputs(self, job_id: int, outputs: list[str]) -> None:
        """Record the files a job produced (or is about to), relative to the output folder."""
        self._db.execute("UPDATE jobs SET outputs = ?, updated = ? WHERE id = ?",
                         (json.dumps(outputs), time.time(), job_id))

    def release(self, job_id: int) -> None:
        """Give a ``processing`` job back to ``waiting`` (outputs could not be written)."""
        self._set(job_id, "waiting")

    def processed(self, job_id: int, outputs: list[str], deliver: bool) -> None:
        """Outputs written: the job is ``done``, or ``delivering`` when a PACS is configured."""
        now = time.time()
        self._db.execute(
            "UPDATE jobs SET state = ?, outputs = ?, next_attempt = ?, deliver_since = ?, updated = ? "
            "WHERE id = ?",
            ("delivering" if deliver else "done", json.dumps(outputs), now, now if deliver else None,
             now, job_id))
        if deliver:
            self._to_deliver.set()

    def reject(self, job_id: int, reason: str) -> None:
        self._set(job_id, "rejected", reason)

    # -- delivery ----------------------------------------------------------------------
    def due(self, now: float, limit: int) -> list[Job]:
        """Up to ``limit`` ``delivering`` jobs whose next attempt is due at ``now``."""
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE state = 'delivering' AND next_attempt <= ? ORDER BY next_attempt, id "
            "LIMIT ?", (now, limit)).fetchall()
        return [_job(r) for r in rows]

    def next_due(self) -> float | None:
        """Time of the earliest pending delivery attempt, or None."""
        row = self._db.execute("SELECT MIN(next_attempt) FROM jobs WHERE state = 'delivering'").fetchone()
        return row[0]

    def wait_for_delivery(self, timeout: float) -> None:
        """Block until a job becomes ``delivering`` (or ``timeout`` seconds pass)."""
        self._to_deliver.wait(timeout)
        self._to_deliver.clear()

    def delivered(self, job_id: int) -> None:
        self._db.execute("UPDATE jobs SET state = 'done', commitment = NULL, updated = ? WHERE id = ?",
                         (time.time(), job_id))

    def delivered_to(self, job_id: int, destination: str) -> None:
        """Record that ``destination`` holds the job's results (the job may still wait for others)."""
        self._db.execute(
            "UPDATE jobs SET delivered_to = json_insert(COALESCE(delivered_to, '[]'), '$[#]', ?), updated = ? "
            "WHERE id = ? AND ? NOT IN (SELECT value FROM json_each(COALESCE(delivered_to, '[]')))",
            (destination, time.time(), job_id, destination))

    def retry_later(self, job_id: int, next_attempt: float, reason: str) -> None:
        """Count a failed delivery attempt and schedule the next one (kept across restarts);
        a storage commitment still awaited is given up (the next attempt asks anew)."""
        self._db.execute(
            "UPDATE jobs SET attempts = attempts + 1, next_attempt = ?, reason = ?, commitment = NULL, updated = ? "
            "WHERE id = ?", (next_attempt, reason, time.time(), job_id))

    def await_commitment(self, job_id: int, transaction_uid: str, instances: list[str], deadline: float) -> None:
        """Record a storage commitment request (before it is sent: the report may come at once);
        the job is due again at ``deadline`` should no report come."""
        now = time.time()
        request = {"uid": transaction_uid, "instances": instances, "requested": now}
        self._db.execute(
            "UPDATE jobs SET commitment = ?, next_attempt = ?, reason = ?, updated = ? WHERE id = ?",
            (json.dumps(request), deadline, "awaiting storage commitment", now, job_id))

    def committed(self, job_id: int, transaction_uid: str) -> bool:
        """The PACS committed the request ``transaction_uid``: clear it; False when the job no
        longer awaits that request (a late or repeated report)."""
        cur = self._db.execute(
            "UPDATE jobs SET commitment = NULL, reason = NULL, updated = ? WHERE id = ? AND state = 'delivering' "
            "AND json_extract(commitment, '$.uid') = ?", (time.time(), job_id, transaction_uid))
        return cur.rowcount == 1

    def awaiting_commitment(self, transaction_uid: str) -> Job | None:
        """The ``delivering`` job whose storage commitment request is ``transaction_uid``, or None."""
        row = self._db.execute("SELECT * FROM jobs WHERE state = 'delivering' AND "
                               "json_extract(commitment, '$.uid') = ?", (transaction_uid,)).fetchone()
        return None if row is None else _job(row)

    def uncommitted(self, limit: int = 10) -> list[Job]:
        """``delivering`` jobs awaiting a storage commitment report or retried after one failed,
        newest change first."""
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE state = 'delivering' AND (commitment IS NOT NULL OR reason LIKE "
            "'%storage commitment%') ORDER BY updated DESC, id DESC LIMIT ?", (limit,)).fetchall()
        return [_job(r) for r in rows]

    def redeliver(self, job_ids: list[int]) -> int:
        """Send ``done`` or ``dead`` jobs' results again: back to ``delivering`` with a fresh
        retry schedule (due now); returns how many were changed."""
        now = time.time()
        cur = self._db.executemany(
            "UPDATE jobs SET state = 'delivering', attempts = 0, next_attempt = ?, deliver_since = ?, reason = NULL, "
            "delivered_to = NULL, commitment = NULL, updated = ? WHERE id = ? AND state IN ('done', 'dead')", [(now, now, now, i) for i in job_ids])
        self._to_deliver.set()
        return cur.rowcount

    def dead(self, job_id: int, reason: str) -> None:
        self._db.execute("UPDATE jobs SET state = 'dead', reason = ?, commitment = NULL, updated = ? WHERE id = ?",
                         (reason, time.time(), job_id))

    # -- accuracy monitor ----------------------------------------------------------------
    def record_accuracy(self, job_id: int, device: str, input_lead: str, figures: dict[str, dict]) -> None:
        """Keep one job's per-lead figures ({lead: {"r": …, "rmse_uv": …}}); a job done again
        (after a crash) replaces its own."""
        now = time.time()
        self._db.executemany(
            "INSERT OR REPLACE INTO accuracy (job_id, lead, at, device, input_lead, r, rmse_uv) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(job_id, lead, now, device, input_lead, float(v["r"]), float(v["rmse_uv"]))
             for lead, v in figures.items()])

    def accuracy_rows(self, since: float | None = None) -> list[AccuracyRow]:
        """The kept figures (changed at or after ``since``), oldest first."""
        rows = self._db.execute("SELECT * FROM accuracy WHERE at >= ? ORDER BY at, job_id, lead",
                                (since if since is not None else float("-inf"),)).fetchall()
        return [AccuracyRow(r["job_id"], r["lead"], r["at"], r["device"], r["input_lead"], r["r"], r["rmse_uv"])
                for r in rows]

    def latest_accuracy(self, lead: str, limit: int) -> list[AccuracyRow]:
        """The last ``limit`` figures of ``lead``, newest first."""
        rows = self._db.execute("SELECT * FROM accuracy WHERE lead = ? ORDER BY at DESC, job_id DESC LIMIT ?",
                                (lead, limit)).fetchall()
        return [AccuracyRow(r["job_id"], r["lead"], r["at"], r["device"], r["input_lead"], r["r"], r["rmse_uv"])
                for r in rows]

    # -- reporting ---------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zero if none)."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[state] = n
        return counts

    def get(self, job_id: int) -> Job:
        """The job ``job_id`` (which must exist)."""
        job = self.find(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        return job

    def find(self, job_id: int) -> Job | None:
        """The job ``job_id``, or None."""
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def jobs(self, state: str | None = None) -> list[Job]:
        """All jobs, or those in ``state``, oldest first."""
        if state is None:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        else:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,)).fetchall()
        return [_job(r) for r in rows]

    def recent(self, state: str | None = None, limit: int = 10, since: float | None = None) -> list[Job]:
        """The last ``limit`` jobs (in ``state``, changed at or after ``since``), newest first."""
        where, args = [], []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if since is not None:
            where.append("updated >= ?")
            args.append(since)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._db.execute(sql + " ORDER BY updated DESC, id DESC LIMIT ?", (*args, limit)).fetchall()
        return [_job(r) for r in rows]

    def _set(self, job_id: int, state: str, reason: str | None = None) -> None:
        self._db.execute("UPDATE jobs SET state = ?, reason = COALESCE(?, reason), updated = ? WHERE id = ?",
                         (state, reason, time.time(), job_id))


def _job(row: sqlite3.Row) -> Job:
    return Job(id=row["id"], key=row["key"], name=row["name"], origin=row["origin"], spool=row["spool"],
               state=row["state"], attempts=row["attempts"], next_attempt=row["next_attempt"],
               deliver_since=row["deliver_since"], reason=row["reason"],
               outputs=tuple(json.loads(row["outputs"])), stem=row["stem"], source_name=row["source_name"],
               created=row["created"], updated=row["updated"], note=row["note"],
               delivered_to=tuple(json.loads(row["delivered_to"] or "[]")),
               commitment=json.loads(row["commitment"]) if row["commitment"] else None)
