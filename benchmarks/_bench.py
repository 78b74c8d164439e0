"""Shared pieces of the benchmark run: profiles, the generated zoo, the series runner, limits.

A *series* is one tool measured ``n`` times in fresh processes; every run starts from the same
state (outputs and caches deleted, dirty pages flushed with ``os.sync()``, all outside the
timed region). The series of a scenario run in rounds (:func:`run_rounds`: each round runs
every tool once), so a slow spell of the machine is shared by the tools compared. Numbers are
reported as median with min-max.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _peers
from _peers import Run, measure

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
GiB = 1024 * MiB
REPO = "bench/zoo:main"


@dataclass(frozen=True)
class Profile:
    name: str
    big_bytes: int
    bulk_count: int
    bulk_lo: int
    bulk_hi: int
    bulk_total: int
    small_bytes: int
    repeats: int
    #: quick mode: a tool whose first run took longer than this is not repeated
    slow_cutoff: float | None
    sweep_connections: tuple[int, ...]
    sweep_chunks: tuple[int, ...]
    sweep_repeats: int
    rate_limit: int = 25_000_000
    latency: float = 0.020
    bulk_jobs: int = 16
    #: scenario F: a mid-size model fetched with the ``asynchub download`` command
    mid_bytes: int = 128 * MiB
    #: the connection budget asynchub is run with (the network floor of a capped mirror is
    #: ``size / (rate_limit * max_connections)``)
    max_connections: int = 40

    def describe(self) -> str:
        if self.name == "operator":
            return f"repeats {self.repeats}"
        extra = (f"; runs slower than {self.slow_cutoff:g} s are not repeated"
                 if self.slow_cutoff else "")
        return (f"profile **{self.name}**: big model {self.big_bytes / MiB:.0f} MiB, "
                f"{self.bulk_count} bulk models {self.bulk_lo / 1e6:g}-{self.bulk_hi / 1e6:g} MB "
                f"({self.bulk_total / MiB:.0f} MiB), repeats {self.repeats}{extra}")


QUICK = Profile("quick", 256 * MiB, 60, 500_000, 16_000_000, 256 * MiB, 30_000, 3, 8.0,
                (1, 2, 4, 8, 16, 32), (4 * MiB, 16 * MiB), 1)
FULL = Profile("full", GiB, 60, 1_000_000, 40_000_000, GiB, 30_000, 3, None,
               (1, 2, 4, 8, 16, 32, 40), (4 * MiB, 16 * MiB), 3, mid_bytes=512 * MiB)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- the zoo
def bulk_sizes(count: int, lo: int, hi: int, total: int) -> list[int]:
    """``count`` sizes from ``lo`` to ``hi`` (``lo + (hi-lo) * x**p``) summing to ~``total``;
    shuffled with a fixed seed so the manifest order is not sorted by size."""
    def sizes(p: float) -> list[int]:
        return [int(lo + (hi - lo) * (i / max(count - 1, 1)) ** p) for i in range(count)]

    low, high = 0.05, 50.0
    for _ in range(60):
        mid = (low + high) / 2
        if sum(sizes(mid)) > total:
            low = mid
        else:
            high = mid
    result = sizes((low + high) / 2)
    random.Random(0).shuffle(result)
    return result


def zoo_spec(profile: Profile) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = [
        {"name": "BenchBig", "opset": 13, "tags": ["bench-big"], "size": profile.big_bytes},
        {"name": "BenchSmall", "opset": 13, "tags": ["bench-small"], "size": profile.small_bytes},
        {"name": "BenchMid", "opset": 13, "tags": ["bench-mid"], "size": profile.mid_bytes},
    ]
    sizes = bulk_sizes(profile.bulk_count, profile.bulk_lo, profile.bulk_hi, profile.bulk_total)
    spec += [{"name": f"Bulk-{i:02d}", "opset": 13, "tags": ["bench-bulk"], "size": size}
             for i, size in enumerate(sizes)]
    return spec


def build_zoo(root: Path, spec: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Build (or reuse) the zoo at ``root``; returns the manifest."""
    stamp = root / "bench-spec.json"
    manifest_file = root / "ONNX_HUB_MANIFEST.json"
    if stamp.exists() and manifest_file.exists() and json.loads(stamp.read_text()) == spec:
        manifest: list[dict[str, Any]] = json.loads(manifest_file.read_text())
        if all((root / e["model_path"]).stat().st_size == e["metadata"]["model_bytes"]
               for e in manifest if (root / e["model_path"]).exists()) and all(
                (root / e["model_path"]).exists() for e in manifest):
            return manifest
    from asynchub._demo.zoo import ZooModel
    from asynchub._demo.zoo import build_zoo as _build

    shutil.rmtree(root, ignore_errors=True)
    log(f"building the zoo in {root} ({sum(s['size'] for s in spec) / MiB:.0f} MiB) ...")
    t0 = time.perf_counter()
    models = [ZooModel(s["name"], s["opset"], tuple(s["tags"]), size=s["size"], test_data=False)
              for s in spec]
    manifest = _build(root, models, seed=0)
    stamp.write_text(json.dumps(spec))
    log(f"zoo built in {time.perf_counter() - t0:.1f} s")
    return manifest


