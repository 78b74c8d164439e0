"""``hub.load`` of a large model, asynchub against onnx.hub 1.20.1, in one run.

    python benchmarks/load_overlap.py                    # 1 GiB models, 3 runs each
    python benchmarks/load_overlap.py --size-mb 256 --runs 1 --out -

Two 1 GiB models served by nginx on 127.0.0.1 (``_mirror.MirrorSet``, the ``plain`` port: no
cap, no added latency): ``BenchBig`` (the benchmark suite's model: one weight tensor of the
whole size) and ``LayerBig`` (laid out like a transformer: an embedding table of 1/8 of the
size and 28 layers), read once into the page cache before the first run (as ``run.py`` does
with its zoo: else the first run, an asynchub load, waited for the mirror's disk: 3.2-3.8 s
against 1.6-2.0 s, and 40 s once, right after the test suite had written to the same disk).
Each run is a fresh process with an empty cache that imports the
library *and onnx* first (a caller of ``load`` uses the ``ModelProto``; onnx's import, ~1-2 s
here, is the same for both and not what is compared), then times one call:

* asynchub: ``asynchub.Hub(HubConfig(...)).load(model)`` (download, verify, parse);
* onnx.hub: ``onnx.hub.load(model, silent=True)`` from ``benchmarks/.venv-onnx120`` (made by
  ``setup.sh``), its URLs pointed at the mirror as ``_drive_onnxhub.py`` does.

Reported: the in-process seconds of the call (median of the runs), its ratio to onnx.hub's, and
the asynchub figure split into download (``Hub.download`` in another fresh process) and the
rest (parse after the download, or whatever of it did not overlap).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1024 * 1024
REPO = "bench/zoo:main"
ONNX120 = HERE / ".venv-onnx120" / "bin" / "python"

ASYNCHUB_CHILD = r"""
import json, sys, time
from pathlib import Path
import onnx  # the caller's own import (see the module docstring)
import asynchub
p = json.loads(sys.argv[1])
config = asynchub.HubConfig(cache_dir=Path(p["cache"]), manifest_url=p["manifest_url"],
                            file_urls=(p["file_url"],), trusted_repos=frozenset({"bench/zoo"}),
                            progress_bars=False)
with asynchub.Hub(config) as hub:
    start, cpu = time.perf_counter(), time.process_time()
    if p["op"] == "load":
        model = hub.load(p["model"], repo=p["repo"])
        n = len(model.graph.initializer)
    else:
        hub.download(p["model"], repo=p["repo"])
        n = 0
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu": cpu, "initializers": n}))
"""

ONNXHUB_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
from onnx import hub
from _drive_onnxhub import _patch
p = json.loads(sys.argv[1])
_patch(hub, p["manifest_url"], p["file_url"])
hub.set_dir(p["cache"])
start, cpu = time.perf_counter(), time.process_time()
model = hub.load(p["model"], p["repo"], silent=True)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu": cpu, "initializers": len(model.graph.initializer)}))
"""


def build(work: Path, size_mb: int) -> Path:
    """The two models (rebuilt only when the size changes)."""
    sys.path.insert(0, str(ROOT))
    from asynchub._demo.zoo import ZooModel, build_zoo, write_layered_model

    zoo = work / f"zoo-{size_mb}"
    manifest = zoo / "ONNX_HUB_MANIFEST.json"
    if not manifest.is_file():
        shutil.rmtree(zoo, ignore_errors=True)
        size = size_mb * MiB
        entries = build_zoo(zoo, [ZooModel("BenchBig", 13, ("big",), size=size, test_data=False)])
        entries.append(
            write_layered_model(
                zoo, "LayerBig", embedding_bytes=size // 8, layers=28, layer_bytes=size // 32
            )
        )
        manifest.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return zoo


