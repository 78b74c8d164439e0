"""The receive path alone: one file over N connections from nginx on loopback, asynchub's
buffered receive path (``_transport/stream.py`` + ``_engine/batch.py``) against aiohttp.

Each run is a fresh child process that fetches the file as 4 MiB ranges taken lowest offset
first by N connections (keep-alive) and, per mode:

* ``discard`` -- reads the body and drops it (what receiving alone costs);
* ``engine``  -- the whole engine (``Engine.fetch``: probe, scheduler, resume state, verified)
  with impl ``engine-stream`` (adaptive connections up to N), ``engine-fixed`` (always N)
  or ``engine-aiohttp``;
* ``write``   -- writes it with ``pwritev`` and hashes it (the stream path: in a batched writer
  thread, hashing in-order bytes from memory; the aiohttp path: ``anyio.to_thread`` per 1 MiB
  piece, hashing after the download from the file, as the engine did).

Printed per run: wall (in-process), CPU seconds of the child, peak RSS; medians of ``--repeat``.

    python benchmarks/receive_path.py --size-mib 1024 --connections 4,16 --repeat 3
    python benchmarks/receive_path.py --rate 25000000 --connections 40

``BENCH_TRACE=1`` (engine modes) also prints when the first and last bytes arrived, when the
hash was done and the CPU seconds of each thread; ``BENCH_SPY_EXTRA="--gil"`` is passed to
py-spy (with ``--py-spy``); ``BENCH_PREFIX=cmd`` runs each child under ``cmd`` (a script
around ``perf record``, say); ``BENCH_WRAP=script.py`` runs each child as ``python script.py
receive_path.py ...`` (for ad-hoc instrumentation).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

MIB = 1024 * 1024


CHUNK = 4 * MIB


def _ranges(size: int, n: int) -> list[tuple[int, int]]:
    return [(s, min(size, s + CHUNK)) for s in range(0, size, CHUNK)]


async def _workers(size: int, n: int, fetch: object) -> None:
    """``n`` workers take 4 MiB ranges lowest offset first (as the engine's scheduler does)."""
    todo = _ranges(size, n)
    todo.reverse()

    async def worker() -> None:
        while todo:
            start, end = todo.pop()
            await fetch(start, end)  # type: ignore[operator]

    await asyncio.gather(*(worker() for _ in range(n)))


async def _child_stream(url: str, size: int, conns: int, mode: str, out: str) -> str:
    from asynchub._config import HubConfig
    from asynchub._engine.batch import BatchWriter
    from asynchub._engine.hashing import HashCursor
    from asynchub._transport.stream import StreamTransport

    transport = StreamTransport(HubConfig())
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, size)  # as the engine does
    cursor = HashCursor(fd) if mode == "write" else None
    writer = BatchWriter(fd, cursor) if cursor is not None else None
    ends: dict[int, int] = {}  # written spans not yet joined to the prefix
    prefix = 0

    async def one(start: int, end: int) -> None:
        nonlocal prefix
        headers = {"Range": f"bytes={start}-{end - 1}"}
        async with transport.request(url, headers=headers) as response:
            assert response.status == 206, response.status
            offset = start
            async for piece in response.iter_pieces():
                n = len(piece.view)
                if writer is None or cursor is None:
                    piece.release()
                else:
                    try:
                        await writer.write(offset, [piece.view], lambda: size)
                    finally:
                        piece.release()
                    ends[offset] = offset + n
                    while prefix in ends:
                        prefix = ends.pop(prefix)
                    cursor.advance(prefix)
                offset += n
            assert offset == end

    hashing = asyncio.create_task(cursor.run()) if cursor is not None else None
    await _workers(size, conns, one)
    digest = ""
    if cursor is not None and hashing is not None:
        digest = await cursor.hexdigest(size)
        hashing.cancel()
    await transport.aclose()
    os.close(fd)
    return digest


