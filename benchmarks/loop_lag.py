"""Event-loop lag while asynchub loads a large model, and how fast cancellation stops it.

    python benchmarks/loop_lag.py                 # 256 MB model, 3 runs, writes the table
    python benchmarks/loop_lag.py --size-mb 64 --runs 1 --out -

A ticker coroutine asks to wake every 5 ms; its *lateness* (actual minus planned wake-up) is
what every other request of a service would wait while asynchub works. Two models of the
same size: ``LayerNet``, 16 layers of 16 MiB weights (how real networks are laid out), and
``LagNet``, one weight tensor of the whole size (the worst case for protobuf, which
copies a tensor in one GIL-holding step). Scenarios, each run in a fresh client process (so
no warm allocator or page state carries over):

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
:class:`asynchub._demo.static_server.StaticMirror` in its own process (``sendfile``), so it never
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
LAYERS = 16
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
    from asynchub import AsyncHub, HubConfig, ProgressEvent

    out: dict[str, Any] = {}
    await hub.alist_models()
    for name in (LAYERED, MODEL):
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

    zoo = work / f"zoo-{size_mb}"
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
    """An MLP of LAYERS square float32 layers, ``size_mb`` MB of weights in all."""
    import hashlib

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    width = int((size_mb * MiB / LAYERS / 4) ** 0.5)
    rng = np.random.default_rng(0)
    nodes, weights, current = [], [], "data"
    for layer in range(LAYERS):
        weight = rng.random((width, width), dtype=np.float32) - np.float32(0.5)
        weights.append(numpy_helper.from_array(weight / np.float32(width), f"w{layer}"))
        out = "scores" if layer == LAYERS - 1 else f"h{layer}"
        nodes.append(helper.make_node("MatMul", [current, f"w{layer}"], [f"m{layer}"]))
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "layernet",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", width])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    rel = "validated/lag/layernet/model/layernet-13.onnx"
    target = zoo / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    target.write_bytes(data)
    port = {"name": "data", "shape": ["batch", width], "type": "tensor(float)"}
    return {
        "model": LAYERED,
        "model_path": rel,
        "onnx_version": "1.14",
        "opset_version": 13,
        "metadata": {
            "model_sha": hashlib.sha256(data).hexdigest(),
            "model_bytes": len(data),
            "tags": ["lag"],
            "io_ports": {"inputs": [port], "outputs": [{**port, "name": "scores"}]},
        },
    }


def start_mirror(root: Path) -> tuple[subprocess.Popen[str], str]:
    code = (
        "import sys; from asynchub._demo.static_server import StaticMirror\n"
        "m = StaticMirror(sys.argv[1]); m.start(); print(m.url, flush=True)\n"
        "sys.stdin.read(); m.stop()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError("the mirror process did not start")
    return proc, url


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


def table(runs: dict[str, list[dict[str, Any]]], size_mb: int) -> str:
    lines = [
        f"Models: {LAYERED} ({LAYERS} initializers, {size_mb} MB in all) and {MODEL} (one "
        f"{size_mb} MB initializer); local mirror (StaticMirror, own process). Ticker period "
        "5 ms. Lateness = actual - planned wake-up.",
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
    proc, url = start_mirror(zoo)
    runs: dict[str, list[dict[str, Any]]] = {"default": []}
    if args.hugepages:
        runs["hugetlb"] = []
    try:
        for _ in range(args.runs):
            for variant in runs:
                cache = args.work / "cache"
                runs[variant].append(run_client(url, cache, variant == "hugetlb"))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    header = (
        f"# Event-loop lag during `aload` ({args.size_mb} MB)\n\n"
        f"Command: `python benchmarks/loop_lag.py --size-mb {args.size_mb} --runs {args.runs}"
        + (" --hugepages" if args.hugepages else "")
        + "`"
        f"  \nMachine: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after the runs (other work on the machine adds lag)\n\n"
    )
    text = header + table(runs, args.size_mb)
    sys.stdout.write(text)
    if args.out != "-":
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