def warm(root: Path, manifest: list[dict[str, Any]]) -> float:
    """Read every model of the zoo once, so that it is in the page cache before the first run
    (the mirror would otherwise read from disk during whichever tool runs first in a
    scenario: asynchub, in round one). Returns the seconds it took."""
    t0 = time.perf_counter()
    block = bytearray(8 * MiB)
    for entry in manifest:
        with (root / entry["model_path"]).open("rb", buffering=0) as handle:
            while handle.readinto(block):
                pass
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- series
@dataclass
class Row:
    """One tool in one scenario: lists hold one value per run."""

    tool: str
    wall: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # in-process time, where reported
    cpu: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)  # the mirror's CPU-s, per run
    extra: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.wall)

    def med(self, attr: str = "wall") -> float | None:
        values = getattr(self, attr)
        return statistics.median(values) if values else None

    def add(self, run: Run, requests: int | None = None) -> None:
        self.wall.append(run.wall)
        self.cpu.append(run.cpu)
        self.rss.append(run.rss_mb)
        if "seconds" in run.extra:
            self.seconds.append(float(run.extra["seconds"]))
        if requests is not None:
            self.requests.append(requests)
        self.extra.append(run.extra)

    def fail(self, run: Run, what: str) -> None:
        detail = run.extra.get("error") or run.stderr.strip().splitlines()[-1:] or [""]
        text = detail if isinstance(detail, str) else detail[0]
        self.error = f"{what}: exit {run.returncode}: {text}"[:300]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def combine(first: Row, second: Row, tool: str) -> Row:
    """``first`` followed by ``second`` run for run (e.g. a download then ``sha256sum``)."""
    row = Row(tool, note=second.note, error=first.error or second.error)
    for i in range(min(first.n, second.n)):
        row.wall.append(first.wall[i] + second.wall[i])
        row.cpu.append(first.cpu[i] + second.cpu[i])
        row.rss.append(max(first.rss[i], second.rss[i]))
    return row


