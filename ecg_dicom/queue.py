"""Durable job store: SQLite (WAL, synchronous=FULL) in the work folder, no server to run.

A job is one accepted input. Its states::

    waiting -> processing -> done                  (no PACS configured)
                          -> delivering -> done    (results C-STOREd with success/warning)
                                        -> dead    (permanent failure, or gave up)
                          -> rejected              (bad input; reason file written)

Every change is committed before the caller goes on, so an accepted job survives kill -9
and power loss. Jobs found ``processing`` at start were interrupted and go back to
``waiting``; outputs are deterministic, so doing them again is harmless.

The input files themselves live in the spool (see :mod:`ecg_dicom.ingest`); a job row
names its spool file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

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
"""


@dataclass(frozen=True)
class Job:
    """One row of the store. ``outputs`` are file names inside the output folder."""

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

    @property
    def tag(self) -> str:
        """How the job appears in logs: id and a hash of its name (a UID, never a patient name)."""
        return f"job {self.id} [{hashlib.sha256(self.name.encode()).hexdigest()[:10]}]"


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

    def close(self) -> None:
        """Close every connection this queue opened."""
        with self._lock:
            for con in self._connections:
                con.close()
            self._connections.clear()
        self._local = threading.local()

    # -- ingest ------------------------------------------------------------------------
    def add(self, key: str, name: str, origin: str, spool: str) -> int:
        """Record an accepted input (already durable in the spool) as ``waiting``; returns its id."""
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO jobs (key, name, origin, spool, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
            (key, name, origin, spool, now, now))
        self._new_job.set()
        return int(cur.lastrowid)

    def state_of(self, key: str) -> str | None:
        """State of the job with ``key``, or None if there is no such job."""
        row = self._db.execute("SELECT state FROM jobs WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def wait_for_new(self, timeout: float) -> None:
        """Block until a job is added (or ``timeout`` seconds pass)."""
        self._new_job.wait(timeout)
        self._new_job.clear()

    # -- worker ------------------------------------------------------------------------
    def recover(self) -> int:
        """Put jobs interrupted while ``processing`` back to ``waiting``; returns how many."""
        cur = self._db.execute("UPDATE jobs SET state = 'waiting', updated = ? WHERE state = 'processing'",
                               (time.time(),))
        return cur.rowcount

    def claim(self, limit: int) -> list[Job]:
        """Move up to ``limit`` oldest ``waiting`` jobs to ``processing`` and return them."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute("SELECT * FROM jobs WHERE state = 'waiting' ORDER BY id LIMIT ?",
                              (limit,)).fetchall()
            db.executemany("UPDATE jobs SET state = 'processing', updated = ? WHERE id = ?",
                           [(time.time(), r["id"]) for r in rows])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return [_job(r) for r in rows]

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
        self._set(job_id, "done")

    def retry_later(self, job_id: int, next_attempt: float, reason: str) -> None:
        """Count a failed delivery attempt and schedule the next one (kept across restarts)."""
        self._db.execute(
            "UPDATE jobs SET attempts = attempts + 1, next_attempt = ?, reason = ?, updated = ? WHERE id = ?",
            (next_attempt, reason, time.time(), job_id))

    def dead(self, job_id: int, reason: str) -> None:
        self._set(job_id, "dead", reason)

    # -- reporting ---------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zero if none)."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[state] = n
        return counts

    def get(self, job_id: int) -> Job:
        return _job(self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def jobs(self, state: str | None = None) -> list[Job]:
        """All jobs, or those in ``state``, oldest first."""
        if state is None:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        else:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,)).fetchall()
        return [_job(r) for r in rows]

    def _set(self, job_id: int, state: str, reason: str | None = None) -> None:
        self._db.execute("UPDATE jobs SET state = ?, reason = COALESCE(?, reason), updated = ? WHERE id = ?",
                         (state, reason, time.time(), job_id))


def _job(row: sqlite3.Row) -> Job:
    return Job(id=row["id"], key=row["key"], name=row["name"], origin=row["origin"], spool=row["spool"],
               state=row["state"], attempts=row["attempts"], next_attempt=row["next_attempt"],
               deliver_since=row["deliver_since"], reason=row["reason"],
               outputs=tuple(json.loads(row["outputs"])))
