"""FileSink: batched writes from lent buffers, SHA-256 from memory for in-order bytes and
read back from the file for out-of-order ones, every buffer handed back, write errors kept."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from asynchub._engine.sink import FileSink

pytestmark = pytest.mark.timeout(30)

KIB = 1024


class Loan:
    def __init__(self, data: bytes, released: list[int]) -> None:
        self.view = memoryview(bytearray(data))
        self._released = released

    def release(self) -> None:
        self._released.append(len(self.view))


async def test_out_of_order_pieces_are_written_hashed_and_released(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(2048 * KIB)
    pieces = [(start, data[start : start + 64 * KIB]) for start in range(0, len(data), 64 * KIB)]
    order = pieces[:4] + list(reversed(pieces[4:20])) + pieces[20:]  # a gap, then filled
    path = tmp_path / "file"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, len(data))
    released: list[int] = []
    reports: list[tuple[list[tuple[int, int]], int]] = []
    sink = FileSink(fd, on_done=lambda spans, hashed: reports.append((spans, hashed)))
    try:
        with anyio.fail_after(10):
            for offset, chunk in order:
                sink.submit(offset, Loan(chunk, released))
                await anyio.lowlevel.checkpoint()
            await sink.drain()
            digest = await sink.hashed_to(len(data))
            for _ in range(1000):  # buffers held by the hasher come back after it is done
                if sum(released) == len(data):
                    break
                await anyio.sleep(0.005)
    finally:
        sink.close()
        os.close(fd)
    assert digest == hashlib.sha256(data).hexdigest()
    assert path.read_bytes() == data
    assert sum(released) == len(data) and len(released) == len(pieces)
    written = sorted(span for spans, _ in reports for span in spans)
    assert sum(n for _, n in written) == len(data)
    assert max(hashed for _, hashed in reports) == len(data)


async def test_a_write_error_is_kept_and_raised(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # writes fail with EBADF
    released: list[int] = []
    sink = FileSink(fd, on_done=lambda spans, hashed: None)
    try:
        sink.submit(0, Loan(b"x" * 100, released))
        with anyio.fail_after(10), pytest.raises(OSError):
            await sink.drain()
    finally:
        sink.close()
        os.close(fd)
    assert released == [100]  # the buffer still came back