def clean(*paths: Path) -> None:
    """Delete ``paths`` and flush dirty pages, so a run does not pay for the last one's."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    os.sync()


def fresh(directory: Path) -> None:
    """``directory`` exists and is empty."""
    clean(directory)
    directory.mkdir(parents=True, exist_ok=True)


@dataclass
class Series:
    """One tool to measure (see :func:`run_rounds`): ``make_cmd(i)`` is the command of run
    ``i``; ``before()`` resets the state before each run, ``after(run)`` checks its outcome (a
    message if it failed); ``sha_pass()`` names the files to verify with ``sha256sum`` after
    each run (a ``+ sha256sum`` row)."""

    tool: str
    make_cmd: Callable[[int], list[str]]
    before: Callable[[], None] | None = None
    after: Callable[[Run], str | None] | None = None
    sha_pass: Callable[[], list[tuple[Path, str]]] | None = None
    repeats: int | None = None
    row: Row = field(init=False)
    sha_row: Row | None = field(init=False)
    stopped: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.row = Row(self.tool)
        self.sha_row = Row(f"{self.tool} + sha256sum") if self.sha_pass else None


def run_rounds(
    series: list[Series],
    *,
    profile: Profile,
    counter: Callable[[], int] | None = None,
    server_cpu: Callable[[], float] | None = None,
    timeout: float = 1800.0,
) -> list[Row]:
    """Measure every series in rounds: round ``i`` runs each tool once, starting one tool
    further along each round. A slow spell of this shared machine (they last tens of seconds
    here) then lands on every tool of a scenario, not only on the one measured while it
    lasted. ``server_cpu()`` (the mirror's CPU-s so far) is read around each run when given.
    Rows come back in the order of ``series``."""
    totals = [s.repeats or profile.repeats for s in series]
    for i in range(max(totals, default=0)):
        for k in range(len(series)):
            index = (i + k) % len(series)
            one = series[index]
            if not one.stopped and i < totals[index]:
                _run_once(one, i, totals[index], profile, counter, server_cpu, timeout)
    rows: list[Row] = []
    for one in series:
        rows.append(one.row)
        if one.sha_row is not None:
            rows.append(combine(one.row, one.sha_row, f"{one.tool} + sha256sum"))
    return rows


def _run_once(one: Series, i: int, total: int, profile: Profile,
              counter: Callable[[], int] | None, server_cpu: Callable[[], float] | None,
              timeout: float) -> None:
    row, sha_row = one.row, one.sha_row
    if one.before:
        one.before()
    start_count = counter() if counter else None
    cmd = one.make_cmd(i)
    server_before = server_cpu() if server_cpu else 0.0
    run = measure(cmd, timeout=timeout)
    server = server_cpu() - server_before if server_cpu else None
    requests = counter() - start_count if counter and start_count is not None else None
    problem = None if run.ok else "run failed"
    if run.ok and one.after:
        problem = one.after(run)
    if problem:
        row.fail(run, problem)
        log(f"  {one.tool}: FAILED ({row.error})")
        one.stopped = True
        return
    row.add(run, requests)
    if server is not None:
        row.server_cpu.append(server)
    if sha_row is not None and one.sha_pass is not None:
        files = one.sha_pass()
        check = measure(_peers.sha256sum_cmd([p for p, _ in files]))
        pairs = [line.split(maxsplit=1) for line in check.stdout.splitlines() if line.strip()]
        got = {path.strip(): digest for digest, path in pairs}
        bad = [p.name for p, sha in files if got.get(str(p)) != sha]
        if check.returncode != 0 or bad:
            sha_row.error = f"sha256sum: {len(bad)} file(s) do not match, e.g. {bad[:1]}"
            row.error = sha_row.error
        sha_row.add(check)
    log(f"  {one.tool}: run {i + 1}/{total} {run.wall:.2f} s wall"
        + (f", {run.extra['seconds']:.3f} s in-process" if "seconds" in run.extra else "")
        + f", {run.rss_mb:.0f} MB RSS" + (f", {requests} requests" if requests else ""))
    if profile.slow_cutoff and i == 0 and run.wall > profile.slow_cutoff and total > 1:
        row.note = f"n=1: slower than {profile.slow_cutoff:g} s (quick profile)"
        one.stopped = True


def run_series(
    tool: str,
    make_cmd: Callable[[int], list[str]],
    *,
    profile: Profile,
    repeats: int | None = None,
    before: Callable[[], None] | None = None,
    after: Callable[[Run], str | None] | None = None,
    counter: Callable[[], int] | None = None,
    server_cpu: Callable[[], float] | None = None,
    sha_pass: Callable[[], list[tuple[Path, str]]] | None = None,
    timeout: float = 1800.0,
) -> list[Row]:
    """Measure one tool ``repeats`` times in a row (:func:`run_rounds` of one series)."""
    return run_rounds([Series(tool, make_cmd, before, after, sha_pass, repeats)],
                      profile=profile, counter=counter, server_cpu=server_cpu, timeout=timeout)


def verify_files(files: list[tuple[Path, str]]) -> str | None:
    """Outside the timed region: each file exists with the expected SHA-256."""
    for path, sha in files:
        if not path.exists():
            return f"{path.name} missing"
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while block := stream.read(8 * MiB):
                digest.update(block)
        if digest.hexdigest() != sha:
            return f"{path.name}: SHA-256 mismatch"
    return None


def sizes_match(files: list[tuple[Path, int]]) -> str | None:
    for path, size in files:
        if not path.exists():
            return f"{path.name} missing"
        if path.stat().st_size != size:
            return f"{path.name}: {path.stat().st_size} bytes, expected {size}"
    return None


# ---------------------------------------------------------------------- limits
_HASH_CODE = (
    "import hashlib, json, sys, time\n"
    "buf = bytearray(8 << 20); view = memoryview(buf); h = hashlib.sha256()\n"
    "t = time.perf_counter()\n"
    "with open(sys.argv[1], 'rb', buffering=0) as f:\n"
    "    while n := f.readinto(buf):\n"
    "        h.update(view[:n])\n"
    "print(json.dumps({'seconds': time.perf_counter() - t}))\n"
)
_WRITE_CODE = (
    "import json, os, sys, time\n"
    "size, path, sync = int(sys.argv[1]), sys.argv[2], sys.argv[3] == '1'\n"
    "block = os.urandom(16 << 20)\n"
    "t = time.perf_counter()\n"
    "with open(path, 'wb', buffering=0) as f:\n"
    "    left = size\n"
    "    while left > 0:\n"
    "        left -= f.write(block[:min(left, len(block))])\n"
    "    if sync:\n"
    "        os.fsync(f.fileno())\n"
    "print(json.dumps({'seconds': time.perf_counter() - t}))\n"
)


@dataclass
class Limit:
    name: str
    seconds: list[float]
    nbytes: int
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """bytes per second"""
        return self.nbytes / self.median


def measure_limits(big_file: Path, work: Path, stream_url: str, repeats: int, *,
                   stream_name: str = "loopback HTTP, one curl stream to /dev/null",
                   stream_bytes: int | None = None) -> dict[str, Limit]:
    """SHA-256 (one core, two cores), disk writes (with and without fsync) and one HTTP
    stream (``curl`` to ``/dev/null``) from ``stream_url``."""
    size = big_file.stat().st_size
    hash_cmd = [sys.executable, "-c", _HASH_CODE, str(big_file)]
    measure(hash_cmd)  # page cache warm-up
    limits: dict[str, Limit] = {}
    limits["sha1"] = Limit("SHA-256, one core (hashlib over the file in page cache)",
                           [measure(hash_cmd).extra["seconds"] for _ in range(repeats)], size)
    two: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        procs = [subprocess.Popen(hash_cmd, stdout=subprocess.DEVNULL) for _ in range(2)]
        for proc in procs:
            proc.wait()
        two.append(time.perf_counter() - start)
    limits["sha2"] = Limit("SHA-256, two cores (two processes hashing at once)", two, 2 * size)
    coreutils = [measure(["sha256sum", str(big_file)]).wall for _ in range(repeats)]
    limits["sha256sum"] = Limit("sha256sum (coreutils) of the file", coreutils, size)
    target = work / "disk-test.bin"
    for key, sync, name in (("disk", "0", "disk write, no fsync"),
                            ("disk_fsync", "1", "disk write + fsync")):
        times = []
        for _ in range(repeats):
            clean(target)
            times.append(measure([sys.executable, "-c", _WRITE_CODE, str(size), str(target),
                                  sync]).extra["seconds"])
        limits[key] = Limit(name, times, size)
    clean(target)
    loop = [_peers.curl_ttfb(stream_url)[1] for _ in range(repeats)]
    limits["loopback"] = Limit(stream_name, loop, stream_bytes or size)
    return limits
