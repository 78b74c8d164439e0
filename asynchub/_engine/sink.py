"""Where received buffers go: ``pwritev`` in batches in a writer thread, and the SHA-256 of
the bytes that are next in order straight from memory in a hasher thread.

:class:`FileSink` takes ``(offset, buffer)`` pairs from the event loop without waiting
(:meth:`FileSink.submit`). The writer thread takes whatever has queued up as one batch and
writes it (one ``os.pwritev`` per run of adjacent buffers: the page-cache copy, the only one);
the buffers whose first byte is the next one to hash go to the hasher thread, which hashes
them from memory (``hashlib`` releases the GIL for large updates); bytes that arrived out of
order are only written, and read back from the file when the hash reaches them (so only they
are read twice, usually from the page cache). Each thread reports back with one
``call_soon_threadsafe`` per batch, which hands the buffers back to their connections and
tells the caller what was written and hashed: the thread-crossing cost is paid per batch, not
per MiB. A failed write is kept and raised by :meth:`FileSink.check` and
:meth:`FileSink.drain`.

Status: measured on its own (``benchmarks/receive_path.py``, mode ``write``) and
unit-tested. The ranged engine uses :class:`~asynchub._engine.batch.BatchWriter` instead,
which gives the same batching and in-order hashing from memory with the engine's own threads
and its :class:`~asynchub._engine.hashing.HashCursor` (so the resume, restart and watchdog
rules stay where they are) rather than two threads per file.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Buffer", "FileSink"]

READBACK = 1024 * 1024


class Buffer(Protocol):
    """A filled receive buffer: its bytes and a way to hand it back."""

    @property
    def view(self) -> memoryview: ...

    def release(self) -> None: ...


Done = Callable[[list[tuple[int, int]], int], None]


def _writev(fd: int, views: list[memoryview], offset: int) -> None:
    total = sum(map(len, views))
    done = os.pwritev(fd, views, offset)
    if done < total:
        rest = memoryview(b"".join(views))[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done)
            done += n
            rest = rest[n:]


class _Worker:
    """A thread that runs ``job(batch)`` for every batch of queued items."""

    def __init__(self, name: str, job: Callable[[list[Any]], None]) -> None:
        self._job = job
        self._queue: list[Any] = []
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, items: list[Any]) -> None:
        with self._cond:
            was_empty = not self._queue
            self._queue.extend(items)
            if was_empty:
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                batch, self._queue = self._queue, []
            if not batch:
                return
            self._job(batch)


class FileSink:
    """Writes and hashes one file's bytes in two worker threads (see the module docstring).

    ``prefix`` bytes at the start of the file are already written; ``digest`` (a hashlib
    SHA-256 object) covers them. ``on_done(spans, hashed)`` runs on the loop after each batch:
    the ``(offset, nbytes)`` spans written, and how many bytes are hashed from the start.
    """

    def __init__(
        self,
        fd: int,
        *,
        on_done: Done,
        prefix: int = 0,
        digest: Any = None,
    ) -> None:
        self.fd = fd
        self._on_done = on_done
        self._digest = digest if digest is not None else hashlib.sha256()
        self.hashed = prefix  # hasher thread: bytes hashed from the start
        self._handed = prefix  # writer thread: bytes handed to the hasher from the start
        self._loop = asyncio.get_running_loop()
        self._pending_starts: list[int] = []  # written out of order (sorted, disjoint)
        self._pending_ends: list[int] = []
        self.error: BaseException | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._hash_moved = asyncio.Event()
        self._writer = _Worker("asynchub-write", self._write_batch)
        self._hasher = _Worker("asynchub-hash", self._hash_batch)

    # ---------------------------------------------------------------- loop side
    def submit(self, offset: int, buffer: Buffer) -> None:
        """Queue ``buffer`` for ``offset`` (returns at once; the buffer is released later)."""
        self._in_flight += 1
        self._idle.clear()
        self._writer.put([(offset, buffer)])

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    async def drain(self) -> None:
        """Wait until every submitted buffer is written (and raise a write error)."""
        await self._idle.wait()
        self.check()

    async def hashed_to(self, size: int) -> str:
        """Wait until ``size`` bytes are hashed from the start; their SHA-256 in hex."""
        while self.hashed < size:
            self.check()
            self._hash_moved.clear()
            self._hasher.put([("ping", 0, None)])  # answered once what is queued is hashed
            await self._hash_moved.wait()
        self.check()
        return self.hexdigest()

    def hexdigest(self) -> str:
        return str(self._digest.hexdigest())

    def close(self) -> None:
        """Stop both threads after their queues are done (does not wait)."""
        self._writer.close()
        self._hasher.close()

    # ---------------------------------------------------------------- writer thread
    def _write_batch(self, batch: list[tuple[int, Buffer]]) -> None:
        spans: list[tuple[int, int]] = []
        to_hash: list[tuple[str, int, Any]] = []
        release: list[Buffer] = []
        failed: BaseException | None = None
        try:
            if self.error is not None:
                raise self.error
            batch.sort(key=lambda item: item[0])
            i = 0
            while i < len(batch):  # one pwritev per run of adjacent buffers
                offset = batch[i][0]
                views = [batch[i][1].view]
                end = offset + len(views[0])
                j = i + 1
                while j < len(batch) and batch[j][0] == end and len(views) < 64:
                    views.append(batch[j][1].view)
                    end += len(batch[j][1].view)
                    j += 1
                _writev(self.fd, views, offset)
                spans.append((offset, end - offset))
                i = j
            for offset, buffer in batch:
                end = offset + len(buffer.view)
                if offset <= self._handed < end:
                    to_hash.append(("memory", offset, buffer))  # released by the hasher
                    self._handed = end
                    to_hash.extend(self._disk_ranges())
                else:
                    release.append(buffer)
                    if end > self._handed:
                        self._note(offset, end)
        except BaseException as exc:  # reported on the loop, raised by check()
            failed = exc
            release = [buffer for _offset, buffer in batch]
            to_hash = []
        if to_hash:
            self._hasher.put(to_hash)
        self._report(release, spans, failed, len(batch))

    def _note(self, start: int, end: int) -> None:
        i = bisect.bisect_left(self._pending_starts, start)
        self._pending_starts.insert(i, start)
        self._pending_ends.insert(i, end)

    def _disk_ranges(self) -> list[tuple[str, int, int]]:
        """The written ranges that now follow the handed-over prefix, for the hasher to read."""
        out: list[tuple[str, int, int]] = []
        while self._pending_starts and self._pending_starts[0] <= self._handed:
            self._pending_starts.pop(0)
            end = self._pending_ends.pop(0)
            if end > self._handed:
                out.append(("disk", self._handed, end))
                self._handed = end
        return out

    # ---------------------------------------------------------------- hasher thread
    def _hash_batch(self, batch: list[tuple[str, int, Any]]) -> None:
        release: list[Buffer] = []
        failed: BaseException | None = None
        readback: bytearray | None = None
        for kind, start, what in batch:
            if kind == "memory":
                release.append(what)
            if failed is not None or kind == "ping":
                continue
            try:
                if kind == "disk":  # bytes start..what, written out of order
                    if readback is None:
                        readback = bytearray(READBACK)
                    self._read_back(start, what, readback)
                else:
                    view = what.view
                    skip = self.hashed - start
                    self._digest.update(view[skip:] if skip else view)
                    self.hashed = start + len(view)
            except BaseException as exc:
                failed = exc
        self._report(release, [], failed, 0, hashed=True)

    def _read_back(self, start: int, end: int, buffer: bytearray) -> None:
        pos = max(start, self.hashed)
        while pos < end:
            view = memoryview(buffer)[: min(READBACK, end - pos)]
            got = os.preadv(self.fd, [view], pos)
            if got <= 0:
                raise OSError(f"short read of written bytes at {pos}")
            self._digest.update(view[:got])
            pos += got
        self.hashed = end

    # ---------------------------------------------------------------- back on the loop
    def _report(
        self,
        release: list[Buffer],
        spans: list[tuple[int, int]],
        failed: BaseException | None,
        written: int,
        *,
        hashed: bool = False,
    ) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(
                self._finish, release, spans, self.hashed, failed, written, hashed
            )

    def _finish(
        self,
        release: list[Buffer],
        spans: list[tuple[int, int]],
        hashed: int,
        failed: BaseException | None,
        written: int,
        from_hasher: bool,
    ) -> None:
        for buffer in release:
            buffer.release()
        if failed is not None and self.error is None:
            self.error = failed
        self._in_flight -= written
        if self._in_flight == 0:
            self._idle.set()
        if from_hasher:
            self._hash_moved.set()
        if spans or from_hasher:
            self._on_done(spans, hashed)
