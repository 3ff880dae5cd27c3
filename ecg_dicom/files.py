"""Atomic file writes and safe names: nothing half-written, nothing outside our folders."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from ecg_dicom.logsafe import strip_wire

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 100
# ``<name>-2``, ``<name>-3``...: how a name already taken is made distinct
COUNTER_SEPARATOR = "-"
REASON_SUFFIX = ".reason.txt"
REJECTED_PREFIX = "rejected/"   # a rejected job's files, as recorded in its outputs (relative to the output folder)


def safe_stem(name: str) -> str:
    """Turn any name (a wire string, a dropped file's name) into a safe file stem.

    Keeps letters, digits, '.', '_' and '-'; strips path parts and leading dots, so the
    result can never climb out of a folder or hide itself. A name with nothing left, or
    one that is too long, is replaced or shortened with a hash of the original.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = _UNSAFE.sub("_", base).lstrip(".")
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    if not stem.strip("_"):
        return f"input-{digest}"
    if len(stem) > MAX_STEM:
        return f"{stem[:MAX_STEM - 13]}-{digest}"
    return stem


def counted_stems(base: str):
    """``base``, ``base-2``, ``base-3``, ... (endless)."""
    yield base
    n = 2
    while True:
        yield f"{base}{COUNTER_SEPARATOR}{n}"
        n += 1


def free_stem(folder: str | Path, base: str, suffixes: tuple[str, ...]) -> str:
    """The first of :func:`counted_stems` for which no ``<stem><suffix>`` exists in ``folder``,
    so a new file set never overwrites an older one."""
    folder = Path(folder)
    for stem in counted_stems(base):
        if not any((folder / f"{stem}{suffix}").exists() for suffix in suffixes):
            return stem
    raise AssertionError("unreachable")


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_deferred = threading.local()


@contextlib.contextmanager
def deferred_sync() -> Iterator[None]:
    """Atomic writes in this thread skip their two fsyncs (file, folder) until the block
    ends; durability is then the caller's, with :func:`sync_filesystem`.

    Why: an fsync costs ~5 ms here, two per file; ``convert`` writes two or more files per
    ECG. It syncs once per batch of results instead, before writing their completion
    markers, so a marker is never durable before the results it vouches for.
    """
    before = getattr(_deferred, "active", False)
    _deferred.active = True
    try:
        yield
    finally:
        _deferred.active = before


def sync_filesystem(folder: str | Path) -> None:
    """Flush every file and rename on the file system holding ``folder`` to disk: one
    ``syncfs`` (Linux), else a full ``sync``."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs failed on {folder}")
    except AttributeError:  # no syncfs here
        os.sync()
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path, fh) -> None:
    """Rename a written temporary file into place, durably unless in :func:`deferred_sync`."""
    durable = not getattr(_deferred, "active", False)
    if durable:
        fh.flush()
        os.fsync(fh.fileno())
    fh.close()
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        _commit(tmp, path, fh)
    return path


def write_npy_atomic(path: str | Path, array: np.ndarray) -> Path:
    """Save ``array`` as .npy (no pickle) atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        _commit(tmp, path, fh)
    return path


def write_reason(folder: str | Path, stem: str, reason: str) -> Path:
    """Write ``<folder>/<stem>.reason.txt`` holding the one-line reason an input was refused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = strip_wire(reason.strip())  # one line: values from the input escaped
    return write_bytes_atomic(folder / f"{safe_stem(stem)}{REASON_SUFFIX}", (text + "\n").encode())
