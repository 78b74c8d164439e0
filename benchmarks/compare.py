"""asynchub against another revision of itself, run after run, on the benchmark mirror.

    python benchmarks/compare.py --against HEAD~1              # F: 512 MiB, 25 MB/s a connection
    python benchmarks/compare.py --against HEAD~1 --rate 10M --runs 6
    python benchmarks/compare.py --against HEAD~1 --scenario C

A change to the engine is judged against the revision before it. On a shared machine the
speed drifts by more than most changes (the same code measured 0.90 and 1.07 CPU-s for one
512 MiB download 25 minutes apart), so the two revisions run alternately, each run a fresh
process with an empty cache (``_drive_asynchub.py``, as ``run.py`` drives it), and their
medians are compared. Choices:

* **The other revision** is ``git archive <rev> asynchub`` in the work folder, byte-compiled
  like the checkout, put first on ``PYTHONPATH`` (so it wins over the installed checkout).
* **Scenarios** are ``run.py``'s, on the same zoo and mirror (nginx when installed):
  ``A`` 1 GiB without a cap, ``B`` 1 GiB and ``F`` 512 MiB with the cap per connection,
  ``C`` the 60 bulk models with the cap and the latency. ``--rate`` (bytes/s per connection,
  ``M`` is 10^6, ``0`` for none) and ``--latency`` (seconds) change the mirror for a run that
  is not the benchmark's: a cap low enough that the network, not the two cores, is the
  limit shows what waits cost that a CPU-bound run hides.
* **The machine is held steady** (``_machine.steady``) unless ``--machine-as-is``.
* **Reported**, per run and as medians: the in-process seconds (the driver's: the hub and the
  call, not the imports) and the process's CPU seconds (user + system, every thread).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"
SCENARIOS = {"A": ("plain", "BenchBig"), "B": ("capped", "BenchBig"), "C": ("slow", None),
             "F": ("capped", "BenchMid")}  # fmt: skip


def _rate(text: str) -> int:
    """``25M`` -> 25,000,000 (``M`` is 10^6 here, ``Mi`` 2^20)."""
    units = {"Mi": 1 << 20, "Ki": 1 << 10, "M": 10**6, "K": 10**3}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def export(rev: str, into: Path) -> Path:
    """The ``asynchub`` package of ``rev`` under ``into`` (byte-compiled); ``into`` itself."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "asynchub"],
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into / "asynchub")], check=True)
    return into


def one_run(tree: Path, params: dict[str, Any]) -> tuple[float, float]:
    """One download by the ``asynchub`` in ``tree``: (in-process seconds, CPU seconds)."""
    shutil.rmtree(params["cache_dir"], ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHUB_")}
    env["PYTHONPATH"] = os.pathsep.join((str(tree), str(HERE)))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, str(HERE / "_drive_asynchub.py"), json.dumps(params)],
                          env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(params["cache_dir"], ignore_errors=True)
    result: dict[str, Any] = json.loads((done.stdout.strip().splitlines() or ["{}"])[-1])
    if done.returncode != 0 or "seconds" not in result:
        raise RuntimeError(f"the run of {tree} failed: {result or done.stderr[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return float(result["seconds"]), cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    parser.add_argument("--against", default="HEAD", help="git revision to compare with")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="F")
    parser.add_argument("--runs", type=int, default=8, help="runs of each (default 8)")
    parser.add_argument("--rate", type=_rate, help="cap per connection, bytes/s (default 25M)")
    parser.add_argument("--latency", type=float, help="seconds before each answer (C: 0.02)")
    parser.add_argument("--machine-as-is", action="store_true",
                        help="do not pause free page reporting and DAMON reclaim")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import _bench
    from _machine import steady
    from _mirror import MirrorSet

    profile = _bench.FULL
    rate = profile.rate_limit if args.rate is None else args.rate
    latency = profile.latency if args.latency is None else args.latency
    port, model = SCENARIOS[args.scenario]
    if rate <= 0 and port == "capped":
        port = "plain"
    WORK.mkdir(parents=True, exist_ok=True)
    zoo = WORK / f"zoo-{profile.name}"
    manifest = _bench.build_zoo(zoo, _bench.zoo_spec(profile))
    other = export(args.against, WORK / "compare-other")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "asynchub")], check=True)
    trees = {"checkout": ROOT, args.against: other}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    with steady(not args.machine_as_is) as state:
        _bench.warm(zoo, manifest)
        with MirrorSet(zoo, WORK / "compare-mirror", rate or profile.rate_limit, latency) as mirror:
            endpoint = getattr(mirror, port)
            params: dict[str, Any] = {
                "manifest_url": endpoint.manifest_url, "file_urls": [endpoint.file_url],
                "cache_dir": str(WORK / "compare-cache"), "repo": _bench.REPO,
            }  # fmt: skip
            if model is None:
                bulk = [e["model"] for e in manifest if "bench-bulk" in e["metadata"]["tags"]]
                params.update(op="prefetch", models=bulk)
            else:
                params.update(op="download", model=model)
            print(f"{state}; mirror: {mirror.describe()}; scenario {args.scenario} "
                  f"({port}, {rate / 1e6:g} MB/s per connection)", flush=True)  # fmt: skip
            for run in range(args.runs):
                for name, tree in (trees.items() if run % 2 == 0 else reversed(trees.items())):
                    seconds, cpu = one_run(tree, params)
                    times[name].append((seconds, cpu))
                    print(f"{run + 1:>3} {name:<12} {seconds:7.3f} s {cpu:7.3f} CPU-s", flush=True)
    for name, rows in times.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        print(f"{name:<16} median {wall:.3f} s in the process, {cpu:.3f} CPU-s ({len(rows)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
