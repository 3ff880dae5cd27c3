"""Ingest: the spool that both doors (C-STORE SCP, watched folder) put accepted inputs into.

An input is accepted only once it is durable: its bytes are in ``<work>/spool`` (fsync,
atomic rename, fsync of the folder) and its job row is committed. A spool file is named
``<key>-<safe original name>``; the job key and the output name can be read back from it,
so a file whose row was never committed (a crash in between) is recovered at start.
A ``.npy`` sidecar (``{"fs": ..., "lead": ...}``) sits beside it as ``<spool file>.json``;
a WFDB header's signal files (its companions) in the folder ``<spool file>.files/``, under
the names the header gives them.
A symbolic link dropped into the watched folder is moved as a link, never followed; the
worker refuses it with a reason.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ecg_dicom.files import fsync_dir, safe_stem, write_bytes_atomic
from ecg_dicom.queue import KEY_LENGTH, Job, JobQueue, new_key
from ecg_dicom.sidecar import MAX_SIDECAR_BYTES, SIDECAR_SUFFIX

LOG = logging.getLogger("ecg_dicom.ingest")
_PART = ".part"
_INPUT_SUFFIXES = (".dcm", ".npy", ".dicom", ".xml", ".hea", ".scp")
COMPANIONS_SUFFIX = ".files"


def output_name(filename: str) -> str:
    """Output stem for an input file name: sanitised, without a .dcm/.npy suffix."""
    stem = safe_stem(filename)
    for suffix in _INPUT_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


class Spool:
    """The spool folder plus the job store it feeds.

    Parameters
    ----------
    folder : Path
        ``<work>/spool``; must be on the same file system as the work folder.
    queue : JobQueue
        Where accepted inputs are recorded.
    """

    def __init__(self, folder: Path, queue: JobQueue) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.queue = queue
        self.failing = False  # the last store_bytes failed (disk full, job store unavailable...)
        self._admit_lock = threading.Lock()
        self._admitted = 0  # inputs let in by admit() and not yet recorded (or given up)

    @contextmanager
    def admit(self, high_water: int | None) -> Iterator[bool]:
        """Back-pressure, atomically for every door and association: yields True (and counts
        the input as in flight until the block ends) when the backlog plus the inputs already
        in flight is below ``high_water`` (None: no limit), else False. Check and count happen
        under one lock, so concurrent senders never take the backlog past the mark."""
        with self._admit_lock:
            ok = high_water is None or self.queue.backlog() + self._admitted < high_water
            if ok:
                self._admitted += 1
        try:
            yield ok
        finally:
            if ok:
                with self._admit_lock:
                    self._admitted -= 1

    def path(self, job: Job) -> Path:
        """The job's input file."""
        return self.folder / job.spool

    def sidecar(self, job: Job) -> Path:
        """Where the job's ``.npy`` sidecar is, if it has one."""
        return self.folder / (job.spool + SIDECAR_SUFFIX)

    def companions(self, job: Job) -> Path:
        """The folder of the job's companion files (a WFDB header's signal files), if any."""
        return self.folder / (job.spool + COMPANIONS_SUFFIX)

    def store_bytes(self, data: bytes, filename: str, origin: str) -> int:
        """Make ``data`` durable as an input called ``filename`` and record it; returns the job id.

        Raises OSError (e.g. ENOSPC) or sqlite3.Error, leaving no half-written file behind.
        """
        key = new_key()
        target = self.folder / f"{key}-{safe_stem(filename)}"
        try:
            write_bytes_atomic(target, data)
            job_id = self.queue.add(key, output_name(filename), origin, target.name, source_name=filename)
        except BaseException:
            self.failing = True
            _unlink_quietly(target.with_name(f".{target.name}{_PART}"))
            _unlink_quietly(target)
            raise
        self.failing = False
        return job_id

    def writable(self) -> bool:
        """False while inputs cannot be spooled: after a failed :meth:`store_bytes`, until a
        probe file can be written (and fsynced) in the spool again."""
        if self.failing:
            probe = self.folder / f".probe{_PART}"
            try:
                write_bytes_atomic(probe, b"probe")
                self.failing = False
            except OSError:
                _unlink_quietly(probe.with_name(f".{probe.name}{_PART}"))
            _unlink_quietly(probe)
        return not self.failing

    def claim(self, path: Path, origin: str, sidecar: Path | None = None, note: str | None = None,
              companions: list[Path] = ()) -> int | None:
        """Take a complete file out of the watched folder by moving it into the spool.

        The move is atomic (``os.replace``), so a file is taken at most once. On another
        file system the file is copied durably and then removed. ``sidecar`` (if given)
        is copied in first and removed last; so are ``companions`` (a WFDB header's signal
        files, copied into ``<spool file>.files/``). ``note`` goes with the job (see
        :class:`ecg_dicom.queue.Job`). Returns the job id, or None if the file was gone already.
        """
        key = new_key()
        target = self.folder / f"{key}-{safe_stem(path.name)}"
        if sidecar is not None:
            try:
                if sidecar.is_symlink():  # moved as a link, never read: the worker refuses it
                    os.replace(sidecar, Path(str(target) + SIDECAR_SUFFIX))
                else:
                    with open(sidecar, "rb") as fh:  # one byte past the limit is enough to refuse it
                        write_bytes_atomic(Path(str(target) + SIDECAR_SUFFIX), fh.read(MAX_SIDECAR_BYTES + 1))
            except FileNotFoundError:
                sidecar = None
        folder = Path(str(target) + COMPANIONS_SUFFIX)
        if companions:
            folder.mkdir()
            for companion in companions:
                part = folder / f".{companion.name}{_PART}"
                try:
                    shutil.copyfile(companion, part, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                with open(part, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(part, folder / companion.name)
            fsync_dir(folder)
        try:
            os.replace(path, target)
            fsync_dir(self.folder)
        except FileNotFoundError:
            _unlink_quietly(Path(str(target) + SIDECAR_SUFFIX))
            shutil.rmtree(folder, ignore_errors=True)
            return None
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            part = target.with_name(f".{target.name}{_PART}")
            if path.is_symlink():  # the link itself, never its target
                os.symlink(os.readlink(path), part)
            else:
                shutil.copyfile(path, part)
                with open(part, "rb+") as fh:
                    os.fsync(fh.fileno())
            os.replace(part, target)
            fsync_dir(self.folder)
            path.unlink()
        job_id = self.queue.add(key, output_name(path.name), origin, target.name, source_name=path.name, note=note)
        if sidecar is not None:
            _unlink_quietly(sidecar)
        for companion in companions:
            _unlink_quietly(companion)
        return job_id

    def remove(self, job: Job) -> None:
        """Delete a finished job's input (and sidecar, companions) from the spool."""
        _unlink_quietly(self.path(job))
        _unlink_quietly(self.sidecar(job))
        shutil.rmtree(self.companions(job), ignore_errors=True)

    def recover(self) -> tuple[int, int]:
        """At start: record spool files that have no job row, drop leftovers of finished jobs
        and half-written ``.part`` files. Returns (recovered, removed)."""
        recovered = removed = 0
        for entry in sorted(self.folder.iterdir()):
            name = entry.name
            if name.startswith(".") and name.endswith(_PART):
                _unlink_quietly(entry)
                removed += 1
                continue
            key, sep, original = name.partition("-")
            if not sep or len(key) != KEY_LENGTH or name.endswith(SIDECAR_SUFFIX) or \
                    not (entry.is_symlink() or entry.is_file()):
                continue
            state = self.queue.state_of(key)
            if state is None:
                self.queue.add(key, output_name(original), "recovered", name)
                LOG.warning("recovered spool file of job key %s (accepted just before a crash)", key)
                recovered += 1
            elif state not in ("waiting", "processing"):
                _unlink_quietly(entry)
                _unlink_quietly(Path(str(entry) + SIDECAR_SUFFIX))
                shutil.rmtree(Path(str(entry) + COMPANIONS_SUFFIX), ignore_errors=True)
                removed += 1
        for entry in self.folder.glob(f"*{SIDECAR_SUFFIX}"):
            if not os.path.lexists(str(entry)[: -len(SIDECAR_SUFFIX)]):
                _unlink_quietly(entry)
                removed += 1
        for entry in self.folder.glob(f"*{COMPANIONS_SUFFIX}"):  # copies: the originals are still in the folder
            if entry.is_dir() and not os.path.lexists(str(entry)[: -len(COMPANIONS_SUFFIX)]):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return recovered, removed


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
