"""Pieces of the engine on their own: the hash cursor, the token bucket, Content-Range parsing,
retry classification."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import anyio
import pytest

from asynchub._engine.hashing import MIN_STEP, STEP, HashCursor, hash_range
from asynchub._engine.mapped import hash_mapped, mappable
from asynchub._engine.ranged import parse_content_range
from asynchub._engine.ratelimit import TokenBucket
from asynchub._engine.retry import WrongMirror, retryable
from asynchub._exceptions import (
    HTTPStatusError,
    ProtocolError,
    RedirectError,
    StallError,
    TransferError,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("mapped", [False, True], ids=["preadv", "mapped"])
async def test_hash_cursor_follows_the_prefix(tmp_path: Path, mapped: bool) -> None:
    data = os.urandom(STEP + 3 * 1024 * 1024 + 17)
    path = tmp_path / "f"
    path.write_bytes(bytes(len(data)))
    progress: list[int] = []
    fd = os.open(path, os.O_RDWR)
    try:
        cursor = HashCursor(fd, on_progress=progress.append, mapped=mapped)
        async with anyio.create_task_group() as group:
            group.start_soon(cursor.run)
            cut = len(data) // 3 + 1  # not on a page boundary: a map starts before it
            os.pwrite(fd, data[:cut], 0)
            cursor.advance(cut)
            assert await cursor.hexdigest(cut) == hashlib.sha256(data[:cut]).hexdigest()
            await anyio.wait_all_tasks_blocked()
            assert cursor.hashed == cut  # never beyond what was declared written
            assert cursor.rate > 1_000_000  # 12 MiB read back: its speed is measured
            os.pwrite(fd, data[cut:], cut)
            digest = await cursor.hexdigest(len(data))
            group.cancel_scope.cancel()
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(data).hexdigest()
    assert sum(progress) == len(data) and max(progress) <= STEP


async def test_hash_cursor_waits_for_a_minimum_step_until_the_file_is_complete(
    tmp_path: Path,
) -> None:
    data = os.urandom(MIN_STEP + 3 * 1024 * 1024)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        threads = anyio.CapacityLimiter(1)  # a step under way holds its token
        cursor = HashCursor(fd, mapped=True, threads=threads)
        async with anyio.create_task_group() as group:
            group.start_soon(cursor.run)
            cursor.advance(2 * 1024 * 1024)
            await anyio.wait_all_tasks_blocked()
            assert (cursor.hashed, threads.borrowed_tokens) == (0, 0)  # not worth a thread call
            cursor.advance(MIN_STEP + 1024 * 1024)
            with anyio.fail_after(10):
                await cursor.moved()
            assert cursor.hashed == MIN_STEP + 1024 * 1024
            cursor.advance(len(data) - 1024)  # less than a step left: waits again
            await anyio.wait_all_tasks_blocked()
            assert (cursor.hashed, threads.borrowed_tokens) == (MIN_STEP + 1024 * 1024, 0)
            digest = await cursor.hexdigest(len(data))  # the end: hashed at once
            group.cancel_scope.cancel()
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(data).hexdigest()


async def test_hash_cursor_reset_discards_old_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old!" * 1000)
    fd = os.open(path, os.O_RDWR)
    try:
        cursor = HashCursor(fd)
        async with anyio.create_task_group() as group:
            group.start_soon(cursor.run)
            cursor.advance(4000)
            await cursor.hexdigest(4000)
            assert cursor.rate == 0.0  # too few bytes to tell a speed
            cursor.reset()
            os.pwrite(fd, b"new!" * 1000, 0)
            digest = await cursor.hexdigest(4000)
            group.cancel_scope.cancel()
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(b"new!" * 1000).hexdigest()


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_token_bucket_caps_the_total_on_a_fake_clock() -> None:
    fake = FakeTime()
    bucket = TokenBucket(1000, clock=fake.clock, sleep=fake.sleep, burst=0.25)
    start = fake.now

    async def reader() -> None:
        for _ in range(20):
            await bucket.take(100)

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(reader)
    # 6000 bytes at 1000 B/s: 6 s, less the 0.25 s burst allowance
    assert fake.now - start == pytest.approx(5.75, abs=0.01)
    assert await bucket.take(0) == 0.0


async def test_token_bucket_lets_a_small_burst_through() -> None:
    fake = FakeTime()
    bucket = TokenBucket(1000, clock=fake.clock, sleep=fake.sleep, burst=0.25)
    assert await bucket.take(200) == 0.0
    assert await bucket.take(100) == pytest.approx(0.05)


def test_content_range_parsing() -> None:
    assert parse_content_range("bytes 0-9/100", "u") == (0, 9, 100)
    for bad in (None, "bytes */100", "bytes 9-0/100", "items 0-9/100", "bytes 0-9/*", "bytes x"):
        with pytest.raises(ProtocolError):
            parse_content_range(bad, "u")


def test_retry_classification() -> None:
    assert retryable(TransferError("reset")) and retryable(StallError("slow"))
    assert retryable(ProtocolError("bad range"))
    assert not retryable(HTTPStatusError("404", status=404))
    assert not retryable(WrongMirror("size")) and not retryable(RedirectError("loop"))
    assert not retryable(ValueError("x"))


@pytest.mark.parametrize("mapped", [False, True], ids=["preadv", "mapped"])
async def test_hash_cursor_past_the_end_of_the_file_is_an_error(
    tmp_path: Path, mapped: bool
) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(100_000))
    fd = os.open(path, os.O_RDWR)
    try:
        cursor = HashCursor(fd, mapped=mapped)
        declared = MIN_STEP + 100_000  # declared written, but the file is shorter
        cursor.advance(declared)
        with pytest.raises(OSError, match=f"ended at byte 100000, expected {declared}"):
            await cursor.run()
    finally:
        os.close(fd)


def test_only_files_on_local_file_systems_are_mapped(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    kinds = {}
    for name, path in (("cache", tmp_path / "f"), ("proc", Path("/proc/self/status"))):
        fd = os.open(path, os.O_RDONLY)
        try:
            kinds[name] = mappable(fd)
        finally:
            os.close(fd)
    read_end, write_end = os.pipe()
    try:
        kinds["pipe"] = mappable(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    if sys.platform.startswith("linux"):  # the test's own files are on a local disk or tmpfs
        assert kinds == {"cache": True, "proc": False, "pipe": False}
    else:
        assert not any(kinds.values())


def test_a_short_file_is_never_mapped_past_its_end(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = hashlib.sha256()
        assert hash_mapped(fd, digest, 4097, len(data)) == len(data) - 4097
        assert digest.hexdigest() == hashlib.sha256(data[4097:]).hexdigest()
        untouched = hashlib.sha256()
        assert hash_mapped(fd, untouched, 0, len(data) + 1) == 0  # nothing mapped, nothing fed
        assert untouched.hexdigest() == hashlib.sha256().hexdigest()
    finally:
        os.close(fd)


def test_hash_range_reads_through_the_buffer_and_stops_at_a_short_file(tmp_path: Path) -> None:
    data = os.urandom(9 * 1024 * 1024 + 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = hashlib.sha256()
        assert hash_range(fd, digest, 4097, len(data), bytearray(1024)) == len(data) - 4097
        assert digest.hexdigest() == hashlib.sha256(data[4097:]).hexdigest()
        short = hashlib.sha256()  # asked past the end: read what there is, say how much
        assert hash_range(fd, short, 10, len(data) + 100, bytearray(1024)) == len(data) - 10
        assert short.hexdigest() == hashlib.sha256(data[10:]).hexdigest()
    finally:
        os.close(fd)