async def _child_aiohttp(url: str, size: int, conns: int, mode: str, out: str) -> str:
    import anyio.to_thread

    from asynchub._config import HubConfig
    from asynchub._engine.ranged import pwrite_all
    from asynchub._transport.aiohttp_transport import AiohttpTransport as Transport

    transport = Transport(HubConfig())
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, size)  # as the engine does

    async def one(start: int, end: int) -> None:
        headers = {"Range": f"bytes={start}-{end - 1}"}
        async with transport.request(url, headers=headers) as response:
            assert response.status == 206, response.status
            offset = start
            buffers: list[bytes] = []
            buffered = 0
            async for data in response.iter_chunks(MIB):
                if mode == "write":
                    buffers.append(data)
                    buffered += len(data)
                    if buffered >= MIB:
                        await anyio.to_thread.run_sync(pwrite_all, fd, buffers, offset)
                        offset += buffered
                        buffers, buffered = [], 0
                else:
                    offset += len(data)
            if buffers:
                await anyio.to_thread.run_sync(pwrite_all, fd, buffers, offset)
                offset += buffered

    await _workers(size, conns, one)
    digest = ""
    if mode == "write":

        def hash_file() -> str:
            h = hashlib.sha256()
            buf = bytearray(4 * MIB)
            view = memoryview(buf)
            pos = 0
            while pos < size:
                got = os.preadv(fd, [view], pos)
                h.update(view[:got])
                pos += got
            return h.hexdigest()

        digest = await anyio.to_thread.run_sync(hash_file)
    await transport.aclose()
    os.close(fd)
    return digest


async def _child_engine(
    url: str, size: int, conns: int, mode: str, out: str, kind: str, adaptive: bool = True
) -> str:
    """The whole engine (probe, scheduler, writes, hash cursor, resume state) on one transport;
    ``adaptive=False`` opens ``conns`` connections whatever they bring."""
    from asynchub._config import HubConfig
    from asynchub._engine.engine import Engine, FileJob
    from asynchub._transport.auto import default_transport

    cache = Path(out).parent / "cache"
    config = HubConfig(cache_dir=cache, max_connections=conns, max_connections_per_host=conns,
                       transport=kind, adaptive_connections=adaptive)
    transport = default_transport(config)
    trace = _Trace() if os.environ.get("BENCH_TRACE") else None
    engine = Engine(config, transport, progress=trace)
    sha = os.environ["BENCH_SHA"]
    dest = cache / f"{sha}_blob.bin"
    await engine.fetch(FileJob("blob.bin", (url,), sha, size, dest))
    await transport.aclose()
    if trace is not None:
        trace.report()
    return sha


class _Trace:
    """``BENCH_TRACE=1``: when the bytes arrived and when the hash caught up (to stderr)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first = self.last_transfer = self.last_verified = 0.0
        self.moved = self.verified = 0
        self.lag_at_last = 0

    def __call__(self, event: object) -> None:
        kind, n = getattr(event, "kind", ""), getattr(event, "nbytes", 0) or 0
        now = time.perf_counter() - self.t0
        if kind == "transfer":
            self.first = self.first or now
            self.moved += n
            self.last_transfer = now
            self.lag_at_last = self.moved - self.verified
        elif kind == "verified":
            self.verified += n
            self.last_verified = now

    def report(self) -> None:
        print(f"trace: first byte {self.first:.3f} s, last byte {self.last_transfer:.3f} s, "
              f"hash done {self.last_verified:.3f} s, unhashed at the last byte "
              f"{self.lag_at_last / MIB:.0f} MiB; CPU s per thread: {_thread_cpu()}",
              file=sys.stderr)


def _thread_cpu() -> str:
    """CPU seconds of each live thread of this process (Linux ``/proc``), busiest first."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.append((int(fields[11]) + int(fields[12])) / tick)
    return " ".join(f"{c:.2f}" for c in sorted(out, reverse=True))