def run_child(argv: list[str], params: dict[str, Any]) -> dict[str, Any]:
    cache = Path(params["cache"])
    shutil.rmtree(cache, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCHUB_", "ONNX_"))}
    done = subprocess.run(
        [*argv, json.dumps(params), str(HERE)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=HERE / "work" / "load_overlap")
    parser.add_argument(
        "--out", default=str(HERE / "results" / "load_overlap.md"), help="'-' for stdout only"
    )
    parser.add_argument("--machine-as-is", action="store_true",
                        help="do not pause free page reporting and DAMON reclaim (_machine.py)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from _machine import steady

    with steady(not args.machine_as_is) as state:
        _measure(args, state)


def _measure(args: argparse.Namespace, state: str) -> None:
    """Both models, ``args.runs`` times each tool; the table goes to ``args.out``."""
    from _bench import warm
    from _mirror import MirrorSet

    zoo = build(args.work, args.size_mb)
    # the mirror's files in the page cache first (see the module docstring)
    entries = json.loads((zoo / "ONNX_HUB_MANIFEST.json").read_text(encoding="utf-8"))
    warm(zoo, entries)
    load_before = os.getloadavg()[0]
    rows: list[str] = []
    summary: list[dict[str, Any]] = []
    with MirrorSet(zoo, args.work / "mirror", rate_limit=25_000_000, latency=0.0) as mirror:
        endpoint = mirror.plain
        base = {
            "manifest_url": endpoint.manifest_url,
            "file_url": endpoint.file_url,
            "repo": REPO,
            "cache": str(args.work / "cache"),
        }
        for model in ("BenchBig", "LayerBig"):
            times: dict[str, list[float]] = {"asynchub": [], "download": [], "onnx.hub": []}
            cpu: dict[str, list[float]] = {"asynchub": [], "onnx.hub": []}
            for _ in range(args.runs):
                params = {**base, "model": model}
                hub = run_child([sys.executable, "-c", ASYNCHUB_CHILD], {**params, "op": "load"})
                times["asynchub"].append(hub["seconds"])
                cpu["asynchub"].append(hub["cpu"])
                fetched = run_child(
                    [sys.executable, "-c", ASYNCHUB_CHILD], {**params, "op": "download"}
                )
                times["download"].append(fetched["seconds"])
                if ONNX120.exists():
                    peer = run_child([str(ONNX120), "-c", ONNXHUB_CHILD], params)
                    times["onnx.hub"].append(peer["seconds"])
                    cpu["onnx.hub"].append(peer["cpu"])
                    assert peer["initializers"] == hub["initializers"]
            med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
            ratio = med["asynchub"] / med["onnx.hub"] if times["onnx.hub"] else float("nan")
            cpus = {k: statistics.median(v) if v else float("nan") for k, v in cpu.items()}
            tensors = hub["initializers"]
            summary.append({
                "model": model, "asynchub": med["asynchub"], "onnx.hub": med["onnx.hub"],
                "ratio": ratio, "label": f"{tensors} tensor{'s' if tensors != 1 else ''}",
            })
            rows.append(
                f"| {model} | {med['asynchub']:.2f} | {med['download']:.2f} "
                f"| {med['asynchub'] - med['download']:.2f} | {med['onnx.hub']:.2f} "
                f"| **{ratio:.2f}** | {cpus['asynchub']:.2f} | {cpus['onnx.hub']:.2f} "
                f"| {', '.join(f'{t:.2f}' for t in times['asynchub'])} "
                f"| {', '.join(f'{t:.2f}' for t in times['onnx.hub'])} |"
            )
        kind = mirror.kind
    text = (
        f"# `hub.load` of a {args.size_mb} MiB model: asynchub against onnx.hub 1.20.1\n\n"
        f"Command: `python benchmarks/load_overlap.py --size-mb {args.size_mb} "
        f"--runs {args.runs}`  \nMachine: {platform.platform()}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {load_before:.1f} "
        f"before and {os.getloadavg()[0]:.1f} after; {state}; "
        f"mirror: {kind} on 127.0.0.1, no cap.\n\n"
        "In-process seconds of one `load` in a fresh process with an empty cache (onnx "
        "imported before; medians). *download* is `Hub.download` alone (another process), "
        "*rest* = load - download. CPU-s: the calling process's CPU time during the call "
        "(all threads). Target: asynchub / onnx.hub <= 0.7.\n\n"
        "| model | asynchub load (s) | its download (s) | rest (s) | onnx.hub load (s) "
        "| ratio | asynchub CPU-s | onnx.hub CPU-s | asynchub runs | onnx.hub runs |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    sys.stdout.write(text)
    if args.out != "-":
        out = Path(args.out)
        out.write_text(text, encoding="utf-8")
        data = {"size_mb": args.size_mb, "runs": args.runs, "models": summary,
                "date": time.strftime("%Y-%m-%d %H:%M")}
        out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        if out.resolve().parent == (HERE / "results").resolve() and args.size_mb >= 1024:
            import _headline  # the README's headline row of hub.load

            _headline.refresh()


if __name__ == "__main__":
    main()
