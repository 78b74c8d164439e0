"""Hash bytes of a partial file straight from the page cache through memory maps, where a
read is not expected to fail.

The hash cursor reads back every byte that arrived out of order (most of a file fetched on
many connections). Through ``preadv`` each byte is copied once more into a buffer, and the
worker thread takes the GIL back twice per block; through a read-only ``mmap`` window
SHA-256 reads the cached pages where they are, in one ``update`` call per window, with the GIL
released throughout.

Choices:

* **Measured** on this 2-core VM (Linux 6.18, ext4, whose page cache holds large folios):
  hashing a freshly written 1 GiB file took 0.61 s through 8 or 32 MiB maps and 0.66-0.67 s
  through a 1 MiB ``preadv`` buffer, alone. In a download the difference is larger, because
  the copy competes with the receive path for the other core and for memory. In 1 GiB
  downloads from a loopback mirror (four runs each, alternating with the ``preadv`` code),
  the hash thread spent 0.82-0.87 s in its steps instead of 1.02-1.13 s (0.64 CPU-s instead
  of 0.76), and the download took 1.07-1.13 s instead of 1.22-1.40 s without a cap,
  1.19-1.23 s instead of 1.29-1.36 s with 25 MB/s per connection; 512 MiB with that cap,
  0.66-0.70 s instead of 0.70-0.78 s.
* **Only where a read should not fail.** A read through a map that fails (an I/O error, or a file
  cut shorter meanwhile) is not an exception but ``SIGBUS``, which kills the process. So a
  map is used only (:func:`mappable`):

  - on Linux, for a file on a local file system (the kind named in ``/proc/self/mountinfo``
    for the file's device is one of :data:`LOCAL`; network and FUSE file systems, GlusterFS
    included, and anything unknown read through ``preadv``);
  - for bytes this process wrote in this download (the hash cursor is told; a resumed
    download re-hashes its earlier bytes with ``preadv``, since they may have to come from
    the disk), which are in the page cache unless memory ran short;
  - never past the file's end: its size is checked before each map, and a file shorter than
    the bytes to hash is the same :class:`OSError` as through ``preadv``.

  The partial file is the download's own, under its lock, and never truncated while a
  download holds it.
* A step (:data:`~asynchub._engine.hashing.STEP`, 32 MiB) is mapped in windows of
  :data:`WINDOW` (8 MiB), one at a time, so the memory a download maps stays small.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from typing import Any

__all__ = ["LOCAL", "WINDOW", "hash_mapped", "mappable"]

#: The most bytes mapped at once. Mapped pages count in the process's resident memory while
#: they are mapped: with 8 MiB windows a 1 GiB download peaked at 76-104 MB (78-105 MB in
#: the benchmark), with 32 MiB windows at 93-132 MB, through a buffer at 76 MB; the speed is
#: the same (one GIL hand-off per 8 MiB, ~5 ms of SHA-256).
WINDOW = 8 * 1024 * 1024

#: File systems whose cached pages a map may read (block-device and memory file systems).
LOCAL = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "bcachefs", "tmpfs", "overlay"}
)

_kinds: dict[int, str | None] = {}  # st_dev -> file system type (None: not found)
_kinds_lock = threading.Lock()


def _kind(dev: int) -> str | None:
    """The type of the file system mounted from device ``dev`` (``/proc/self/mountinfo``)."""
    with _kinds_lock:
        if dev in _kinds:
            return _kinds[dev]
    want = f"{os.major(dev)}:{os.minor(dev)}"
    found: str | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                fields = line.split()
                if len(fields) > 2 and fields[2] == want and " - " in line:
                    found = line.split(" - ", 1)[1].split()[0]
                    break
    except OSError:
        found = None
    with _kinds_lock:
        _kinds[dev] = found
    return found


def mappable(fd: int) -> bool:
    """Whether bytes of the file open as ``fd`` may be hashed through a map (module
    docstring)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        dev = os.fstat(fd).st_dev
    except OSError:
        return False
    return _kind(dev) in LOCAL


def hash_mapped(fd: int, digest: Any, start: int, end: int) -> int:
    """Feed bytes ``[start, end)`` of ``fd`` to ``digest`` through read-only maps of at most
    :data:`WINDOW` bytes; returns how many were hashed (less than asked only if the file is
    shorter, and then none). Blocking: run it in a worker thread."""
    if end <= start or os.fstat(fd).st_size < end:
        return 0
    offset = start
    while offset < end:
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        stop = min(end, base + WINDOW)
        window = mmap.mmap(
            fd, stop - base, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=base
        )
        try:
            with memoryview(window) as view, view[offset - base :] as part:
                digest.update(part)
        finally:
            window.close()
        offset = stop
    return end - start
