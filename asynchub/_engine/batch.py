"""The writes of the files of an engine in batches: whatever the connections queue while a
write is under way goes to the worker thread as one call (the pieces of every file being
downloaded, grouped by file), and the bytes that are next in order are hashed there from memory
(:meth:`~asynchub._engine.hashing.HashCursor.absorb`).

Choices:

* **One queue for every file of an engine** (:class:`WriteQueue`, one per event loop), each
  file writing through its :class:`BatchWriter`. With a queue per file, a prefetch of 60
  files (each on one or two connections) made one thread call per 1 MiB piece: 29,000
  ``futex`` calls and 17,000 context switches for 1 GiB, against 3,400 and 3,000 for one
  1 GiB file on 40 connections, whose pieces share batches. A batch holds at most
  :data:`MAX_BATCH` pieces, so one thread call never holds many files' bytes back.
* No thread of its own: the first connection that has bytes to write while a lane is free
  (and its file in no batch) becomes the *leader* and runs one batch (everything queued for
  files in no other batch, its own piece included) through ``anyio.to_thread``; the others
  wait for their bytes to be written. If more was queued meanwhile, the leader hands the
  lead to the oldest waiting piece's connection and returns: a leader that drained until the
  queue ran dry would, under a steady stream of pieces, never get back to its own
  connection, whose written bytes would then go uncounted (the hash cursor waits at that
  hole). One thread hop and one wake-up of the loop per batch instead of per piece, and no
  thread to start or stop per file.
* **Two lanes** (:data:`LANES`): a second batch may run while one is in the thread, on files
  the first does not hold, so one file's pieces are still written (and hashed) in order by one
  batch at a time. Hashing from memory makes a batch as slow as SHA-256 (about 1 GB/s), so a
  prefetch of many files with one lane left its connections waiting for their buffers: of 40
  connections, 18-28 were paused at any moment, and 60 files (1 GiB, 25 MB/s per connection)
  arrived at 600-650 MiB/s. A download of one file is unchanged: it only ever has one batch.
* The wait is shielded from cancellation: a lent receive buffer is handed back to its
  connection only once the thread is done with it (as with the per-piece writes before).
* A piece is hashed from memory only up to the end its range has while it is hashed; the
  scheduler never splits a range below what its connection has received, so the bytes of a
  piece never belong to another connection's range.
* Spliced pieces (bytes the transport kept in the kernel, see
  :mod:`asynchub._transport.splicing`) are moved into the file by the kernel, and never
  hashed from memory: the cursor reads them back.
* After each batch the disk is asked to start writing its bytes
  (:func:`~asynchub._engine.writeback.start_writeback`), so the ``fsync`` before the rename
  finds little left.
* :class:`~asynchub._engine.resume.ChunkPlan` bookkeeping, progress and resume state stay on
  the loop, after the write (the caller's job): only written bytes are counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import anyio
import anyio.to_thread

from .context import Chunk, write_chunks
from .hashing import HashCursor
from .writeback import start_writeback

__all__ = ["LANES", "MAX_BATCH", "BatchWriter", "WriteQueue"]

#: The most pieces one thread call writes (64 MiB of 1 MiB receive buffers).
MAX_BATCH = 64
#: Batches that may run at once, each on files no other running batch has.
LANES = 2


class _Write:
    __slots__ = (
        "buffers",
        "error",
        "finished",
        "hash_limit",
        "nbytes",
        "offset",
        "wake",
        "writer",
    )

    def __init__(
        self,
        writer: BatchWriter,
        offset: int,
        buffers: Sequence[Chunk],
        hash_limit: Callable[[], int],
    ) -> None:
        self.writer = writer
        self.offset = offset
        self.buffers = buffers
        self.nbytes = sum(map(len, buffers))
        self.hash_limit = hash_limit
        self.error: BaseException | None = None
        self.finished = False  # written (or failed)
        self.wake = asyncio.Event()  # set when finished, or when this writer is to lead


class WriteQueue:
    """The batches of every :class:`BatchWriter` that shares it (module docstring)."""

    def __init__(
        self, *, threads: anyio.CapacityLimiter | None = None, lanes: int = LANES
    ) -> None:
        self._threads = threads  # None: anyio's default worker threads
        self._lanes = lanes
        self._queue: list[_Write] = []
        self._running: set[BatchWriter] = set()  # files in a batch now
        self._leading = 0  # batches running now
        self.batches = 0  # thread calls so far (for tests and benchmarks)
        self.writes = 0
        self.most_at_once = 0  # the most batches that ran at once (for tests and benchmarks)

    def _may_lead(self, item: _Write) -> bool:
        return self._leading < self._lanes and item.writer not in self._running

    async def write(self, item: _Write) -> None:
        """Queue ``item``; returns once it is in its file (or raises its error)."""
        self._queue.append(item)
        with anyio.CancelScope(shield=True):
            while not item.finished:
                if not self._may_lead(item):
                    item.wake.clear()
                    await item.wake.wait()  # written by a leader, or a lane came free
                    continue
                self._leading += 1
                self.most_at_once = max(self.most_at_once, self._leading)
                try:
                    await self._run_batch(item)
                finally:
                    self._leading -= 1
                    self._hand_over()
        if item.error is not None:
            raise item.error

    def _hand_over(self) -> None:
        """Free lanes go to the oldest pieces still queued whose files are in no batch (their
        writers are waiting): each wakes and leads one batch, if the lane is still free."""
        free = self._lanes - self._leading
        woken: set[BatchWriter] = set()
        for item in self._queue:
            if free <= 0:
                break
            if item.writer not in self._running and item.writer not in woken:
                woken.add(item.writer)
                item.wake.set()
                free -= 1

    async def _run_batch(self, lead: _Write) -> None:
        """One thread call: ``lead`` and the oldest pieces queued for files in no other batch,
        at most :data:`MAX_BATCH`."""
        batch = [lead]
        for item in self._queue:
            if len(batch) >= MAX_BATCH:
                break
            if item is not lead and item.writer not in self._running:
                batch.append(item)
        taken = set(map(id, batch))
        self._queue = [item for item in self._queue if id(item) not in taken]
        writers = list(dict.fromkeys(item.writer for item in batch))
        self._running.update(writers)
        generations = [writer.cursor.generation for writer in writers]
        try:
            reached = await anyio.to_thread.run_sync(
                _run, batch, writers, generations, limiter=self._threads
            )
            for writer, generation, at in zip(writers, generations, reached, strict=True):
                writer.cursor.publish(generation, at)
        except BaseException as exc:  # handed to every writer of the batch
            for item in batch:
                if item.error is None:
                    item.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running.difference_update(writers)
            self.batches += 1
            self.writes += len(batch)
            for writer in writers:
                writer.batches += 1
            for item in batch:
                item.writer.writes += 1
                item.finished = True
                item.wake.set()


def _run(batch: list[_Write], writers: list[BatchWriter], generations: list[int]) -> list[int]:
    """Worker thread: each file's pieces (lowest offset first) written, what is next in order
    hashed; per writer, the position its hash reached (-1: nothing hashed here)."""
    reached = []
    for writer, generation in zip(writers, generations, strict=True):
        fd, cursor = writer.fd, writer.cursor
        at, low, high = -1, -1, -1
        for item in sorted((i for i in batch if i.writer is writer), key=lambda w: w.offset):
            try:
                write_chunks(fd, item.buffers, item.offset)
            except Exception as exc:  # raised to this piece's writer only
                item.error = exc
                continue
            low = item.offset if low < 0 else low
            high = max(high, item.offset + item.nbytes)
            try:
                nbytes = min(item.nbytes, item.hash_limit() - item.offset)
            except LookupError:  # the plan was reset meanwhile: nothing to hash
                continue
            views = _in_memory(item.buffers)
            if views is not None:  # spliced bytes are read back by the cursor
                at = max(at, cursor.absorb(generation, item.offset, views, nbytes))
        if low >= 0:
            start_writeback(fd, low, high - low)
        reached.append(at)
    return reached


def _in_memory(chunks: Sequence[Chunk]) -> list[memoryview] | None:
    """Views of ``chunks`` if they are all in memory, else None."""
    views = []
    for chunk in chunks:
        if not isinstance(chunk, (bytes, memoryview)):
            return None
        views.append(memoryview(chunk))
    return views


class BatchWriter:
    """Writes into ``fd`` through ``queue`` (a queue of its own if none is given) and feeds
    ``cursor`` from memory (module docstring)."""

    def __init__(
        self,
        fd: int,
        cursor: HashCursor,
        *,
        threads: anyio.CapacityLimiter | None = None,
        queue: WriteQueue | None = None,
    ) -> None:
        self.fd = fd
        self.cursor = cursor
        self.queue = queue if queue is not None else WriteQueue(threads=threads)
        self.batches = 0  # thread calls that wrote pieces of this file (tests, benchmarks)
        self.writes = 0

    async def write(
        self, offset: int, buffers: Sequence[Chunk], hash_limit: Callable[[], int]
    ) -> None:
        """Write ``buffers`` contiguously at ``offset``; returns once they are in the file.
        ``hash_limit()`` (called in the thread) says how many of their bytes may be hashed."""
        await self.queue.write(_Write(self, offset, buffers, hash_limit))