def child(args: argparse.Namespace) -> None:
    import functools

    runners: dict[str, Callable[[str, int, int, str, str], Coroutine[Any, Any, str]]] = {
        "stream": _child_stream,
        "aiohttp": _child_aiohttp,
        "engine-stream": functools.partial(_child_engine, kind="stream"),
        "engine-aiohttp": functools.partial(_child_engine, kind="aiohttp"),
        "engine-fixed": functools.partial(_child_engine, kind="stream", adaptive=False),
    }
    runner = runners[args.impl]
    import aiohttp  # noqa: F401  (imports are not timed: start-up is measured elsewhere)
    import anyio.to_thread  # noqa: F401
    import h11  # noqa: F401


    if os.environ.get("BENCH_SWITCH"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH"]))
    t0 = time.perf_counter()
    digest = asyncio.run(runner(args.url, args.size, args.connections, args.mode, args.out))
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "digest": digest,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--connections", default="4,16,40")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=int, default=0, help="per-connection cap, bytes/s")
    parser.add_argument("--modes", default="discard,write")
    parser.add_argument("--impls", default="stream,aiohttp")
    parser.add_argument("--py-spy", metavar="DIR", help="profile each child with py-spy into DIR")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.connections = int(args.connections)
        child(args)
        return

    from _mirror import MirrorSet

    work = HERE / "work" / "receive"
    root = work / "root"
    root.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MIB
    blob = root / f"blob-{args.size_mib}.bin"
    if not blob.exists() or blob.stat().st_size != size:
        with open(blob, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(MIB))
    with open(blob, "rb") as handle:
        expected = hashlib.file_digest(handle, "sha256").hexdigest()
    os.environ["BENCH_SHA"] = expected
    with MirrorSet(root, work / "mirror", rate_limit=args.rate or 25_000_000, latency=0) as ms:
        endpoint = ms.capped if args.rate else ms.plain
        url = endpoint.url_for(blob.name)
        print(f"mirror: {ms.kind}; {url}; {args.size_mib} MiB; cap "
              f"{args.rate / 1e6 if args.rate else 0:g} MB/s per connection")
        print("| path | mode | connections | wall s (min-max) | CPU s | peak RSS MB |")
        print("|---|---|---:|---|---:|---:|")
        for conns in [int(c) for c in args.connections.split(",")]:
            for mode in args.modes.split(","):
                for impl in args.impls.split(","):
                    runs = []
                    for _ in range(args.repeat):
                        with tempfile.TemporaryDirectory(dir=work) as tmp:
                            out = os.path.join(tmp, "out.bin")
                            os.sync()  # no dirty pages of the last run throttle this one
                            spy: list[str] = []
                            wrap = [w for w in [os.environ.get("BENCH_WRAP", "")] if w]
                            prefix = [w for w in [os.environ.get("BENCH_PREFIX", "")] if w]
                            if args.py_spy:
                                Path(args.py_spy).mkdir(parents=True, exist_ok=True)
                                spy = ["py-spy", "record", "-r", "250", "-f", "raw",
                                       *os.environ.get("BENCH_SPY_EXTRA", "").split(),
                                       "--threads", "-o",
                                       f"{args.py_spy}/{impl}-{mode}-{conns}.txt", "--"]
                            proc = subprocess.run(
                                [*spy, *prefix, sys.executable, *wrap, __file__, "--child",
                                 "--impl", impl, "--mode", mode, "--url", url, "--size", str(size),
                                 "--connections", str(conns), "--out", out],
                                capture_output=True, text=True, check=False)
                        if os.environ.get("BENCH_TRACE"):
                            print(proc.stderr.strip())
                        if proc.returncode:
                            print(proc.stderr[-3000:])
                            raise SystemExit(1)
                        lines = proc.stdout.splitlines()
                        run = json.loads([ln for ln in lines if ln.startswith("{")][-1])
                        if mode == "write" and run["digest"] not in ("", expected):
                            raise SystemExit(f"{impl}: wrong digest")
                        runs.append(run)
                    walls = [r["wall"] for r in runs]
                    print(f"| {impl} | {mode} | {conns} | {statistics.median(walls):.2f} "
                          f"({min(walls):.2f}-{max(walls):.2f}) | "
                          f"{statistics.median(r['cpu'] for r in runs):.2f} | "
                          f"{max(r['rss_mb'] for r in runs):.0f} |", flush=True)


if __name__ == "__main__":
    main()
