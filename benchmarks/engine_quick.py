"""Quick benchmark of the transfer engine against a loopback mirror.

Serves one random file (1 GiB by default) with :class:`asynchub._demo.static_server.StaticMirror` in
a separate process, then downloads it with :class:`asynchub._engine.engine.Engine` in a fresh child
process per run (so peak RSS is the child's own), and prints, per scenario:

* MB/s over the whole fetch (request to verified file committed in the cache),
* the *verify gap*: seconds from the last byte written to the SHA-256 being complete,
* the commit time (fsync + rename), the child's peak RSS and its CPU time (user + system, all
  threads: hashing included; a shared machine changes wall times, much less CPU times).

The reference is single-core SHA-256 of the same file from the page cache (measured first):
a verified download cannot be faster than hashing it once.

Scenarios: the engine (``--connections``, default 16) and a single stream
(``max_connections=1``), each without a rate limit and with a per-connection cap
(``--rate``, default 25 MB/s, which is what a CDN typically gives one connection).

Run from the project root::

    python benchmarks/engine_quick.py                 # 1 GiB, all four scenarios
    python benchmarks/engine_quick.py --size-mib 256 --skip-single-rated
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def make_file(path: Path, size: int) -> None:
    if path.is_file() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        left = size
        while left:
            block = os.urandom(min(64 * MIB, left))
            handle.write(block)
            left -= len(block)


def sha256_time(path: Path) -> tuple[str, float]:
    with open(path, "rb") as handle:  # warm the page cache
        while handle.read(16 * MIB):
            pass
    digest = hashlib.sha256()
    buffer = bytearray(MIB)
    view = memoryview(buffer)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest(), time.perf_counter() - start


SERVER = """
import sys
from pathlib import Path
from asynchub._demo.static_server import StaticMirror
rate = int(sys.argv[2]) or None
mirror = StaticMirror(Path(sys.argv[1]), rate_limit=rate)
mirror.start()
print(mirror.url, flush=True)
sys.stdin.read()
mirror.stop()
"""


def start_server(root: Path, rate: int | None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(root), str(rate or 0)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    return proc, url


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``: unlike ``ru_maxrss`` it is not inherited from the
    parent across ``exec``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def child_fetch(args: argparse.Namespace) -> dict[str, float]:
    from asynchub._config import HubConfig
    from asynchub._engine.engine import Engine, FileJob
    from asynchub._progress.events import ProgressEvent
    from asynchub._transport.auto import default_transport as Transport

    marks = {"last_byte": 0.0, "hashed": 0.0, "backlog": 0.0}
    hashed = 0

    def progress(event: ProgressEvent) -> None:
        nonlocal hashed
        now = time.perf_counter()
        if event.kind == "transfer":
            marks["last_byte"] = now
            marks["backlog"] = args.size - hashed
        elif event.kind == "verified":
            hashed += event.nbytes
            if hashed >= args.size:
                marks["hashed"] = now

    cache = Path(args.cache)
    config = HubConfig(
        cache_dir=cache,
        max_connections=args.connections,
        max_connections_per_host=args.connections,
        chunk_size=args.chunk_mib * MIB,
        use_locks=True,
    )
    transport = Transport(config)
    engine = Engine(config, transport, progress=progress)
    dest = cache / f"{args.sha}_big.bin"
    job = FileJob("big.bin", (args.url + "/big.bin",), args.sha, args.size, dest)
    start = time.perf_counter()
    await engine.fetch(job)
    end = time.perf_counter()
    await transport.aclose()
    dest.unlink()
    return {
        "seconds": end - start,
        "verify_gap": max(0.0, marks["hashed"] - marks["last_byte"]),
        "commit": end - max(marks["hashed"], marks["last_byte"]),
        "transfer_seconds": marks["last_byte"] - start,
        "peak_rss_mb": peak_rss_mb(),
        "backlog_mib": marks["backlog"] / MIB,
        "cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
    }


def run_child(
    url: str, sha: str, size: int, connections: int, cache: Path, chunk_mib: int
) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--url", url, "--sha", sha,
         "--size", str(size), "--connections", str(connections), "--cache", str(cache),
         "--chunk-mib", str(chunk_mib)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=int, default=25_000_000, help="per-connection bytes/s")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "engine")
    parser.add_argument("--chunk-mib", type=int, default=16, help="engine chunk size")
    parser.add_argument("--skip-single-rated", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--sha", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child_fetch(args))))
        return

    size = args.size_mib * MIB
    data_dir = args.work / "mirror"
    big = data_dir / "big.bin"
    make_file(big, size)
    sha, sha_seconds = sha256_time(big)
    print(f"file: {size / MIB:.0f} MiB; single-core SHA-256: {sha_seconds:.2f} s "
          f"({size / sha_seconds / 1e6:.0f} MB/s)")  # fmt: skip
    cache = args.work / "cache"
    scenarios = [
        ("engine", args.connections, None),
        ("single stream", 1, None),
        ("engine, rate-limited", args.connections, args.rate),
    ]
    if not args.skip_single_rated:
        scenarios.append(("single stream, rate-limited", 1, args.rate))
    print(f"{'scenario':30} {'conns':>5} {'s':>7} {'MB/s':>7} {'x sha':>6} "
          f"{'gap s':>6} {'commit s':>8} {'RSS MB':>7} {'CPU s':>6}")  # fmt: skip
    for label, connections, rate in scenarios:
        server, url = start_server(data_dir, rate)
        try:
            r = run_child(url, sha, size, connections, cache, args.chunk_mib)
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(30)
        mbps = size / r["seconds"] / 1e6
        name = label + (f" ({rate / 1e6:.0f} MB/s/conn)" if rate else "")
        cells = [
            f"{name:30}",
            f"{connections:>5}",
            f"{r['seconds']:>7.2f}",
            f"{mbps:>7.0f}",
            f"{r['seconds'] / sha_seconds:>6.2f}",
            f"{r['verify_gap']:>6.2f}",
            f"{r['commit']:>8.2f}",
            f"{r['peak_rss_mb']:>7.0f}",
            f"{r['cpu_seconds']:>6.2f}",
        ]
        print(" ".join(cells), flush=True)


if __name__ == "__main__":
    main()
