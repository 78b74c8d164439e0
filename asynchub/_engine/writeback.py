"""Ask the disk to start writing bytes as soon as they are in the page cache.

Every verified file is ``fsync``-ed before its rename (a cache name must never point at bytes
that a power cut could lose). Left alone, Linux starts writing dirty pages back only after
``dirty_background_ratio`` of memory (gigabytes on a large machine) or 30 s, so a download of
many small files wrote nearly all of its bytes to the disk at the end, one ``fsync`` after the
other: measured in the 60-model benchmark, half a second of tail with the network idle.

:func:`start_writeback` calls ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` for the bytes just
written (in the writer thread, after each batch): it queues them for the disk and returns
without waiting, so the disk works while the network does and the final ``fsync`` finds little
left. Choices:

* Through :mod:`ctypes` on the C library: Python's :mod:`os` has no ``sync_file_range``; the
  call releases the GIL. Elsewhere (macOS, or a C library without it) it does nothing, and
  the final ``fsync`` does all the work as before.
* Errors are ignored: it is only a hint, and the ``fsync`` before the rename reports real disk
  errors.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

__all__ = ["SYNC_FILE_RANGE_WRITE", "start_writeback"]

SYNC_FILE_RANGE_WRITE = 2


def _load() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _load()


def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """Queue bytes ``[offset, offset + nbytes)`` of ``fd`` for writing to disk, without
    waiting; whether the platform could be asked (blocking only if the disk's queue is full:
    call it in a worker thread)."""
    if _SYNC_FILE_RANGE is None or nbytes <= 0:
        return False
    return _SYNC_FILE_RANGE(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) == 0
