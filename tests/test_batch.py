"""BatchWriter: the pieces queued while a write is under way go to the thread together, bytes
next in order are hashed from memory (no cursor task running), out-of-order ones are read back
by the cursor, a cancelled writer still has its bytes written, write errors reach their
writer."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from asynchub._engine.batch import BatchWriter, WriteQueue
from asynchub._engine.context import file_threads
from asynchub._engine.hashing import HashCursor
from asynchub._exceptions import HubError

pytestmark = pytest.mark.timeout(30)

KIB = 1024
SIZE = 4096 * KIB
PIECE = 128 * KIB


def _open(path: Path, size: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    return fd


async def _write_interleaved(
    tmp_path: Path, queue: WriteQueue, files: int, seed: int
) -> tuple[list[bytes], list[str], list[BatchWriter], list[HashCursor]]:
    """``files`` files written through ``queue``, their pieces queued interleaved all at once
    (no cursor task: only hashing from memory moves the cursors); their bytes, digests,
    writers and cursors."""
    data = [random.Random(seed + i).randbytes(SIZE) for i in range(files)]
    fds = [_open(tmp_path / f"file{i}", SIZE) for i in range(files)]
    cursors = [HashCursor(fd) for fd in fds]
    writers = [BatchWriter(fd, c, queue=queue) for fd, c in zip(fds, cursors, strict=True)]
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for start in range(0, SIZE, PIECE):
                    for blob, writer in zip(data, writers, strict=True):
                        piece = [memoryview(blob)[start : start + PIECE]]
                        group.start_soon(writer.write, start, piece, lambda: SIZE)
            digests = [await cursor.hexdigest(SIZE) for cursor in cursors]
    finally:
        for fd in fds:
            os.close(fd)
    return data, digests, writers, cursors


async def test_in_order_pieces_are_batched_and_hashed_from_memory(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(SIZE)
    fd = _open(tmp_path / "file", SIZE)
    cursor = HashCursor(fd)  # its run() is never started: only memory hashing moves it
    writer = BatchWriter(fd, cursor)
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for start in range(0, SIZE, PIECE):  # all queued before the first batch ends
                    piece = [memoryview(data)[start : start + PIECE]]
                    group.start_soon(writer.write, start, piece, lambda: SIZE)
            digest = await cursor.hexdigest(SIZE)
    finally:
        os.close(fd)
    assert (tmp_path / "file").read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert cursor.hashed == SIZE
    assert writer.writes == SIZE // PIECE
    assert writer.batches < writer.writes


async def test_out_of_order_bytes_are_read_back_by_the_cursor(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(SIZE)
    fd = _open(tmp_path / "file", SIZE)
    cursor = HashCursor(fd)
    writer = BatchWriter(fd, cursor)
    starts = list(range(0, SIZE, PIECE))
    order = starts[2:] + starts[:2]  # the head arrives last
    try:
        with anyio.fail_after(10):
            for start in order:
                await writer.write(start, [data[start : start + PIECE]], lambda: SIZE)
            assert cursor.hashed == 2 * PIECE  # only the head was next in order
            async with anyio.create_task_group() as group:
                group.start_soon(cursor.run)
                digest = await cursor.hexdigest(SIZE)
                group.cancel_scope.cancel()
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(data).hexdigest()


async def test_the_hash_stops_at_the_limit_and_a_reset_forgets(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(2 * PIECE)
    fd = _open(tmp_path / "file", len(data))
    cursor = HashCursor(fd)
    writer = BatchWriter(fd, cursor)
    try:
        with anyio.fail_after(10):
            await writer.write(0, [data], lambda: PIECE)  # the range ends half-way
            assert cursor.hashed == PIECE
            cursor.reset()
            assert cursor.hashed == 0
            await writer.write(0, [data], lambda: len(data))
            digest = await cursor.hexdigest(len(data))
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(data).hexdigest()


async def test_a_cancelled_writer_still_writes_its_bytes(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(SIZE)
    fd = _open(tmp_path / "file", SIZE)
    writer = BatchWriter(fd, HashCursor(fd))
    try:
        with anyio.fail_after(10):
            with anyio.CancelScope() as scope:
                scope.cancel()  # cancelled before it even starts: the write is shielded
                await writer.write(0, [data], lambda: SIZE)
                written = (tmp_path / "file").read_bytes()
                await anyio.lowlevel.checkpoint()  # the cancellation lands after the write
            assert scope.cancelled_caught
    finally:
        os.close(fd)
    assert written == data


async def test_a_write_error_reaches_its_writer(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # writes fail with EBADF
    cursor = HashCursor(fd)
    writer = BatchWriter(fd, cursor)
    try:
        with anyio.fail_after(10), pytest.raises(HubError):
            await writer.write(0, [b"x" * 100], lambda: 100)
    finally:
        os.close(fd)
    assert cursor.hashed == 0


async def test_a_leader_returns_after_its_own_batch_under_a_steady_stream(tmp_path: Path) -> None:
    """Other connections keep queueing pieces while each batch runs: the writer that led a
    batch still returns once its own bytes are written (the lead passes on), instead of
    draining the others' pieces until the stream stops while its own range stays uncounted."""
    data = random.Random(6).randbytes(SIZE)
    fd = _open(tmp_path / "file", SIZE)
    writer = BatchWriter(fd, HashCursor(fd))
    starts = list(range(PIECE, SIZE, PIECE))
    batches_when_back: list[int] = []
    stop = anyio.Event()

    async def leader() -> None:
        await writer.write(0, [memoryview(data)[:PIECE]], lambda: SIZE)
        batches_when_back.append(writer.batches)
        stop.set()

    async def stream() -> None:  # one piece queued while each batch runs, until the leader is back
        async with anyio.create_task_group() as group:
            while starts and not stop.is_set():
                start = starts.pop(0)
                group.start_soon(writer.write, start, [memoryview(data)[start : start + PIECE]],
                                 lambda: SIZE)  # fmt: skip
                seen = writer.batches
                while writer.batches == seen and not stop.is_set():
                    await anyio.lowlevel.checkpoint()  # bounded by the batches (and fail_after)

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(leader)
                await anyio.lowlevel.checkpoint()  # the leader's batch is in the thread
                group.start_soon(stream)
    finally:
        os.close(fd)
    assert batches_when_back == [1]
    assert starts, "the stream had to be still going when the leader came back"


