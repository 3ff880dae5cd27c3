"""``<work>/service.lock``: whether a service is running on a work folder, robust to kill -9.

A running ``ecg-dicom serve`` holds an exclusive ``flock`` on the file for its whole life
and writes who it is into it (pid, start time, where it listens). The kernel drops the
lock when the process ends, however it ends, so a lock that can be taken means no service
is running, whatever the file says. A second ``serve`` on the same work folder is refused
(two would race over the job store and the result names).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from ecg_dicom.errors import ConfigError

LOCK_NAME = "service.lock"
ACQUIRE_TRIES_S = 2.0   # a `status` peeking at the lock holds it for microseconds: try again meanwhile


class ServiceLock:
    """The lock of the service running on ``work`` (see the module docstring)."""

    def __init__(self, work: str | Path) -> None:
        self.path = Path(work) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, info: dict[str, Any]) -> None:
        """Take the lock and record ``info`` (plus pid and start time) in it; raises
        :class:`ConfigError` when another service holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + ACQUIRE_TRIES_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    holder = read_info(self.path) or {}
                    os.close(fd)
                    raise ConfigError(f"folders.work: another ecg-dicom serve (pid {holder.get('pid', '?')}) is "
                                      f"running on {self.path.parent}") from None
                time.sleep(0.05)
        record = json.dumps({"pid": os.getpid(), "started": time.time(), **info}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd

    def release(self) -> None:
        """Let go (at a clean stop; the kernel does it on any other end)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_info(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_bytes() or b"null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def running_service(work: str | Path) -> dict[str, Any] | None:
    """What the service running on ``work`` recorded (pid, started, listen...), or None when
    no service holds the lock."""
    path = Path(work) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return read_info(path) or {}
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
