"""Event-loop lag while asynchub loads a large model, and how fast cancellation stops it.

    python benchmarks/loop_lag.py                 # 256 MB model, 3 runs, writes the table
    python benchmarks/loop_lag.py --size-mb 64 --runs 1 --out -

A ticker coroutine asks to wake every 5 ms; its *lateness* (actual minus planned wake-up) is
what every other request of a service would wait while asynchub works. Two models of the
same size: ``LayerNet``, laid out like a transformer (an embedding table of 1/8 of the size and
28 layers: 32 MiB + 28 x 8 MiB for 256 MiB), and ``LagNet``, one weight tensor of the whole
size (the worst case for protobuf, which copies a tensor in one GIL-holding step). Scenarios,
each run in a fresh client process (so no warm allocator or page state carries over):

* ``cold aload``: ``await hub.aload(model)`` with an empty cache: download from the local
  mirror (parallel Range chunks), streaming SHA-256, fsync + rename, then ``onnx.load`` in a
  worker thread.
* ``warm aload``: the same call again: the cached file is re-verified and parsed.
* ``onnx.load in a thread``: the parse alone, for reference.
* ``onnx.load on the loop``: what not to do (blocking the loop), for contrast.
* ``cancel``: ``asyncio.timeout`` fires once 64 MiB (a quarter of smaller files) arrived;
  *cancel-to-stop* is the time from the deadline to ``aload`` raising (files closed, resume
  state saved, lock released); ``resume`` is the next ``aload``, which continues from the
  partial file.

``--hugepages`` adds a run of every scenario with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(transparent huge pages for large ``malloc``s: fewer page faults in protobuf's copy, but with
the kernel's ``defrag=madvise`` the faults may compact memory synchronously). The mirror is
nginx (``_mirror.MirrorSet``'s ``plain`` port: ``sendfile``, no cap) when it is installed, else
:class:`asynchub._demo.static_server.StaticMirror` in its own process; either way it never
competes with the client for the GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1024 * 1024
PERIOD = 0.005
MODEL = "LagNet"  # one tensor of the whole size
LAYERED = "LayerNet"  # 16 tensors
LAYERS = 28  # after the embedding table
HUGEPAGES = "glibc.malloc.hugetlb=1"


# ----------------------------------------------------------------------------- measuring
class Ticker:
    def __init__(self) -> None:
        self.lateness: list[float] = []

    async def run(self) -> None:
        due = time.perf_counter() + PERIOD
        while True:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            now = time.perf_counter()
            self.lateness.append(now - due)
            due = now + PERIOD


def summary(lateness: list[float], elapsed: float) -> dict[str, Any]:
    """p50 / p99 / max lateness in ms (with under ~100 ticks, p99 is the worst tick), and
    the raw figures in µs so that runs can be pooled."""
    ordered = sorted(lateness) or [0.0]

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e3

    return {
        "seconds": elapsed,
        "ticks": len(lateness),
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "max_ms": ordered[-1] * 1e3,
        "lateness_us": [round(x * 1e6) for x in lateness],
    }


async def _measured(coro: Any) -> tuple[Any, dict[str, float]]:
    import anyio

    ticker = Ticker()
    async with anyio.create_task_group() as group:
        group.start_soon(ticker.run)
        await asyncio.sleep(0.02)
        ticker.lateness.clear()
        started = time.perf_counter()
        result = await coro
        elapsed = time.perf_counter() - started
        await asyncio.sleep(2 * PERIOD)  # let a tick delayed by the last step be recorded
        group.cancel_scope.cancel()
    return result, summary(ticker.lateness, elapsed)


async def _client(cache: Path, url: str) -> dict[str, Any]:
    """Runs in the client process; the default hub is configured by the environment."""
    import anyio
    import onnx

    import asynchub as hub

    out: dict[str, Any] = {}
    for name in (LAYERED, MODEL):  # the first aload is the first call of the process
        model, out[f"{name}: cold aload"] = await _measured(hub.aload(name))
        del model
        _, out[f"{name}: warm aload"] = await _measured(hub.aload(name))
        path = await hub.adownload(name)
        _, out[f"{name}: onnx.load in a thread"] = await _measured(
            anyio.to_thread.run_sync(onnx.load, str(path))
        )

        async def on_loop(path: Path = path) -> onnx.ModelProto:
            return onnx.load(str(path))

        _, out[f"{name}: onnx.load on the loop"] = await _measured(on_loop())

    # Cancellation: a second cache, so the download really runs.
    from asynchub import AsyncHub, HubConfig, ProgressEvent

    reached = anyio.Event()
    seen = [0]
    info = await hub.aget_model_info(LAYERED)
    threshold = min(64 * MiB, int(info.metadata["model_bytes"]) // 4)

    def progress(event: ProgressEvent) -> None:
        if event.kind == "transfer":
            seen[0] += event.nbytes
            if seen[0] >= threshold:
                reached.set()
        if event.kind == "resumed":
            out["resumed_bytes"] = event.nbytes

    config = HubConfig.from_env(cache_dir=cache / "cancel")
    async with AsyncHub(config, progress=progress) as one:
        stopped: list[float] = []
        fired: list[float] = []

        async def fetch() -> None:
            try:
                async with asyncio.timeout(None) as deadline:
                    handle.append(deadline)
                    await one.load(LAYERED)
            except TimeoutError:
                pass
            finally:
                stopped.append(time.perf_counter())
                reached.set()  # never leave the driver waiting

        handle: list[asyncio.Timeout] = []
        ticker = Ticker()
        async with anyio.create_task_group() as group:
            group.start_soon(ticker.run)
            async with anyio.create_task_group() as inner:
                inner.start_soon(fetch)
                await reached.wait()
                fired.append(time.perf_counter())
                handle[0].reschedule(asyncio.get_running_loop().time())
            group.cancel_scope.cancel()
        out["cancel_to_stop_ms"] = (stopped[0] - fired[0]) * 1e3
        out["cancel_at_bytes"] = seen[0]
        _, out[f"{LAYERED}: resume aload"] = await _measured(one.load(LAYERED))
    return out


def client_main(cache: Path, url: str) -> None:
    result = asyncio.run(_client(cache, url))
    sys.stdout.write(json.dumps(result) + "\n")


# ----------------------------------------------------------------------------- driving
def build(work: Path, size_mb: int) -> Path:
    """The zoo with one model of ``size_mb`` MB (rebuilt only when the size changes)."""
    from asynchub._demo.zoo import ZooModel, build_zoo

    zoo = work / f"zoo-{size_mb}-layered{LAYERS}"
    manifest = zoo / "ONNX_HUB_MANIFEST.json"
    if not manifest.is_file():
        shutil.rmtree(zoo, ignore_errors=True)
        entries = build_zoo(
            zoo, [ZooModel(MODEL, 13, ("lag",), size=size_mb * MiB, test_data=False)]
        )
        entries.append(_layered(zoo, size_mb))
        manifest.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return zoo


def _layered(zoo: Path, size_mb: int) -> dict[str, Any]:
    """A model laid out like a transformer: an embedding table of 1/8 of ``size_mb`` MiB and
    LAYERS layers sharing the rest (32 MiB + 28 x 8 MiB for 256 MiB)."""
    from asynchub._demo.zoo import write_layered_model

    size = size_mb * MiB
    return write_layered_model(
        zoo,
        LAYERED,
        embedding_bytes=size // 8,
        layers=LAYERS,
        layer_bytes=size * 7 // 8 // LAYERS,
        tags=("lag",),
    )


def start_mirror(root: Path, work: Path) -> tuple[Any, str]:
    """The mirror (``_mirror.MirrorSet``: nginx when installed, else a Python server in its own
    process) and the base URL of its uncapped port."""
    sys.path.insert(0, str(HERE))
    from _mirror import MirrorSet

    mirror = MirrorSet(root, work / "mirror", rate_limit=25_000_000, latency=0.0)
    mirror.start()
    return mirror, mirror.plain.base_url


def run_client(url: str, cache: Path, hugepages: bool) -> dict[str, Any]:
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ)
    env.update(
        ASYNCHUB_MANIFEST_URL=url + "/ONNX_HUB_MANIFEST.json",
        ASYNCHUB_FILE_URLS=url + "/{path}",
        ASYNCHUB_CACHE_DIR=str(cache),
        ASYNCHUB_DISABLE_PROGRESS_BARS="1",
    )
    env.pop("GLIBC_TUNABLES", None)
    if hugepages:
        env["GLIBC_TUNABLES"] = HUGEPAGES
    done = subprocess.run(
        [sys.executable, __file__, "--client", str(cache), url],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"client failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(cache, ignore_errors=True)
    return result


SCENARIOS = tuple(
    f"{name}: {what}"
    for name in (LAYERED, MODEL)
    for what in (
        "cold aload",
        "warm aload",
        "resume aload",
        "onnx.load in a thread",
        "onnx.load on the loop",
    )
    if not (name == MODEL and what == "resume aload")
)


def table(runs: dict[str, list[dict[str, Any]]], size_mb: int, kind: str) -> str:
    lines = [
        f"Models: {LAYERED} (an embedding table and {LAYERS} layers, {size_mb} MiB in all) and "
        f"{MODEL} (one {size_mb} MiB initializer); mirror: {kind} on 127.0.0.1, no cap. The "
        f"first scenario ({LAYERED}: cold aload) is the first asynchub call of the process. "
        "Ticker period 5 ms. Lateness = actual - planned wake-up.",
        "",
        "| allocator | model: scenario | run | time (s) | ticks | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for variant, results in runs.items():
        for scenario in SCENARIOS:
            for index, result in enumerate(results, 1):
                s = result[scenario]
                lines.append(
                    f"| {variant} | {scenario} | {index} | {s['seconds']:.2f} | {s['ticks']} "
                    f"| {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.2f} |"
                )
            if len(results) > 1:
                pooled = summary(
                    [x / 1e6 for r in results for x in r[scenario]["lateness_us"]],
                    sum(r[scenario]["seconds"] for r in results),
                )
                lines.append(
                    f"| {variant} | **{scenario}** | **all** | {pooled['seconds']:.2f} "
                    f"| {pooled['ticks']} | **{pooled['p50_ms']:.2f}** "
                    f"| **{pooled['p99_ms']:.2f}** | **{pooled['max_ms']:.2f}** |"
                )
    lines += ["", f"Cancellation of a cold `aload` of {LAYERED} by `asyncio.timeout` once "
              "min(64 MiB, size / 4) arrived:", "",
              "| allocator | run | cancelled after | cancel-to-stop (ms) | resumed from |",
              "|---|---|---:|---:|---:|"]  # fmt: skip
    for variant, results in runs.items():
        for index, result in enumerate(results, 1):
            lines.append(
                f"| {variant} | {index} | {result['cancel_at_bytes'] / MiB:.0f} MiB "
                f"| {result['cancel_to_stop_ms']:.1f} "
                f"| {result.get('resumed_bytes', 0) / MiB:.0f} MiB |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=HERE / "work" / "loop_lag")
    parser.add_argument(
        "--out", default=str(HERE / "results" / "loop_lag.md"), help="'-' for stdout only"
    )
    parser.add_argument("--hugepages", action="store_true", help="add a hugetlb=1 variant")
    parser.add_argument("--client", nargs=2, metavar=("CACHE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        client_main(Path(args.client[0]), args.client[1])
        return
    zoo = build(args.work, args.size_mb)
    load_before = os.getloadavg()[0]
    mirror, url = start_mirror(zoo, args.work)
    runs: dict[str, list[dict[str, Any]]] = {"default": []}
    if args.hugepages:
        runs["hugetlb"] = []
    try:
        for _ in range(args.runs):
            for variant in runs:
                cache = args.work / "cache"
                runs[variant].append(run_client(url, cache, variant == "hugetlb"))
    finally:
        mirror.stop()
    header = (
        f"# Event-loop lag during `aload` ({args.size_mb} MB)\n\n"
        f"Command: `python benchmarks/loop_lag.py --size-mb {args.size_mb} --runs {args.runs}"
        + (" --hugepages" if args.hugepages else "")
        + "`"
        f"  \nMachine: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after the runs (other work on the machine adds lag)\n\n"
    )
    text = header + table(runs, args.size_mb, mirror.kind)
    sys.stdout.write(text)
    if args.out != "-":
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
