"""Watched folder: ``.npy`` and DICOM files dropped into ``folders.watch`` become jobs.

A file is taken only once it is complete: when inotify reports it closed after writing
(or moved in), or else when its size and mtime have not changed for ``stable_s`` seconds
(files already there at start, moved in from another folder, or seen only by the
periodic rescan, e.g. on a network share). A file inotify saw being written to, or an
empty one, waits for its close event; only if that never comes (events lost) is it taken
after ``EVENTED_FALLBACK_S`` seconds without change. It is claimed by an
atomic move into the spool, so it cannot be taken twice. What it contains (npy, DICOM,
garbage) is decided later by the worker.

The safe way to drop a file is to write it elsewhere on the same file system (or as
``NAME.part`` in this folder) and rename it into place. A file written in place in
several opens (``head -c … > x.npy; …; tail … >> x.npy``) is closed more than once, so
before one is taken it is checked for completeness: a ``.npy`` with fewer bytes than its
header declares, or a DICOM file that ends inside an element
(:func:`ecg_dicom.inputs.incomplete_reason`), waits for the rest; unchanged for
``incomplete_wait_s`` it is taken anyway and rejected with a reason saying it is cut
short, with a WARNING. A file that arrives with the name of one taken moments before is
logged, and a rejection of it says it may be the second part of one file.

Sidecars: ``<stem>.json`` beside ``<stem>.npy`` (see :mod:`ecg_dicom.sidecar`) is taken with
it. Write the sidecar first; a ``.npy`` without one waits ``sidecar_wait_s`` for it before it
is taken. A sidecar that arrives after its ``.npy`` was taken, or one that has had no
``.npy`` beside it for ``stray_sidecar_s``, is moved to ``rejected/`` with a reason (a
rejected job of its own, listed by ``ecg-dicom status``), never left in the folder forever.

WFDB records: the header ``X.hea`` is the input; the signal files it names (``X.dat``,
``X.mat``...) are its companions and are moved into the spool with it. A header whose
signal files are not all there with the bytes it declares waits for them (taken as soon as
they are; after ``incomplete_wait_s`` without a signal file arriving or growing it is taken
and rejected with the reason); a ``.dat`` or
``.mat`` is never taken on its own, and one with no ``.hea`` of its stem beside it (or one
that arrives after its header was taken) is refused like a stray sidecar. Drop the signal
files first, or together with the header.

Skipped: hidden files (``.name``; but ``..npy``, ``.dcm``..., nothing but dots before an
input suffix, are inputs with no name), partial files (``*.part``, ``*.tmp``, ``*~``).
What can never be an input is moved to ``rejected/`` with a reason (a rejected job, listed by
``ecg-dicom status``) at the next rescan, never opened and never left in the folder: named
pipes (FIFOs), device nodes and sockets, and folders named like an input (``x.npy/``,
``x.dcm/``). Where it cannot be moved (``rejected/`` on another file system, no
permission) one WARNING says why, once.
A symbolic link is taken as a link (never followed, never read) and refused by the worker
with a reason. While the job store's backlog is at the high-water mark
(``limits.queue_high_water``; counted together with the C-STOREs being stored, so the mark is
never passed, and resumed below 90 % of it) no file is taken: dropped files wait in the folder, safe,
until the worker catches up.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import stat
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ecg_dicom.config import Watcher as WatcherSettings
from ecg_dicom.files import REASON_SUFFIX, REJECTED_PREFIX, free_stem, safe_stem, write_reason
from ecg_dicom.ingest import SIDECAR_SUFFIX, Spool, output_name
from ecg_dicom.inputs import incomplete_reason, wfdb_companions
from ecg_dicom.queue import new_key
from ecg_dicom.sidecar import SIDECAR_INPUT_SUFFIXES, sidecar_path

LOG = logging.getLogger("ecg_dicom.watcher")
_PARTIAL_SUFFIXES = (".part", ".tmp", "~")
COMPANION_SUFFIXES = (".dat", ".mat")   # a WFDB record's signal files: taken with their header only
_SKIP_SUFFIXES = (*_PARTIAL_SUFFIXES, SIDECAR_SUFFIX, *COMPANION_SUFFIXES)
_TICK_S = 0.2
EVENTED_FALLBACK_S = 30.0
SAME_NAME_WINDOW_S = 60.0   # a file named like one taken this recently may be its second part
RESUME_FRACTION = 0.9       # after back-pressure, files are taken again once the backlog is below 90 % of the mark


_INPUT_SUFFIXES = ("npy", "dcm", "dicom")
# what a rescan finds that is neither a file nor a link: (test of st_mode, what the reason calls it)
_NOT_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device node"),
              (stat.S_ISBLK, "a block device node"), (stat.S_ISSOCK, "a socket"))


def is_candidate(path: Path) -> bool:
    """True for a file name the watcher may take (not hidden, partial, a sidecar or a WFDB
    signal file). A name
    that is nothing but dots and an input suffix (``..npy``) is an input without a name, not a
    hidden file."""
    name = path.name
    hidden = name.startswith(".") and name.lstrip(".").lower() not in _INPUT_SUFFIXES
    return not hidden and not name.lower().endswith(_SKIP_SUFFIXES)


def never_input(path: Path, mode: int) -> str | None:
    """Why the folder entry ``path`` (its own ``mode``) can never be an input, or None: a
    FIFO, device node or socket (never opened: reading a FIFO blocks), or a folder named like
    an input."""
    for test, what in _NOT_FILES:
        if test(mode):
            return f"{what}, not a file: refused unread (only regular files are taken)"
    if stat.S_ISDIR(mode) and path.name.lower().rsplit(".", 1)[-1] in _INPUT_SUFFIXES and "." in path.name:
        return ("a folder named like an input: the watched folder is read at its top level only; drop the "
                ".npy/.dcm files themselves")
    return None


class _Events(FileSystemEventHandler):
    """Filters watchdog events and hands paths to the watcher; never touches files."""

    def __init__(self, watcher: "FolderWatcher") -> None:
        self.watcher = watcher

    def on_closed(self, event: FileSystemEvent) -> None:
        self.watcher.notify(Path(str(event.src_path)), complete=True)

    def on_moved(self, event: FileSystemEvent) -> None:
        self.watcher.notify(Path(str(event.dest_path)), complete=True)

    def on_created(self, event: FileSystemEvent) -> None:
        # also what a file moved in from outside the folder looks like: no close event follows
        self.watcher.notify(Path(str(event.src_path)), complete=False)

    def on_modified(self, event: FileSystemEvent) -> None:
        self.watcher.notify(Path(str(event.src_path)), complete=False, evented=True)


class FolderWatcher:
    """Takes complete files from ``folder`` into ``spool``; run :meth:`run` in a thread.

    Parameters
    ----------
    folder : Path
        The watched folder (top level only).
    spool : Spool
        Where claimed files go.
    settings : config.Watcher
        ``stable_s``, ``rescan_s``, ``sidecar_wait_s``, ``incomplete_wait_s``, ``stray_sidecar_s``.
    rejected : Path
        Where a stray or late sidecar goes (``<output>/rejected``).
    high_water : int
        Backlog (``limits.queue_high_water``) at which no file is taken; None: no limit.
    """

    def __init__(self, folder: Path, spool: Spool, settings: WatcherSettings, rejected: Path | None = None,
                 high_water: int | None = None) -> None:
        self.folder = Path(folder)
        self.spool = spool
        self.settings = settings
        self.high_water = high_water
        self.paused = False
        self.rejected = Path(rejected) if rejected is not None else self.folder.parent / "rejected"
        # complete-looking files not taken yet: path -> (size, mtime_ns, since (monotonic), why)
        # why: "sidecar" (a .npy waiting for its sidecar), "incomplete" (cut short, waiting for the rest) or
        # "companions" (a WFDB header waiting for its signal files)
        self._held: dict[Path, tuple[int, int, float, str]] = {}
        # recently taken: lower-case file name -> (job id, monotonic time)
        self._taken: dict[str, tuple[int, float]] = {}
        # sidecars seen with no .npy beside them: path -> monotonic time first seen so
        self._lone_sidecars: dict[Path, float] = {}
        # WFDB headers held for their signal files: path -> what they wait for (a change restarts the wait)
        self._waiting_for: dict[Path, str] = {}
        # entries that can never be inputs but could not be moved aside: (path, inode), warned once
        self._stuck: set[tuple[Path, int]] = set()
        self._lock = threading.Lock()
        self._complete: set[Path] = set()
        # path -> (size, mtime_ns, monotonic time this signature was first seen,
        #          seconds it must stay unchanged: stable_s, or the fallback when inotify saw it written)
        self._pending: dict[Path, tuple[int, int, float, float]] = {}
        self._stop = threading.Event()

    def notify(self, path: Path, complete: bool, evented: bool = False) -> None:
        """News about ``path``: ``complete`` when the writer is known to be done; ``evented``
        when inotify reported a write to it (its close event will follow)."""
        if path.parent != self.folder or not is_candidate(path):
            return
        with self._lock:
            if complete:
                self._complete.add(path)
                return
            if path in self._held:  # unchanged since it was held: _recheck_held watches it
                return
            wait = max(EVENTED_FALLBACK_S, self.settings.stable_s) if evented else self.settings.stable_s
            size, mtime, since, old_wait = self._pending.get(path, (-1, -1, time.monotonic(), 0.0))
            self._pending[path] = (size, mtime, since, max(wait, old_wait))

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Observe the folder until :meth:`stop`; files already there are taken too."""
        observer = Observer()
        observer.schedule(_Events(self), str(self.folder), recursive=False)
        observer.start()
        try:
            next_scan = 0.0
            while not self._stop.is_set():
                if time.monotonic() >= next_scan:
                    self.rescan()
                    try:
                        self.check_sidecars()
                    except Exception:
                        LOG.exception("watcher error while checking sidecars")
                    next_scan = time.monotonic() + self.settings.rescan_s
                try:
                    self.take_ready()
                except Exception:  # e.g. the job store failing: files stay in the folder for later
                    LOG.exception("watcher error")
                self._stop.wait(_TICK_S)
        finally:
            observer.stop()
            observer.join()

    def rescan(self) -> None:
        """Add every candidate file in the folder to the stability check."""
        try:
            entries = list(self.folder.iterdir())
        except OSError as exc:
            LOG.error("cannot list the watch folder %s: %s", self.folder, exc)
            return
        for entry in entries:
            if is_candidate(entry):
                try:
                    st = entry.lstat()
                except OSError:
                    continue
                reason = never_input(entry, st.st_mode)
                if reason is not None:
                    self._refuse_entry(entry, st, reason)
                    continue
            self.notify(entry, complete=False)

    def take_ready(self) -> int:
        """Claim every file that is complete or has been stable long enough; returns how many."""
        if self._backlog_full():
            return 0
        now = time.monotonic()
        ready = []
        with self._lock:
            ready.extend(self._complete)
            self._complete.clear()
            for path, (size, mtime, since, wait) in list(self._pending.items()):
                if path in ready:
                    del self._pending[path]
                    continue
                try:
                    st = path.lstat()  # a link's own metadata: its target is never looked at
                except FileNotFoundError:
                    del self._pending[path]
                    continue
                if not _takeable(st.st_mode):
                    del self._pending[path]
                elif (st.st_size, st.st_mtime_ns) != (size, mtime):
                    self._pending[path] = (st.st_size, st.st_mtime_ns, now, wait)
                elif now - since >= (wait if st.st_size else max(wait, EVENTED_FALLBACK_S)):
                    del self._pending[path]
                    ready.append(path)
        taken = 0
        for path in ready:
            taken += self._consider(path, now)
        for path in list(self._held):
            if path not in ready:
                taken += self._recheck_held(path, now)
        return taken

    def _consider(self, path: Path, now: float) -> int:
        """A file that looks complete: take it, or hold it (cut short; a .npy without its sidecar)."""
        self._held.pop(path, None)
        try:
            st = path.lstat()
        except FileNotFoundError:
            return 0
        if not _takeable(st.st_mode):
            return 0
        if stat.S_ISLNK(st.st_mode):  # never read: taken as it is, refused by the worker
            return self._claim(path)
        if _named_by_header(path):  # a WFDB signal file (X.xyz): goes with its header
            return 0
        if wfdb_companions(path) and incomplete_reason(path) is not None:  # a header waiting for its signals
            self._held[path] = (st.st_size, st.st_mtime_ns, now, "companions")
            self._waiting_for[path] = incomplete_reason(path) or ""
            return 0
        if incomplete_reason(path) is not None:
            self._held[path] = (st.st_size, st.st_mtime_ns, now, "incomplete")
            LOG.info("a dropped file looks cut short; waiting up to %g s for the rest of it "
                     "(drop files by writing them elsewhere or as NAME.part, then renaming)",
                     self.settings.incomplete_wait_s)
            return 0
        sidecar = sidecar_path(path)
        if sidecar is not None and not self._sidecar_ready(sidecar, now) and self.settings.sidecar_wait_s > 0:
            self._held[path] = (st.st_size, st.st_mtime_ns, now, "sidecar")
            return 0
        return self._claim(path)

    def _recheck_held(self, path: Path, now: float) -> int:
        """A held file: changed -> back to the stability check; else take it when its wait is over."""
        size, mtime, since, why = self._held[path]
        try:
            st = path.lstat()
        except FileNotFoundError:
            del self._held[path]
            self._waiting_for.pop(path, None)
            return 0
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            del self._held[path]
            self._waiting_for.pop(path, None)
            self.notify(path, complete=False)
            return 0
        if why == "companions":
            reason = incomplete_reason(path)
            if reason is None:
                del self._held[path]
                self._waiting_for.pop(path, None)
                return self._claim(path)
            if reason != self._waiting_for.get(path):  # a signal file arrived or grew: wait on
                self._waiting_for[path] = reason
                self._held[path] = (size, mtime, now, why)
                return 0
            if now - since < self.settings.incomplete_wait_s:
                return 0
            del self._held[path]
            self._waiting_for.pop(path, None)
            LOG.warning("a dropped WFDB header still lacks its signal files (%s) after %g s: taking it, it will be "
                        "rejected; drop the signal files first, or together with the header",
                        reason, self.settings.incomplete_wait_s)
            return self._claim(path)
        if why == "sidecar":
            sidecar = sidecar_path(path)
            if now - since < self.settings.sidecar_wait_s and not self._sidecar_ready(sidecar, now):
                return 0
            del self._held[path]
            return self._claim(path)
        if now - since < self.settings.incomplete_wait_s:
            return 0
        del self._held[path]
        LOG.warning("a dropped file still looks cut short (%s) after %g s unchanged: taking it, it will be "
                    "rejected; drop files by writing them elsewhere or as NAME.part, then renaming",
                    incomplete_reason(path) or "unknown", self.settings.incomplete_wait_s)
        return self._claim(path)

    def _sidecar_ready(self, sidecar: Path, now: float) -> bool:
        """Whether ``sidecar`` is there to be taken: it exists and parses as JSON, or has not
        changed for ``sidecar_wait_s`` (then the worker says what is wrong with it)."""
        try:
            st = sidecar.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return False
        if stat.S_ISLNK(st.st_mode):  # never read: goes with its .npy, refused by the worker
            return True
        try:
            json.loads(sidecar.read_bytes())
            return True
        except (OSError, ValueError, RecursionError):
            return time.time() - st.st_mtime >= self.settings.sidecar_wait_s

    def _claim(self, path: Path) -> int:
        with self._lock:
            self._pending.pop(path, None)
        try:
            if not _takeable(path.lstat().st_mode):
                return 0
        except FileNotFoundError:
            return 0
        sidecar = sidecar_path(path)
        note = None
        earlier = self._taken.get(path.name.lower())
        if earlier is not None and time.monotonic() - earlier[1] < SAME_NAME_WINDOW_S:
            note = (f"A file of the same name was taken {time.monotonic() - earlier[1]:.1f} s before it (job "
                    f"{earlier[0]}): if one file was written in several opens, each part is rejected; drop files "
                    "by writing them elsewhere or as NAME.part, then renaming them into the folder.")
        try:  # a link is never read: no companions
            companions = [] if stat.S_ISLNK(path.lstat().st_mode) else [path.parent / n for n in wfdb_companions(path)]
        except FileNotFoundError:
            return 0
        with self.spool.admit(self.high_water) as admitted:   # the mark, atomically with the C-STOREs
            if not admitted:
                return 0   # stays in the folder; taken once the backlog is below the mark
            try:
                job_id = self.spool.claim(path, origin="watch", note=note,
                                          sidecar=sidecar if sidecar is not None and os.path.lexists(sidecar) else None,
                                          companions=[c for c in companions if os.path.lexists(c)])
            except OSError as exc:
                LOG.error("cannot take a dropped file into the spool: %s", exc)
                return 0
        if job_id is None:
            return 0
        self._remember_taken(path.name, job_id)
        if note is not None:
            LOG.warning("job %d accepted from the watch folder with the name of job %d, taken %.1f s before "
                        "(a file written in several opens?)", job_id, earlier[0], time.monotonic() - earlier[1])
        else:
            LOG.info("job %d accepted from the watch folder", job_id)
        return 1

    def _remember_taken(self, name: str, job_id: int) -> None:
        now = time.monotonic()
        keep = max(SAME_NAME_WINDOW_S, self.settings.stray_sidecar_s)
        for key, (_, when) in list(self._taken.items()):
            if now - when > keep:
                del self._taken[key]
        self._taken[name.lower()] = (job_id, now)

    # -- sidecars without their .npy -----------------------------------------------------------
    def check_sidecars(self) -> int:
        """Refuse sidecars (and WFDB signal files) that came after their input (header) was
        taken, or that have had none beside them for ``stray_sidecar_s``; returns how many
        were refused."""
        now = time.monotonic()
        try:
            names = {entry.name.lower(): entry for entry in self.folder.iterdir()}
        except OSError:
            return 0
        refused = 0
        for lower, path in names.items():
            if lower.startswith(".") or not _takeable(_mode(path)):
                continue
            if lower.endswith(SIDECAR_SUFFIX):
                what, owner_kind = "sidecar", ".npy"
                owners = [lower[: -len(SIDECAR_SUFFIX)] + suffix for suffix in SIDECAR_INPUT_SUFFIXES]
            elif lower.endswith(COMPANION_SUFFIXES):
                what, owner_kind = "WFDB signal file", ".hea header"
                owners = [lower.rsplit(".", 1)[0] + ".hea"]
            else:
                continue
            if any(name == owner or name.startswith((owner + ".", "." + owner)) for name in names for owner in owners):
                self._lone_sidecars.pop(path, None)   # its input is there (or on its way)
                continue
            taken = next((self._taken[o] for o in owners if o in self._taken), None)
            if taken is not None:
                refused += self._refuse(path, (
                    f"{what} that arrived {now - taken[1]:.1f} s after its {owner_kind} was taken (job {taken[0]}): "
                    f"not applied, job {taken[0]} was read without it. Write the {what} first (or at most "
                    f"{self.settings.sidecar_wait_s:g} s after the {owner_kind}) and drop the {owner_kind} again"))
            elif now - self._lone_sidecars.setdefault(path, now) >= self.settings.stray_sidecar_s:
                refused += self._refuse(path, (
                    f"{what} with no {owner_kind} of the same name beside it for {self.settings.stray_sidecar_s:g} s: "
                    f"it applies to nothing; drop a {what} together with (or just before) its {owner_kind}"))
        for path in [p for p in self._lone_sidecars if not p.exists()]:
            del self._lone_sidecars[path]
        return refused

    def _refuse(self, path: Path, reason: str) -> int:
        """Move a sidecar to ``rejected/`` with its reason, recorded as a rejected job."""
        self._lone_sidecars.pop(path, None)
        name = output_name(path.name)
        self.rejected.mkdir(parents=True, exist_ok=True)
        stem = free_stem(self.rejected, name, ("", REASON_SUFFIX))
        job_id = self.spool.queue.add_rejected(new_key(), name, "watch", path.name, reason,
                                               [REJECTED_PREFIX + stem, REJECTED_PREFIX + stem + REASON_SUFFIX])
        try:
            shutil.move(path, self.rejected / stem)
            write_reason(self.rejected, stem, reason)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            LOG.error("job %d: cannot move the refused sidecar (%s)", job_id, exc)
        LOG.warning("job %d rejected: %s", job_id, reason)
        return 1

    def _refuse_entry(self, path: Path, st: os.stat_result, reason: str) -> int:
        """Move something that can never be an input to ``rejected/`` (renamed, never opened
        or copied) with its reason, recorded as a rejected job; where it cannot be moved,
        one WARNING."""
        if (path, st.st_ino) in self._stuck:
            return 0
        name = safe_stem(path.name)
        try:
            self.rejected.mkdir(parents=True, exist_ok=True)
            stem = free_stem(self.rejected, name, ("", REASON_SUFFIX))
            os.rename(path, self.rejected / stem)   # a rename only: copying a FIFO would block
        except FileNotFoundError:
            return 0
        except OSError as exc:
            self._stuck.add((path, st.st_ino))
            LOG.warning("a folder entry that can never be an input stays in the watched folder: %s; it cannot be "
                        "moved to %s (%s): remove it", reason, self.rejected, exc.strerror or exc)
            return 0
        job_id = self.spool.queue.add_rejected(new_key(), output_name(path.name), "watch", path.name, reason,
                                               [REJECTED_PREFIX + stem, REJECTED_PREFIX + stem + REASON_SUFFIX])
        try:
            write_reason(self.rejected, stem, reason)
        except OSError as exc:
            LOG.error("job %d: cannot write the reason file (%s)", job_id, exc)
        LOG.warning("job %d rejected: %s", job_id, reason)
        return 1

    def _backlog_full(self) -> bool:
        """True (files are left where they are) from when the backlog reaches the high-water
        mark until it is below RESUME_FRACTION of it (hysteresis: the pause is not logged on
        and off at every job around the mark)."""
        if self.high_water is None:
            return False
        backlog = self.spool.queue.backlog()
        full = backlog >= (self.high_water * RESUME_FRACTION if self.paused else self.high_water)
        if full != self.paused:
            self.paused = full
            if full:
                LOG.warning("back-pressure: %d jobs waiting (limits.queue_high_water): the watch folder waits until "
                            "the backlog is below %d", self.high_water, math.ceil(self.high_water * RESUME_FRACTION))
            else:
                LOG.info("back-pressure over: the watch folder is taken again")
        return full


def _named_by_header(path: Path) -> bool:
    """Whether ``path`` is a signal file named by the WFDB header of its stem beside it."""
    header = path.with_suffix(".hea")
    return path.suffix.lower() != ".hea" and header.is_file() and path.name in wfdb_companions(header)


def _mode(path: Path) -> int:
    """``path``'s own st_mode (a link's, not its target's); 0 when it is gone."""
    try:
        return path.lstat().st_mode
    except OSError:
        return 0


def _takeable(mode: int) -> bool:
    """A regular file, or a symbolic link (taken as a link, refused unread by the worker)."""
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)
