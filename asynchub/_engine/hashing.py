"""Streaming SHA-256 over a file whose chunks arrive out of order.

A :class:`HashCursor` follows the *contiguous finished prefix* of a partial file: the
downloader tells it (:meth:`HashCursor.advance`) how many leading bytes are on disk, and a task
(:meth:`HashCursor.run`) hashes them in a worker thread while later chunks are still in flight.
When the last byte lands, only the bytes after the cursor remain to hash, so verification ends
soon after the download does.

Choices:

* The finished bytes are read back from the page cache through read-only maps of each step
  (:func:`~asynchub._engine.mapped.hash_mapped`) where a failed read is not expected (a fresh
  download on a local file system, see :mod:`.mapped`), and otherwise with ``os.preadv``
  into one reusable :data:`READ_BLOCK` (1 MiB) buffer per file. ``hashlib``, ``preadv`` and
  the map's page faults all run without the GIL, so hashing runs in parallel with the event
  loop; through maps the thread takes the GIL back once per 8 MiB window instead of twice
  per block, and no byte is copied.
* One worker-thread call hashes :data:`STEP` (32 MiB, ~30 ms of SHA-256) at a time, taking
  the lock for each: a reset waits at most one of them. The call goes on towards wherever
  the prefix has got to while it hashed, for up to :data:`STEP_SECONDS` (0.1 s, what a
  cancellation may wait), instead of returning to the event loop for the next step: each
  return and new call left the thread idle for 0.4-1 ms (up to 8 ms) while there was more
  to hash, 25-40 ms in all of a 512 MiB or 1 GiB download whose hash is the last thing to
  finish. 1 GiB from an uncapped loopback mirror took a median 0.905 s in-process against
  0.966 s (six runs each, interleaved); 512 MiB on 40 connections capped at 25 MB/s, 0.646
  against 0.660 s (eight each).
* Until the whole file is in (:meth:`hexdigest` asks for the end), a thread call waits for
  :data:`MIN_STEP` (8 MiB, ~8 ms of SHA-256) of new prefix: a step costs a hand-off to a
  worker thread and back (~70 µs of CPU and two context switches), and in a prefetch of
  small files the prefix grows a piece (1-2 MiB) at a time. The hash never falls further
  behind than that, and the last step starts as soon as the last byte is in. The 60-model
  prefetch made 124 steps instead of 514 and used 1.98 against 2.08 CPU-s (medians of
  ten, interleaved), in the same wall time.
* A :meth:`reset` (the file changed on the server, or a mirror served other bytes) starts a new
  digest; a step already running in the thread is discarded when it returns.
* The cursor's wake-ups are ``asyncio.Event`` s (the engine runs on asyncio): one is made
  per batch of writes, and ``anyio.Event()`` looks up the running async library each time.
* The cursor measures its own speed (:attr:`HashCursor.rate`: bytes per CPU-second of the
  thread, over its read-back steps once :data:`RATE_BYTES` are hashed): the adaptive width
  does not widen past it (see :mod:`.adaptive`). CPU time, not wall time, so a core shared
  with the download does not make SHA-256 look slower than it is.
* SHA-256 state cannot be saved, so a resumed download re-hashes its finished prefix once, at
  disk speed, while the missing bytes are fetched.
* Bytes that are next in order are hashed from memory by the thread that writes them
  (:meth:`HashCursor.absorb`, see :mod:`.batch`): the file is read back only for what arrived
  out of order. The digest and its position (``_at``) change only under one lock; the writer
  only *tries* it (a step reading from disk holds it for up to :data:`STEP` bytes, and the
  writer never waits for that: its bytes are then read back later). :attr:`HashCursor.hashed`
  is the position as the event loop knows it (:meth:`publish`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

from .mapped import hash_mapped

__all__ = [
    "MIN_STEP",
    "RATE_BYTES",
    "READ_BLOCK",
    "STEP",
    "STEP_SECONDS",
    "HashCursor",
    "hash_range",
]

READ_BLOCK = 1024 * 1024
STEP = 32 * 1024 * 1024
MIN_STEP = 8 * 1024 * 1024
STEP_SECONDS = 0.1
RATE_BYTES = 8 * 1024 * 1024


def hash_range(fd: int, digest: Any, start: int, end: int, buffer: bytearray) -> int:
    """Feed bytes ``[start, end)`` of ``fd`` to ``digest``, read through ``buffer``; returns
    how many were hashed (less than asked only if the file is shorter). Blocking: run it in a
    worker thread."""
    view = memoryview(buffer)
    offset = start
    while offset < end:
        want = min(len(buffer), end - offset)
        got = os.preadv(fd, [view[:want]], offset)
        if got <= 0:
            break
        digest.update(view[:got])
        offset += got
    return offset - start


class HashCursor:
    """SHA-256 of the finished prefix of the file open as ``fd`` (see the module docstring).

    ``mapped``: the bytes to read back may be read through a memory map (the caller checked
    :func:`~asynchub._engine.mapped.mappable` and that every byte is written by this
    process).

    ``on_progress(n)`` is called on the event loop thread each time ``n`` more bytes were
    hashed.
    """

    def __init__(
        self,
        fd: int,
        *,
        on_progress: Callable[[int], None] | None = None,
        threads: anyio.CapacityLimiter | None = None,
        mapped: bool = False,
    ) -> None:
        self._fd = fd
        self.mapped = mapped  # read back through maps (see :mod:`.mapped`)
        self._threads = threads  # None: anyio's default worker threads
        self._on_progress = on_progress
        self._digest = hashlib.sha256()
        self._generation = 0
        self._buffer = bytearray(0)
        self._lock = threading.Lock()
        self._at = 0  # bytes in ``_digest`` (changed under ``_lock`` only)
        self.hashed = 0
        self.rate = 0.0  # bytes per CPU-second of the read-back steps; 0 until measured
        self._timed = (0, 0.0)  # bytes and CPU-seconds of those steps
        self._target = 0
        self._complete = False  # every byte is in: hash the rest now (see MIN_STEP)
        self._wake = asyncio.Event()
        self._moved = asyncio.Event()

    @property
    def generation(self) -> int:
        """How many times the cursor was :meth:`reset`: bytes hashed under an earlier
        generation are no longer the file's."""
        return self._generation

    def advance(self, prefix: int) -> None:
        """The first ``prefix`` bytes of the file are written and final."""
        if prefix > self._target:
            self._target = prefix
            self._wake.set()

    def reset(self) -> None:
        """Forget everything hashed so far (the file is being rewritten from scratch)."""
        with self._lock:  # a writer or a step in a thread holds it only briefly
            self._generation += 1
            self._digest = hashlib.sha256()
            self._at = 0
        self.hashed = 0
        self._target = 0
        self._complete = False
        self._wake.set()
        self._moved.set()
        self._moved = asyncio.Event()

    async def run(self) -> None:
        """Hash the prefix as it grows; runs until cancelled."""
        while True:
            left = self._target - self.hashed
            if left <= 0 or (left < MIN_STEP and not self._complete):
                self._wake = asyncio.Event()
                await self._wake.wait()
                continue
            generation = self._generation
            at = await anyio.to_thread.run_sync(
                self._step, generation, self._target, limiter=self._threads
            )
            self.publish(generation, at)

    def _step(self, generation: int, target: int) -> int:
        """Hash from the file towards ``target`` (worker thread), :data:`STEP` bytes at a
        time, and on towards wherever the prefix has got to meanwhile for up to
        :data:`STEP_SECONDS` (see the module docstring); the new position."""
        began = time.monotonic()
        at = self._sub_step(generation, target)
        while (
            at < self._target  # the prefix moved on while this thread hashed
            and generation == self._generation
            and time.monotonic() - began < STEP_SECONDS
        ):
            at = self._sub_step(generation, self._target)
        return at

    def _sub_step(self, generation: int, target: int) -> int:
        """Hash up to :data:`STEP` bytes towards ``target``; the new position."""
        with self._lock:
            if generation != self._generation:
                return 0
            start = self._at
            end = min(target, start + STEP)
            if end <= start:
                return start
            began = time.thread_time()
            done = hash_mapped(self._fd, self._digest, start, end) if self.mapped else 0
            if not done:  # not mapped, or the file is shorter: read what there is
                if not self._buffer:
                    self._buffer = bytearray(READ_BLOCK)
                done = hash_range(self._fd, self._digest, start, end, self._buffer)
            self._time(done, time.thread_time() - began)
            self._at = start + done
            if done < end - start:
                raise OSError(f"the partial file ended at byte {start + done}, expected {end}")
            return self._at

    def _time(self, nbytes: int, seconds: float) -> None:
        total, spent = self._timed[0] + nbytes, self._timed[1] + seconds
        self._timed = (total, spent)
        if total >= RATE_BYTES and spent > 0:
            self.rate = total / spent

    def absorb(self, generation: int, offset: int, views: list[memoryview], nbytes: int) -> int:
        """Hash ``nbytes`` of ``views`` (the bytes at ``offset``, just written) from memory if
        they are next in order and nothing else hashes now (called in the writer thread);
        the position afterwards, or -1 if they were not taken."""
        if not self._lock.acquire(blocking=False):
            return -1
        try:
            if generation != self._generation or self._at != offset or nbytes <= 0:
                return -1
            left = nbytes
            for view in views:
                if left <= 0:
                    break
                self._digest.update(view[:left] if len(view) > left else view)
                left -= len(view)
            self._at = offset + nbytes
            return self._at
        finally:
            self._lock.release()

    def publish(self, generation: int, at: int) -> None:
        """On the loop: the digest reached ``at`` under ``generation``."""
        if generation != self._generation or at <= self.hashed:
            return
        done, self.hashed = at - self.hashed, at
        if self._on_progress is not None:
            self._on_progress(done)
        self._moved.set()
        self._moved = asyncio.Event()

    async def moved(self) -> None:
        """Wait until more bytes are hashed (or the cursor is reset)."""
        await self._moved.wait()

    async def hexdigest(self, size: int) -> str:
        """Wait until ``size`` bytes are hashed (:meth:`run` must be running) and return the
        hex digest."""
        self._complete = True
        self._wake.set()
        self.advance(size)
        while self.hashed < size:
            await self._moved.wait()
        return self._digest.hexdigest()
