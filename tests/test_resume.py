"""Resume state, and downloads that survive SIGKILL, share work across processes, and stop
cleanly on a full disk."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from asynchub._cache.layout import partials_for, state_path
from asynchub._engine.resume import ChunkPlan, ResumeState, find_resumable, save_state
from asynchub._exceptions import InsufficientSpaceError
from tests.mirror import MirrorServer
from tests.test_transfer import KIB, MIB, Blob, Events, fast_config, job_for, put

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- state units
def test_plan_prefix_claims_and_reset() -> None:
    plan = ChunkPlan(1000, 300)
    assert plan.count == 4 and plan.bounds(3) == (900, 1000)
    assert [plan.claim_next(), plan.claim_next()] == [0, 1]
    plan.add(1, 300)
    assert plan.prefix == 0 and plan.is_done(1)
    plan.add(0, 120)
    assert plan.prefix == 120
    plan.add(0, 180)
    assert plan.prefix == 600 and plan.next_offset(2) == 600
    plan.release(0)
    assert plan.claim_next() == 2  # finished chunks are never handed out again
    with pytest.raises(ValueError):
        plan.add(3, 101)
    plan.reset(1000)
    assert plan.count == 1 and plan.prefix == 0 and not plan.complete


def test_plan_running_totals_match_a_recount() -> None:
    """The plan keeps its written bytes and unfinished ranges as running totals (a scheduler
    asks at every claim): through claims, writes, splits and a reset they stay what a scan
    of every range says."""
    rng = random.Random(7)
    plan = ChunkPlan(10_000, 700, written=[700, 300] + [0] * 13)
    for step in range(400):
        if step == 300:
            plan.reset(900)
        index = rng.randrange(plan.count)
        action = rng.random()
        if action < 0.4 and not plan.is_done(index):
            plan.add(index, rng.randint(0, plan.remaining(index)))
        elif action < 0.6 and plan.remaining(index) > 1:
            at = plan.next_offset(index) + 1 + rng.randrange(plan.remaining(index) - 1)
            plan.split(index, at)
        elif action < 0.8:
            plan.claim(index)
        else:
            plan.release(index)
        scan = [i for i in plan.order if i not in plan.claimed and not plan.is_done(i)]
        assert plan.done_bytes == sum(plan.written)
        assert plan.unclaimed_open() == len(scan)
        assert plan.first_unclaimed() == (scan[0] if scan else None)
        assert plan.unclaimed_bytes() == sum(plan.remaining(i) for i in scan)


def test_state_round_trip_and_validation(tmp_path: Path) -> None:
    state = ResumeState("ab" * 32, 1000, 300, [300, 120, 0, 100], "http://x/y", '"e"', None)
    again = ResumeState.from_json(state.to_json())
    assert again == state
    assert json.loads(state.to_json())["finished"] == [0, 3]  # the last chunk is 100 bytes
    assert json.loads(state.to_json())["partial"] == {"1": 120}
    for bad in ('{"version": 99}', "[]", "{", state.to_json().replace('"1":120', '"1":301')):
        with pytest.raises((ValueError, KeyError, TypeError)):
            ResumeState.from_json(bad)


def test_find_resumable_adopts_matching_state_and_cleans(tmp_path: Path) -> None:
    final = tmp_path / "abc_model.onnx"
    sha = "cd" * 32
    good = final.with_name(final.name + ".1-a.partial")
    good.write_bytes(bytes(1000))
    save_state(good, ResumeState(sha, 1000, 300, [300, 0, 0, 0]))
    better = final.with_name(final.name + ".2-b.partial")
    better.write_bytes(bytes(1000))
    save_state(better, ResumeState(sha, 1000, 300, [300, 300, 0, 0]))
    other_sha = final.with_name(final.name + ".3-c.partial")
    other_sha.write_bytes(bytes(1000))
    save_state(other_sha, ResumeState("ee" * 32, 1000, 300, [300, 300, 300, 100]))
    no_state = final.with_name(final.name + ".4-d.partial")
    no_state.write_bytes(b"x")
    orphan_state = state_path(final.with_name(final.name + ".5-e.partial"))
    orphan_state.write_text("{}")
    assert find_resumable(final, sha256=sha, size=1000, chunk_size=300, clean=False) is not None
    assert len(list(partials_for(final))) == 4
    found = find_resumable(final, sha256=sha, size=1000, chunk_size=300, clean=True)
    assert found is not None and found[0] == better and found[1].written[1] == 300
    assert list(partials_for(final)) == [better]
    assert not orphan_state.exists() and not state_path(good).exists()
    assert find_resumable(final, sha256=sha, size=1000, chunk_size=256, clean=True) is None


# ---------------------------------------------------------------------------- processes
CHILD = r"""
import json, sys
from pathlib import Path
import anyio
from asynchub._config import HubConfig
from asynchub._engine.retry import RetryPolicy
from asynchub._engine.engine import Engine, FileJob
from asynchub._transport.aiohttp_transport import AiohttpTransport as Transport

args = json.loads(sys.argv[1])
moved = 0

def progress(event):
    global moved
    if event.kind == "transfer":
        moved += event.nbytes
        print("T", moved, flush=True)
    elif event.kind in ("resumed", "cached"):
        print(event.kind, event.nbytes, flush=True)

