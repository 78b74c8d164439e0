"""What every ranged download of an engine shares (:class:`Context`), how the stall watchdog
sees one request in flight (:class:`Active`), and the blocking write of received bytes
(:func:`pwrite_all`, run in a worker thread)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from .._cache.layout import translate_oserror
from .._config import HubConfig
from .._progress.events import ProgressEvent
from .._transport.base import Spliced, Transport
from .ratelimit import TokenBucket
from .slots import HostSlots
from .watchdog import Watched as Active

__all__ = ["Active", "Bytes", "Chunk", "Context", "pwrite_all", "write_chunks"]

Bytes = bytes | memoryview
#: Received bytes: in memory, or held in the kernel by the transport (see ``Spliced``).
Chunk = bytes | memoryview | Spliced


def write_chunks(fd: int, chunks: Sequence[Chunk], offset: int) -> None:
    """Write ``chunks`` contiguously at ``offset``: runs in memory with ``pwritev``, spliced
    ones moved by the kernel (blocking; runs in a worker thread)."""
    run: list[Bytes] = []
    at = offset
    for chunk in chunks:
        if isinstance(chunk, (bytes, memoryview)):
            run.append(chunk)
            continue
        if run:
            pwrite_all(fd, run, at)
            at += sum(map(len, run))
            run = []
        try:
            chunk.write_to(fd, at)
        except OSError as exc:
            raise translate_oserror(exc, "writing a partial download") from exc
        at += len(chunk)
    if run:
        pwrite_all(fd, run, at)


def pwrite_all(fd: int, buffers: Sequence[Bytes], offset: int) -> None:
    """Write ``buffers`` contiguously at ``offset`` (blocking; runs in a worker thread)."""
    if len(buffers) > 256:
        buffers = [b"".join(buffers)]
    total = sum(map(len, buffers))
    try:
        done = os.pwritev(fd, buffers, offset)
        if done < total:
            rest = memoryview(b"".join(buffers))[done:]
            while rest:
                n = os.pwrite(fd, rest, offset + done)
                done += n
                rest = rest[n:]
    except OSError as exc:
        raise translate_oserror(exc, "writing a partial download") from exc


def file_threads() -> anyio.CapacityLimiter:
    """The limit on worker threads that move file bytes (writes, hashing, resume state), one
    per event loop, shared by every download of an engine: the number of CPUs, at least 4.

    That work is memory copies and SHA-256, which release the GIL but need a core: threads
    beyond the cores only add GIL hand-offs and wake-ups. With anyio's default 40 threads, a
    prefetch of 60 models made 118,000 futex calls and ran 102 threads; with 4, it finished
    7 % sooner (2.14 s against 1.99 s, medians of 6, `benchmarks/` scenario C). Four, not
    two, leave room for a thread that waits in the kernel (the page cache, a busy disk).
    Blocking waits (``fsync``, waiting for a lock) stay on anyio's default threads, so a
    slow disk flush never holds up a write. A file's first look at the cache and the taking
    of its lock when free (which never waits) run here too: anyio spawns a thread per
    concurrent call, and a prefetch of 60 files spent 27 ms starting 40 of them before the
    first request (3.6 ms here).
    """
    return anyio.CapacityLimiter(max(4, os.cpu_count() or 1))


@dataclass
class Context:
    """What every download of an engine shares."""

    config: HubConfig
    transport: Transport
    limiter: anyio.CapacityLimiter
    bucket: TokenBucket | None
    sleep: Callable[[float], Awaitable[None]]
    clock: Callable[[], float]
    emit: Callable[[ProgressEvent], None]
    #: The connection slots of a URL's host (one limiter per origin, shared by the engine's
    #: downloads on one loop, see :mod:`.slots`). A request takes one *before* the watchdog
    #: starts timing it: with ``max_connections_per_host`` below ``max_connections``, the
    #: workers queued for a connection to one host are waiting, not stalled.
    host_slot: HostSlots
    #: The worker threads for the bytes of every file on one loop: writes, hashing, resume
    #: state (see :func:`file_threads`).
    threads: anyio.CapacityLimiter | None = None

    def notify_retry(self, name: str) -> Callable[[str], None]:
        """What a :class:`Retrier` calls on each retry of ``name``: a ``retry`` event."""
        return lambda message: self.emit(ProgressEvent("retry", name, message=message))

    @property
    def min_rate(self) -> float:
        """The watchdog's floor; never above what the bandwidth cap leaves each connection."""
        floor = float(self.config.min_rate)
        if self.config.limit_rate is not None:
            floor = min(floor, self.config.limit_rate / (2 * self.config.max_connections))
        return floor