async def test_writes_run_on_the_threads_they_are_given(tmp_path: Path) -> None:
    """The engine's file threads are a limiter of their own: with its one token taken, a write
    waits; once the token is free, the bytes are written."""
    data = random.Random(7).randbytes(PIECE)
    fd = _open(tmp_path / "file", SIZE)
    threads = anyio.CapacityLimiter(1)
    writer = BatchWriter(fd, HashCursor(fd, threads=threads), threads=threads)
    done = anyio.Event()

    async def write() -> None:
        await writer.write(0, [memoryview(data)], lambda: SIZE)
        done.set()

    try:
        with anyio.fail_after(10):
            await threads.acquire()
            async with anyio.create_task_group() as group:
                group.start_soon(write)
                await anyio.wait_all_tasks_blocked()
                assert not done.is_set() and writer.batches == 0
                threads.release()
    finally:
        os.close(fd)
    assert done.is_set() and writer.batches == 1
    assert (tmp_path / "file").read_bytes()[:PIECE] == data


async def test_file_threads_follow_the_cpus() -> None:
    assert file_threads().total_tokens == max(4, os.cpu_count() or 1)


async def test_files_sharing_a_queue_share_its_batches(tmp_path: Path) -> None:
    """Pieces of several files queued at once go to the thread together: fewer thread calls
    than pieces, each file written and hashed from memory as if alone."""
    files = 4
    queue = WriteQueue()
    data, digests, writers, _ = await _write_interleaved(tmp_path, queue, files, seed=10)
    for i, blob in enumerate(data):
        assert (tmp_path / f"file{i}").read_bytes() == blob
        assert digests[i] == hashlib.sha256(blob).hexdigest()
    assert queue.writes == files * (SIZE // PIECE)
    assert queue.batches < SIZE // PIECE  # fewer calls than one file's pieces alone
    assert sum(w.batches for w in writers) > queue.batches  # calls that wrote several files


async def test_a_second_file_is_written_while_the_first_is_in_the_thread(tmp_path: Path) -> None:
    """Two lanes: a batch of another file runs beside the one in the thread (a prefetch's
    connections do not all wait for one thread that hashes at SHA-256's speed), and each file
    still ends whole, hashed from memory."""
    queue = WriteQueue()
    data, digests, _, cursors = await _write_interleaved(tmp_path, queue, 2, seed=20)
    assert queue.most_at_once == 2
    for i, blob in enumerate(data):
        assert (tmp_path / f"file{i}").read_bytes() == blob
        assert digests[i] == hashlib.sha256(blob).hexdigest()
        assert cursors[i].hashed == SIZE


async def test_one_file_is_never_in_two_batches_at_once(tmp_path: Path) -> None:
    """A file's pieces go through one batch at a time, whatever lanes are free: its bytes are
    written and hashed in order by one thread."""
    data = random.Random(30).randbytes(SIZE)
    fd = _open(tmp_path / "file", SIZE)
    cursor = HashCursor(fd)
    queue = WriteQueue(lanes=4)
    writer = BatchWriter(fd, cursor, queue=queue)
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for start in range(0, SIZE, PIECE):
                    piece = [memoryview(data)[start : start + PIECE]]
                    group.start_soon(writer.write, start, piece, lambda: SIZE)
                    await anyio.lowlevel.checkpoint()  # each piece queued while others run
            digest = await cursor.hexdigest(SIZE)
    finally:
        os.close(fd)
    assert queue.most_at_once == 1
    assert queue.batches > 1
    assert digest == hashlib.sha256(data).hexdigest() and cursor.hashed == SIZE


def test_a_read_back_step_goes_on_to_where_the_prefix_has_got(tmp_path: Path) -> None:
    """A thread call of the cursor hashes towards the target it was given, then on to the
    prefix as it is by then (no return to the event loop in between): given 1 MiB, with the
    prefix at 4 MiB meanwhile, it returns at 4 MiB with the right digest so far."""
    data = random.Random(5).randbytes(SIZE)
    path = tmp_path / "file"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        cursor = HashCursor(fd)
        cursor.advance(SIZE)  # the prefix, as the event loop knows it now
        at = cursor._step(cursor.generation, 1024 * KIB)  # the call made for the first MiB
        assert at == SIZE
        cursor.publish(cursor.generation, at)
        assert cursor.hashed == SIZE
        assert cursor._digest.hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)
