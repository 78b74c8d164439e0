"""A range's last write runs beside its connection's next request: a connection that received
the last byte of a range asks for the next one at once, while the bytes go into the file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from asynchub._engine.context import Context
from asynchub._engine.ranged import FileDownload
from asynchub._engine.resume import ChunkPlan
from asynchub._engine.slots import HostSlots
from asynchub._progress.events import ProgressEvent
from asynchub._transport.splicing import AVAILABLE
from asynchub._transport.stream import StreamTransport
from tests.test_transfer import KIB, MIB, Rig, fast_config, put, rig

__all__ = ["rig"]  # the fixture, re-used

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not AVAILABLE, reason="bodies stay in the kernel only with splice"),
]


def _download(rig: Rig, tmp_path: Path, size: int, sha256: str,
              threads: anyio.CapacityLimiter) -> tuple[FileDownload, StreamTransport, int]:
    """One file on one connection, its bytes spliced (as for a new partial on a local disk),
    every write and hash on ``threads``."""
    config = fast_config(rig.cache, chunk_size=256 * KIB, max_connections=1,
                         max_connections_per_host=1, adaptive_connections=False,
                         state_interval=4 * MIB, min_rate=0)  # fmt: skip
    transport = StreamTransport(config)
    events: list[ProgressEvent] = []
    ctx = Context(config=config, transport=transport, limiter=anyio.CapacityLimiter(1),
                  bucket=None, sleep=anyio.sleep, clock=time.monotonic, emit=events.append,
                  host_slot=HostSlots(1), threads=threads)  # fmt: skip
    partial = tmp_path / "model.partial"
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    os.ftruncate(fd, size)
    download = FileDownload(ctx, name="model.onnx", sha256=sha256, partial=partial, fd=fd,
                            plan=ChunkPlan(size, 256 * KIB), chunk_size=256 * KIB,
                            mapped=True)  # fmt: skip
    return download, transport, fd


async def test_the_next_range_is_asked_for_while_the_last_write_waits(
    rig: Rig, tmp_path: Path
) -> None:
    blob = put(rig.root, "models/behind.onnx", MIB)
    threads = anyio.CapacityLimiter(1)
    download, transport, fd = _download(rig, tmp_path, blob.size, blob.sha, threads)
    url = f"{rig.server.url}/{blob.rel}"
    try:
        await threads.acquire()  # no write (and no hash) can run until this is released
        async with anyio.create_task_group() as group:
            group.start_soon(download.cursor.run)
            with anyio.fail_after(20):
                async with anyio.create_task_group() as mirror:
                    mirror.start_soon(download.run_mirror, url)
                    try:
                        # the first range is received; its write waits for a thread, and
                        # meanwhile its connection asks for the second one
                        asked = await rig.server.wait_for_requests(2, "*behind.onnx", timeout=5)
                        assert download.plan.done_bytes == 0  # counted once in the file
                        assert 0 in download.plan.claimed  # held until written
                    finally:
                        threads.release()  # (a failure must not leave the writes waiting)
                    assert [r.range for r in asked][:2] == [
                        (0, 256 * KIB - 1), (256 * KIB, 512 * KIB - 1)
                    ]  # fmt: skip
                assert await download.cursor.hexdigest(blob.size) == blob.sha
            group.cancel_scope.cancel()
        assert download.plan.complete
        starts = sorted(r.range[0] for r in rig.server.requests if r.range is not None)
        assert starts == [0, 256 * KIB, 512 * KIB, 768 * KIB]  # every range asked for once
        assert Path(download.partial).read_bytes() == blob.data
    finally:
        os.close(fd)
        await transport.aclose()
