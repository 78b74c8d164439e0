"""The transfer engine against a real local mirror: the plain paths, sharing, cache hits,
mirrors, bandwidth cap, cancellation. Faults are in ``test_transfer_faults.py``, processes and
resume in ``test_resume.py``. The helpers at the top are shared by those files."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from asynchub._cache.layout import cache_path, partials_for, state_path
from asynchub._config import HubConfig
from asynchub._engine.engine import Engine, FileJob
from asynchub._engine.retry import RetryPolicy
from asynchub._exceptions import HTTPStatusError, MirrorsExhaustedError, OfflineError
from asynchub._progress.events import ProgressEvent
from tests.mirror import MirrorServer
from tests.transports import Transport

KIB = 1024
MIB = 1024 * KIB

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------- shared helpers
@dataclass(frozen=True)
class Blob:
    rel: str
    data: bytes

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)


def put(root: Path, rel: str, size: int, seed: int = 0) -> Blob:
    """A file of seeded random bytes under the mirror root."""
    data = random.Random(seed).randbytes(size)
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return Blob(rel, data)


def fast_config(cache: Path, **overrides: Any) -> HubConfig:
    """Small chunks and quick retries, so every path runs in milliseconds."""
    values: dict[str, Any] = {
        "cache_dir": cache,
        "chunk_size": 256 * KIB,
        "min_split_size": 256 * KIB,
        "max_connections": 4,
        "max_connections_per_host": 4,
        "retry": RetryPolicy(attempts=3, backoff_base=0.001, backoff_cap=0.01),
        "stall_timeout": 5.0,
        "connect_timeout": 5.0,
        "state_interval": 64 * KIB,
    }
    values.update(overrides)
    return HubConfig(**values)


def job_for(urls: str | tuple[str, ...], blob: Blob, cache: Path, **changes: Any) -> FileJob:
    if isinstance(urls, str):
        urls = (urls,)
    values: dict[str, Any] = {
        "name": blob.rel,
        "urls": urls,
        "sha256": blob.sha,
        "size": blob.size,
        "dest": cache_path(cache, blob.rel, blob.sha),
    }
    values.update(changes)
    return FileJob(**values)


class Events:
    """A progress callback that keeps every event."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[ProgressEvent]:
        return [e for e in self.events if e.kind == kind]

    def total(self, kind: str) -> int:
        return sum(e.nbytes for e in self.of(kind))

    def messages(self) -> str:
        return "\n".join(e.message or "" for e in self.of("retry"))


