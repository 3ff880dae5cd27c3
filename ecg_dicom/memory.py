"""Handing freed memory back to the system after a big piece of work.

glibc keeps memory that numpy, torch and pydicom freed in its arenas for reuse, so after an
hour-long input (hundreds of MB of arrays, ~110 DICOM objects) the service's resident size
would stay at its peak. ``malloc_trim(0)`` returns what is free in every arena to the
system; elsewhere (not glibc) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def release_freed_memory() -> None:
    """Return memory freed so far to the system (glibc); a no-op where that is not possible."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass
