"""Room in the process's table of file descriptors, made before a download needs it.

Linux keeps a process's open descriptors in a table of 64 slots at first, and doubles it when a
descriptor past its end is opened. In a process of more than one thread, growing it waits for
an RCU grace period, and the thread that opens the descriptor is blocked meanwhile: here (2
cores) 6-12 ms at each doubling, and the thread is the event loop opening a socket or a pipe.
A download on 40 connections holds about 250 descriptors (per connection its socket, a
duplicate of it while a body is spliced, and two pipes of two ends, see
:mod:`asynchub._transport.splicing`), so it paid two such waits (64 to 128 to 256), both while
its connections were ramping up. With the table made big enough first, a 512 MiB download on
40 connections capped at 25 MB/s took a median of 0.740-0.752 s in-process against
0.779-0.783 s, and 1.09-1.12 CPU-s against 1.13-1.15 (two series of twelve runs each,
interleaved).

:func:`reserve` is called where asynchub makes its own event loop, before the loop's thread
starts (:func:`asynchub._loops.loop_factory`: a process of one thread grows its table without
any wait), for :data:`DEFAULT` descriptors; and when an engine is made, for its connection
budget (:data:`PER_CONNECTION` each), which costs at most one wait, before any download.

Choices:

* The table is grown by duplicating a descriptor to the lowest free number at or above the
  size wanted (``fcntl F_DUPFD``, which never replaces an open descriptor, unlike ``dup2``)
  and closing the copy at once: the table keeps its size (Linux never shrinks it). It costs
  8 bytes of kernel memory per slot, 8 KiB for 1024.
* Never past the soft ``RLIMIT_NOFILE`` (often 1024): up to it, and nothing is done where the
  duplicate fails (no such limit left, no ``fcntl`` on the platform); descriptors are then
  added as before, waits included.
"""

from __future__ import annotations

import os

try:
    import fcntl
    import resource
except ImportError:  # not a POSIX system: nothing to reserve
    fcntl = None  # type: ignore[assignment]
    resource = None  # type: ignore[assignment]

__all__ = ["DEFAULT", "PER_CONNECTION", "reserve"]

#: The descriptors room is made for before asynchub's own loop starts.
DEFAULT = 1024
#: Descriptors one connection may hold at once (socket, its duplicate, two pipes of two ends,
#: and a share of the files being written), for :func:`reserve` by connection budget.
PER_CONNECTION = 8

_reserved: tuple[int, int] = (0, 0)  # (process id, descriptors room was made for)


def reserve(count: int) -> int:
    """Make room for ``count`` descriptors (at most the soft limit) in this process's table;
    how many it now has room for as far as asynchub knows (0: nothing could be done)."""
    global _reserved
    pid, done = _reserved
    if pid == os.getpid() and done >= count:
        return done
    if fcntl is None or resource is None:
        return 0
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        count = min(count, soft)
    if count <= 1:
        return 0
    try:
        probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        high = fcntl.fcntl(probe, fcntl.F_DUPFD_CLOEXEC, count - 1)
    except OSError:  # no free number at or above it within the limit
        return 0
    finally:
        os.close(probe)
    os.close(high)
    _reserved = (os.getpid(), count)
    return count
