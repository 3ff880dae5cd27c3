"""Watched folder: ``.npy`` and DICOM files dropped into ``folders.watch`` become jobs.

A file is taken only once it is complete: when inotify reports it closed after writing
(or moved in), or else when its size and mtime have not changed for ``stable_s`` seconds
(files already there at start, moved in from another folder, or seen only by the
periodic rescan, e.g. on a network share). A file inotify saw being written to, or an
empty one, waits for its close event; only if that never comes (events lost) is it taken
after ``EVENTED_FALLBACK_S`` seconds without change. It is claimed by an
atomic move into the spool, so it cannot be taken twice. What it contains (npy, DICOM,
garbage) is decided later by the worker.

Skipped: hidden files (``.name``), partial files (``*.part``, ``*.tmp``, ``*~``), and
sidecars ``<stem>.json`` (taken together with ``<stem>.npy``; write the sidecar first).
A symbolic link is taken as a link (never followed) and refused by the worker with a reason.
While the job store's backlog is at the high-water mark (``limits.queue_high_water``) no
file is taken: dropped files wait in the folder, safe, until the worker catches up.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ecg_dicom.config import Watcher as WatcherSettings
from ecg_dicom.ingest import SIDECAR_SUFFIX, Spool

LOG = logging.getLogger("ecg_dicom.watcher")
_SKIP_SUFFIXES = (".part", ".tmp", "~", SIDECAR_SUFFIX)
_TICK_S = 0.2
EVENTED_FALLBACK_S = 30.0


def is_candidate(path: Path) -> bool:
    """True for a file name the watcher may take (not hidden, partial or a sidecar)."""
    return not path.name.startswith(".") and not path.name.lower().endswith(_SKIP_SUFFIXES)


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
        ``stable_s`` and ``rescan_s``.
    """

    def __init__(self, folder: Path, spool: Spool, settings: WatcherSettings, high_water: int | None = None) -> None:
        self.folder = Path(folder)
        self.spool = spool
        self.settings = settings
        self.high_water = high_water
        self.paused = False
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
            taken += self._claim(path)
        return taken

    def _claim(self, path: Path) -> int:
        with self._lock:
            self._pending.pop(path, None)
        try:
            if not _takeable(path.lstat().st_mode):
                return 0
        except FileNotFoundError:
            return 0
        sidecar = path.with_suffix(SIDECAR_SUFFIX)
        try:
            job_id = self.spool.claim(path, origin="watch",
                                      sidecar=sidecar if os.path.lexists(sidecar) else None)
        except OSError as exc:
            LOG.error("cannot take a dropped file into the spool: %s", exc)
            return 0
        if job_id is None:
            return 0
        LOG.info("job %d accepted from the watch folder", job_id)
        return 1

    def _backlog_full(self) -> bool:
        """True (files are left where they are) while the backlog is at the high-water mark."""
        if self.high_water is None:
            return False
        full = self.spool.queue.backlog() >= self.high_water
        if full != self.paused:
            self.paused = full
            if full:
                LOG.warning("back-pressure: %d jobs waiting (limits.queue_high_water): the watch folder waits",
                            self.high_water)
            else:
                LOG.info("back-pressure over: the watch folder is taken again")
        return full


def _takeable(mode: int) -> bool:
    """A regular file, or a symbolic link (taken as a link, refused unread by the worker)."""
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)
