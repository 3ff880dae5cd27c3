"""Draw report pages in a child process, while the caller writes a result's other files.

Why: drawing the 12-lead page is the longest single step of a result (matplotlib, pure
Python, ~100-200 ms on this 2-core machine), and the service's worker would otherwise do it
after the waveform object, the ``.npy`` and the ``.json``, on the same core and under the
same interpreter lock as the listener's and the delivery's threads. Drawn in a child
process, it runs on the other core in parallel with those writes (issue 20 item 8: C-STORE
to every result listed in PACS, with the page).

One child, started with ``spawn`` (the service is multi-threaded: no ``fork``), warmed up
with one page in the background at start so the first ECG does not pay matplotlib's imports. It ignores
SIGINT/SIGTERM (the service stops it) and is killed by the kernel when the thread that
started it ends (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the service leaves no child
behind. Should the child die or hang, that
page is drawn in-process instead (the same function: the same bytes) and a new child is
started: a page is never lost to the child.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from ecg_dicom.report.page import ReportData, render

LOG = logging.getLogger("ecg_dicom.report")
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent thread dies
RENDER_TIMEOUT_S = 60.0  # a page takes well under a second; past this the child is taken for hung
_WARM_UP = ReportData(leads_uv=np.zeros((12, 5000)), fs=500.0, input_lead="I", model_name="warm-up",
                      model_version="warm-up", header={})


def _child_setup(parent: int) -> None:
    """In the child: the service decides when it stops (Ctrl-C reaches the whole group), and
    its death ends the child (Linux: ``PR_SET_PDEATHSIG``), ``kill -9`` included."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child outlives a killed service until its pipe closes
        pass
    if os.getppid() != parent:  # the service died before the line above took effect
        os._exit(0)


def _warm_up_done(future: Future) -> None:
    """A warm-up that failed says so (the next page finds the child broken and restarts it)."""
    if not future.cancelled() and future.exception() is not None:
        LOG.warning("page drawing process failed to warm up (%s): the next page restarts it",
                    type(future.exception()).__name__)


class PendingPage:
    """A page being drawn; :meth:`result` gives its PDF bytes."""

    def __init__(self, owner: PageRenderer, data: ReportData, paper: str, future: Future | None) -> None:
        self._owner, self._data, self._paper, self._future = owner, data, paper, future

    def result(self) -> bytes:
        """The page's PDF bytes; drawn here when the child failed (a bad record's own error
        is raised as it would be in-process)."""
        if self._future is not None:
            try:
                return self._future.result(timeout=RENDER_TIMEOUT_S)
            except (BrokenProcessPool, FutureTimeout) as exc:
                self._owner.restart(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return render(self._data, "pdf", self._paper)


class PageRenderer:
    """Draws PDF pages in one child process; :meth:`submit` returns at once."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> PageRenderer:
        """Start the child and have it draw one page (its imports and font cache, ~1-3 s) in
        the background: the service is ready meanwhile, and a first ECG that comes sooner
        waits for the warm-up rather than pay for it twice."""
        with self._lock:
            self._pool = pool = self._new_pool()
        try:
            pool.submit(render, _WARM_UP, "pdf", "A4").add_done_callback(_warm_up_done)
        except (BrokenProcessPool, RuntimeError) as exc:
            self.restart(f"{type(exc).__name__}: {exc}")
        return self

    @staticmethod
    def _new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_child_setup, initargs=(os.getpid(),))

    def submit(self, data: ReportData, paper: str) -> PendingPage:
        """Start drawing ``data``'s page on ``paper`` ("A4"/"Letter")."""
        with self._lock:
            pool = self._pool
        future = None
        if pool is not None:
            try:
                future = pool.submit(render, data, "pdf", paper)
            except (BrokenProcessPool, RuntimeError) as exc:  # died since, or shut down
                self.restart(f"{type(exc).__name__}: {exc}")
        return PendingPage(self, data, paper, future)

    def restart(self, reason: str) -> None:
        """The child failed: stop it and start a new one (the page in hand is drawn in-process)."""
        LOG.warning("page drawing process failed (%s): this page is drawn in-process, a new process is started",
                    reason)
        with self._lock:
            old, self._pool = self._pool, None
            if old is not None:
                _kill(old)
                self._pool = self._new_pool()

    def pids(self) -> list[int]:
        """The child's process id(s), for memory accounting (empty before the first page)."""
        with self._lock:
            pool = self._pool
        return [p.pid for p in (getattr(pool, "_processes", None) or {}).values()] if pool is not None else []

    def close(self) -> None:
        """Stop the child (a page being drawn is abandoned: its job is redone at the next start)."""
        with self._lock:
            old, self._pool = self._pool, None
        if old is not None:
            old.shutdown(wait=True, cancel_futures=True)


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool whose child may hang: terminate it, then let the executor wind down."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
