"""A SIGKILL costs little whatever the connection count: after a kill early in a download over
40 connections, the next run fetches again at most max(16 MiB, 0.5 s of transfer) of what the
mirror had sent (the resume state is written by time as well as by bytes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from asynchub._cache.layout import partials_for
from tests.mirror import MirrorServer
from tests.test_transfer import KIB, MIB, job_for, put

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
from pathlib import Path
import anyio
from asynchub._config import HubConfig
from asynchub._engine.engine import Engine, FileJob
from asynchub._transport.aiohttp_transport import AiohttpTransport

args = json.loads(sys.argv[1])

async def main():
    config = HubConfig(
        cache_dir=Path(args["cache"]), chunk_size=args["chunk"], max_connections=40,
        max_connections_per_host=40, stall_timeout=30.0,
    )
    transport = AiohttpTransport(config)
    engine = Engine(config, transport)
    job = FileJob(args["name"], (args["url"],), args["sha"], args["size"], Path(args["dest"]))
    try:
        path = await engine.fetch(job)
    finally:
        await transport.aclose()
    print("OK", path, flush=True)

anyio.run(main)
"""

#: Per connection; 40 connections move ~10 MiB/s, so 0.5 s of transfer is ~5 MiB and the
#: bound is the 16 MiB floor.
RATE = 256 * KIB
SIZE = 96 * MIB
KILL_AT = 40 * MIB
BOUND = 16 * MIB


@pytest.fixture
async def mirror(tmp_path: Path) -> AsyncIterator[MirrorServer]:
    root = tmp_path / "mirror"
    root.mkdir()
    server = MirrorServer(root, rate_limit=RATE)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _start(args: dict[str, object]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def test_sigkill_early_with_40_connections_loses_little(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    blob = put(mirror.root, "big/model.onnx", SIZE, seed=11)
    cache = tmp_path / "cache"
    job = job_for(f"{mirror.url}/{blob.rel}", blob, cache)
    # 4 MiB chunks: every one of the 40 connections is mid-chunk when the kill lands, and no
    # connection has reached the 4 MiB state interval on its own
    args = {
        "cache": str(cache),
        "chunk": 4 * MIB,
        "name": blob.rel,
        "url": job.urls[0],
        "sha": blob.sha,
        "size": blob.size,
        "dest": str(job.dest),
    }
    proc = _start(args)
    try:
        with anyio.fail_after(90):
            for _ in range(9000):  # bounded poll of the mirror's byte count
                if mirror.served_bytes() >= KILL_AT or proc.poll() is not None:
                    break
                await anyio.sleep(0.01)
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert mirror.served_bytes() >= KILL_AT
            connections = len({r.range for r in mirror.requests})
            proc.send_signal(signal.SIGKILL)
            await anyio.to_thread.run_sync(proc.wait)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert connections >= 20  # the download ran over many connections at once
    sent_first = mirror.served_bytes()
    assert sent_first < SIZE and list(partials_for(job.dest))

    mirror.rate_limit = None  # the second run at full speed
    mark = len(mirror.requests)
    proc = _start(args)
    try:
        await anyio.to_thread.run_sync(proc.wait, 90)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 0, out[-3000:]
    assert job.dest.read_bytes() == blob.data
    sent_second = sum(r.body_bytes for r in mirror.requests[mark:])
    refetched = sent_first + sent_second - SIZE
    print(f"sent before the kill {sent_first}, fetched again {refetched}")
    assert refetched <= BOUND, (
        f"the mirror sent {sent_first} bytes before the kill and {sent_second} after; "
        f"{refetched} bytes were fetched twice (bound {BOUND})"
    )