async def main():
    config = HubConfig(
        cache_dir=Path(args["cache"]), chunk_size=args["chunk"], min_split_size=args["chunk"],
        max_connections=4, state_interval=64 * 1024, stall_timeout=10.0,
        retry=RetryPolicy(attempts=3, backoff_base=0.01, backoff_cap=0.05),
    )
    transport = Transport(config)
    engine = Engine(config, transport, progress=progress)
    job = FileJob(args["name"], (args["url"],), args["sha"], args["size"], Path(args["dest"]))
    try:
        path = await engine.fetch(job)
    finally:
        await transport.aclose()
    print("OK", path, flush=True)

anyio.run(main)
"""


def child_args(server: MirrorServer, blob: Blob, cache: Path) -> str:
    job = job_for(f"{server.url}/{blob.rel}", blob, cache)
    values = {"cache": str(cache), "chunk": 256 * KIB, "name": blob.rel, "url": job.urls[0]}
    values.update(sha=blob.sha, size=blob.size, dest=str(job.dest))
    return json.dumps(values)


async def run_child(args: str, *, kill_after: int | None = None) -> list[str]:
    """Run the child; with ``kill_after``, SIGKILL it once it reports that many bytes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lines: list[str] = []
    async with await anyio.open_process(
        [sys.executable, "-c", CHILD, args], cwd=ROOT, env=env, stderr=subprocess.STDOUT
    ) as proc:
        assert proc.stdout is not None
        reader = BufferedByteReceiveStream(proc.stdout)
        while True:
            try:
                line = (await reader.receive_until(b"\n", 1 << 16)).decode()
            except (anyio.EndOfStream, anyio.IncompleteRead):
                break
            lines.append(line)
            if kill_after is not None and line.startswith("T ") and int(line[2:]) >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        code = await proc.wait()
    if kill_after is not None:
        assert code == -signal.SIGKILL, lines
    else:
        assert code == 0, "\n".join(lines)
    return lines


@pytest.fixture
async def slow_mirror(tmp_path: Path) -> AsyncIterator[MirrorServer]:
    root = tmp_path / "mirror"
    root.mkdir()
    server = MirrorServer(root, rate_limit=1 * MIB)  # per response: ~4 MiB/s with 4 connections
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _state_of(dest: Path) -> ResumeState:
    partials = list(partials_for(dest))
    assert len(partials) == 1, partials
    return ResumeState.from_json(state_path(partials[0]).read_text())


async def test_sigkill_at_several_points_then_resume(
    slow_mirror: MirrorServer, tmp_path: Path
) -> None:
    blob = put(slow_mirror.root, "big/model.onnx", 4 * MIB, seed=7)
    cache = tmp_path / "cache"
    args = child_args(slow_mirror, blob, cache)
    dest = job_for("http://unused", blob, cache).dest
    done_before = 0
    for _ in range(3):
        await run_child(args, kill_after=768 * KIB)
        assert not dest.exists()
        state = _state_of(dest)
        done = sum(state.written)
        assert done > done_before  # every run kept what it had written
        done_before = done
    mark = len(slow_mirror.requests)
    lines = await run_child(args)
    assert lines[-1].strip() == f"OK {dest}"
    resumed = [line for line in lines if line.startswith("resumed ")]
    assert resumed and int(resumed[0].split()[1]) >= done_before
    final_run = [r.range for r in slow_mirror.requests[mark:]]
    assert final_run and all(r is not None and r[0] > 0 for r in final_run)
    assert dest.read_bytes() == blob.data and not list(partials_for(dest))
    # at most a few chunks were fetched twice across the four runs
    assert slow_mirror.served_bytes() < blob.size * 1.5


async def test_eight_processes_download_once(slow_mirror: MirrorServer, tmp_path: Path) -> None:
    blob = put(slow_mirror.root, "shared/model.onnx", 3 * MIB, seed=8)
    cache = tmp_path / "cache"
    args = child_args(slow_mirror, blob, cache)
    outputs: list[list[str]] = []

    async def one() -> None:
        outputs.append(await run_child(args))

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(one)
    dest = job_for("http://unused", blob, cache).dest
    assert [out[-1].strip() for out in outputs] == [f"OK {dest}"] * 8
    assert dest.read_bytes() == blob.data
    served = slow_mirror.served_bytes("/shared/model.onnx")
    assert blob.size <= served <= blob.size + 512 * KIB, served
    assert sum(any(line.startswith("cached") for line in out) for out in outputs) >= 7


# ---------------------------------------------------------------------------- disk full
@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_full_disk_fails_at_the_start(tiny_disk: Path, tmp_path: Path) -> None:
    from asynchub._engine.engine import Engine
    from asynchub._transport.aiohttp_transport import AiohttpTransport as Transport

    root = tmp_path / "mirror"
    blob = put(root, "huge.bin", 4 * MIB)
    server = MirrorServer(root)
    await server.start()
    config = fast_config(tiny_disk / "hub")
    transport = Transport(config)
    events = Events()
    job = job_for(f"{server.url}/{blob.rel}", blob, tiny_disk / "hub")
    try:
        with pytest.raises(InsufficientSpaceError, match="no space left"):
            await Engine(config, transport, progress=events).fetch(job)
    finally:
        await transport.aclose()
        await server.stop()
    assert not job.dest.exists() and not list(partials_for(job.dest))
    assert server.served_bytes() == 0  # nothing was fetched before space was reserved
    assert events.of("failed")