class Sleeps:
    """An injected sleep that records what the engine asked for and waits at most 10 ms."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await anyio.sleep(min(seconds, 0.01))


@dataclass
class Rig:
    server: MirrorServer
    root: Path
    cache: Path

    def url(self, blob: Blob, host: str | None = None) -> str:
        base = self.server.url if host is None else self.server.url_for(host)
        return f"{base}/{blob.rel}"

    def engine(
        self, events: Events | None = None, **overrides: Any
    ) -> tuple[Engine, Transport, HubConfig]:
        sleep = overrides.pop("sleep", None)
        config = fast_config(self.cache, **overrides)
        transport = Transport(config)
        kwargs: dict[str, Any] = {"progress": events}
        if sleep is not None:
            kwargs["sleep"] = sleep
        return Engine(config, transport, **kwargs), transport, config

    def leftovers(self, job: FileJob) -> list[Path]:
        return list(partials_for(job.dest))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    root = tmp_path / "mirror"
    root.mkdir()
    server = MirrorServer(root)
    await server.start()
    try:
        yield Rig(server, root, tmp_path / "cache")
    finally:
        await server.stop()


async def fetch(rig: Rig, job: FileJob, events: Events | None = None, **overrides: Any) -> Path:
    engine, transport, _ = rig.engine(events, **overrides)
    try:
        return await engine.fetch(job)
    finally:
        await transport.aclose()


# ---------------------------------------------------------------------------- the plain path
async def test_parallel_chunks_verified(rig: Rig) -> None:
    blob = put(rig.root, "models/a.onnx", 2 * MIB + 12345)
    job = job_for(rig.url(blob), blob, rig.cache)
    events = Events()
    path = await fetch(rig, job, events)
    assert path == job.dest and path.read_bytes() == blob.data
    ranges = sorted(r.range for r in rig.server.requests if r.range is not None)
    assert ranges[0] == (0, 256 * KIB - 1)  # the probe: a ranged GET of the first chunk
    assert len(ranges) == 9 and all(r.method == "GET" for r in rig.server.requests)
    assert events.of("planned")[0].total == blob.size
    assert events.total("transfer") == blob.size
    assert events.total("verified") == blob.size
    done = events.of("done")
    assert len(done) == 1 and done[0].path == path and done[0].mirror == rig.url(blob)
    assert not rig.leftovers(job) and not state_path(path).exists()


async def test_small_file_is_one_request(rig: Rig) -> None:
    blob = put(rig.root, "small.bin", 100 * KIB)
    job = job_for(rig.url(blob), blob, rig.cache)
    assert (await fetch(rig, job)).read_bytes() == blob.data
    assert len(rig.server.requests) == 1


async def test_unknown_size_is_probed_with_a_range(rig: Rig) -> None:
    blob = put(rig.root, "nosize.bin", 700 * KIB)
    job = job_for(rig.url(blob), blob, rig.cache, size=None)
    assert (await fetch(rig, job)).read_bytes() == blob.data
    ranges = [r.range for r in rig.server.requests]
    assert ranges[0] == (0, 256 * KIB - 1) and len(ranges) == 3 and None not in ranges


async def test_cached_file_needs_no_request(rig: Rig) -> None:
    blob = put(rig.root, "c.bin", 600 * KIB)
    job = job_for(rig.url(blob), blob, rig.cache)
    await fetch(rig, job)
    seen = len(rig.server.requests)
    events = Events()
    assert await fetch(rig, job, events) == job.dest
    assert len(rig.server.requests) == seen
    assert [e.kind for e in events.events] == ["cached"]


async def test_bad_cached_file_is_replaced(rig: Rig) -> None:
    blob = put(rig.root, "d.bin", 600 * KIB)
    job = job_for(rig.url(blob), blob, rig.cache)
    job.dest.parent.mkdir(parents=True)
    job.dest.write_bytes(b"x" * blob.size)
    assert (await fetch(rig, job)).read_bytes() == blob.data
    assert rig.server.served_bytes() >= blob.size


async def test_force_downloads_again(rig: Rig) -> None:
    blob = put(rig.root, "f.bin", 300 * KIB)
    job = job_for(rig.url(blob), blob, rig.cache)
    engine, transport, _ = rig.engine()
    try:
        await engine.fetch(job)
        await engine.fetch(job, force=True)
    finally:
        await transport.aclose()
    assert rig.server.served_bytes() == 2 * blob.size


async def test_orphan_partials_are_removed(rig: Rig) -> None:
    blob = put(rig.root, "o.bin", 600 * KIB)
    job = job_for(rig.url(blob), blob, rig.cache)
    job.dest.parent.mkdir(parents=True)
    orphan = job.dest.with_name(job.dest.name + ".999-dead.partial")
    orphan.write_bytes(b"junk")
    state_path(orphan).write_text("{not json")
    assert (await fetch(rig, job)).read_bytes() == blob.data
    assert not orphan.exists() and not state_path(orphan).exists()


async def test_offline_uses_only_the_cache(rig: Rig) -> None:
    blob = put(rig.root, "off.bin", 300 * KIB)
    job = job_for(rig.url(blob), blob, rig.cache)
    with pytest.raises(OfflineError, match="offline"):
        await fetch(rig, job, offline=True)
    assert not rig.server.requests
    await fetch(rig, job)
    assert await fetch(rig, job, offline=True) == job.dest


# ---------------------------------------------------------------------------- mirrors
async def test_next_mirror_after_404(rig: Rig) -> None:
    blob = put(rig.root, "m.bin", 600 * KIB)
    good = rig.url(blob)
    job = job_for((f"{rig.server.url}/nowhere.bin", good), blob, rig.cache)
    events = Events()
    assert (await fetch(rig, job, events)).read_bytes() == blob.data
    assert events.of("done")[0].mirror == good
    assert "404" in events.messages()


async def test_wrong_size_mirror_is_skipped(rig: Rig) -> None:
    blob = put(rig.root, "w.bin", 600 * KIB)
    other = put(rig.root, "other.bin", 500 * KIB, seed=1)
    job = job_for((rig.url(other), rig.url(blob)), blob, rig.cache)
    assert (await fetch(rig, job)).read_bytes() == blob.data
    assert rig.server.served_bytes("/other.bin") <= 256 * KIB  # only the probe


async def test_every_mirror_failing_lists_each(rig: Rig) -> None:
    blob = put(rig.root, "x.bin", 600 * KIB)
    urls = (f"{rig.server.url}/a/missing.bin", f"{rig.server.url}/b/missing.bin")
    job = job_for(urls, blob, rig.cache)
    events = Events()
    with pytest.raises(MirrorsExhaustedError) as info:
        await fetch(rig, job, events)
    assert [url for url, _ in info.value.errors] == list(urls)
    assert all(isinstance(e, HTTPStatusError) and e.status == 404 for _, e in info.value.errors)
    assert "missing.bin" in str(info.value)
    assert not job.dest.exists() and events.of("failed")


# ---------------------------------------------------------------------------- sharing
async def test_same_dest_concurrently_is_one_download(rig: Rig) -> None:
    blob = put(rig.root, "s.bin", 1 * MIB)
    job = job_for(rig.url(blob), blob, rig.cache)
    engine, transport, _ = rig.engine()
    results: list[Path] = []

    async def one() -> None:
        results.append(await engine.fetch(job))

    try:
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(one)
    finally:
        await transport.aclose()
    assert results == [job.dest] * 5
    assert rig.server.served_bytes() == blob.size


async def test_cancelled_waiter_does_not_stop_the_download(rig: Rig) -> None:
    rig.server.rate_limit = 2 * MIB
    blob = put(rig.root, "cw.bin", 1 * MIB)
    job = job_for(rig.url(blob), blob, rig.cache)
    events = Events()
    engine, transport, _ = rig.engine(events)
    started = anyio.Event()
    results: list[Path] = []

    async def owner() -> None:
        results.append(await engine.fetch(job))

    async def waiter(scope_box: list[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            scope_box.append(scope)
            started.set()
            await engine.fetch(job)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(owner)
            await anyio.wait_all_tasks_blocked()
            box: list[anyio.CancelScope] = []
            group.start_soon(waiter, box)
            await started.wait()
            await anyio.wait_all_tasks_blocked()
            box[0].cancel()
    finally:
        await transport.aclose()
    assert results == [job.dest] and job.dest.read_bytes() == blob.data
    assert not events.of("retry") and rig.server.served_bytes() == blob.size


async def test_cancelled_owner_hands_over_to_a_waiter(rig: Rig) -> None:
    rig.server.rate_limit = 2 * MIB
    blob = put(rig.root, "handover.bin", 2 * MIB)
    job = job_for(rig.url(blob), blob, rig.cache)
    events = Events()
    halfway = anyio.Event()

    def watch(event: ProgressEvent) -> None:
        events(event)
        if events.total("transfer") >= 512 * KIB:
            halfway.set()

    engine, transport, _ = rig.engine(watch)  # type: ignore[arg-type]
    owner_scope = anyio.CancelScope()
    results: list[Path] = []

    async def owner() -> None:
        with owner_scope:
            await engine.fetch(job)

    async def waiter() -> None:
        results.append(await engine.fetch(job))

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(owner)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(waiter)
            await halfway.wait()
            owner_scope.cancel()
    finally:
        await transport.aclose()
    assert owner_scope.cancelled_caught
    assert results == [job.dest] and job.dest.read_bytes() == blob.data
    assert events.of("resumed") and events.of("resumed")[0].nbytes >= 512 * KIB
    assert rig.server.served_bytes() < blob.size * 1.5


async def test_fetch_many_shares_the_budget(rig: Rig) -> None:
    blobs = [put(rig.root, f"many/{i}.bin", 300 * KIB + i, seed=i) for i in range(6)]
    jobs = [job_for(rig.url(b), b, rig.cache) for b in blobs]
    jobs.append(job_for(f"{rig.server.url}/many/none.bin", blobs[0], rig.cache / "x"))
    engine, transport, _ = rig.engine(max_connections=2)
    try:
        results = await engine.fetch_many(jobs)
    finally:
        await transport.aclose()
    assert [Path(r).read_bytes() for r in results[:6]] == [b.data for b in blobs]  # type: ignore[arg-type]
    assert isinstance(results[6], MirrorsExhaustedError)


# ---------------------------------------------------------------------------- bandwidth cap
async def test_bandwidth_cap_roughly_holds(rig: Rig) -> None:
    blob = put(rig.root, "cap.bin", 1536 * KIB)
    job = job_for(rig.url(blob), blob, rig.cache)
    start = time.monotonic()
    await fetch(rig, job, limit_rate=1 * MIB)
    elapsed = time.monotonic() - start
    # 1.5 MiB at 1 MiB/s with a 0.25 s burst allowance: ~1.25 s; unlimited takes ~0.05 s
    assert 1.0 <= elapsed <= 3.0, elapsed


# ---------------------------------------------------------------------------- cancellation
async def test_cancel_leaves_a_resumable_partial(rig: Rig) -> None:
    rig.server.rate_limit = 1 * MIB
    blob = put(rig.root, "cancel.bin", 2 * MIB)
    job = job_for(rig.url(blob), blob, rig.cache)
    halfway = anyio.Event()
    events = Events()

    def watch(event: ProgressEvent) -> None:
        events(event)
        if events.total("transfer") >= blob.size // 2:
            halfway.set()

    engine, transport, _ = rig.engine(watch)  # type: ignore[arg-type]
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(engine.fetch, job)
            await halfway.wait()
            group.cancel_scope.cancel()
    finally:
        await transport.aclose()
    partials = rig.leftovers(job)
    assert not job.dest.exists() and len(partials) == 1
    assert state_path(partials[0]).is_file()
    before = len(rig.server.requests)
    rig.server.rate_limit = None
    events2 = Events()
    assert (await fetch(rig, job, events2)).read_bytes() == blob.data
    resumed = events2.of("resumed")
    assert resumed and resumed[0].nbytes >= blob.size // 2
    later = rig.server.requests[before:]
    assert later and all(r.range is not None and r.range[0] > 0 for r in later)
    assert events2.total("transfer") <= blob.size - resumed[0].nbytes
    assert not rig.leftovers(job)


async def test_sync_loops_get_their_own_session(tmp_path: Path) -> None:
    blob = put(tmp_path / "mirror", "loop.bin", 300 * KIB)
    server = MirrorServer(tmp_path / "mirror")
    config = fast_config(tmp_path / "cache")
    transport = Transport(config)
    engine = Engine(config, transport)

    def run_twice() -> list[Path]:
        import asyncio

        out = []
        for _ in range(2):
            job = job_for(f"{server.url}/{blob.rel}", blob, tmp_path / "cache" / f"c{len(out)}")
            out.append(asyncio.run(engine.fetch(job)))
        asyncio.run(transport.aclose())
        return out

    with server.running():
        paths = await anyio.to_thread.run_sync(run_twice)
    assert [p.read_bytes() for p in paths] == [blob.data, blob.data]
    assert os.path.dirname(paths[0]) != os.path.dirname(paths[1])
