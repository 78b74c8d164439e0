"""A fleet run: N node processes per mount sharing one cache, some SIGKILLed mid-download.

:func:`run_fleet` starts ``per_mount`` processes (``tests/fleet/child.py``) on each mount of a
shared directory, every one loading two of the models (so each model is wanted by several
processes on both "hosts"), kills ``kills`` of them while they download, starts the killed
ones again and collects every result. "Mid-download" is detected, not timed: a process is
killed when it owns a partial file (its pid is in the partial's name) and the mirror's byte
counter for that file has moved by at least one chunk since the partial appeared, while
bytes of it are still missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tests.mirror import MirrorServer

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 256 * 1024
#: Each mount plays one machine (``ASYNCHUB_HOST_ID``), as each machine of a fleet has its own.
HOSTS = ("node-a", "node-b")
_PARTIAL_PID = re.compile(r"\.(?:[A-Za-z0-9_.-]*?-)?(\d+)-[0-9a-f]+\.partial$")


def final_name(cache: Path, entry: dict[str, Any]) -> Path:
    """Where a model lands in a cache (onnx.hub's layout: ``<dirs>/<sha>_<basename>``)."""
    rel = PurePosixPath(entry["model_path"])
    return cache.joinpath(*rel.parent.parts, f"{entry['metadata']['model_sha']}_{rel.name}")


def partial_owner(name: str) -> int | None:
    match = _PARTIAL_PID.search(name)
    return int(match.group(1)) if match else None


@dataclass
class Node:
    mount: int
    jobs: list[list[Any]]
    proc: subprocess.Popen[str]
    killed: bool = False


@dataclass
class FleetRun:
    """What happened: results per finished process, kills, bytes served per model file."""

    results: list[dict[str, Any]] = field(default_factory=list)
    killed_bytes: dict[str, int] = field(default_factory=dict)  # model path -> served at kill
    kills: int = 0
    killed_pids: list[tuple[int, int]] = field(default_factory=list)  # (mount, pid)
    served: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def start_node(
    home: Path,
    base_url: str | None,
    jobs: list[list[Any]],
    config: dict[str, Any],
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """A node process loading ``jobs`` into ``home``; URLs from ``base_url`` (a mirror) or,
    when it is None, from ``extra_env`` (``ASYNCHUB_MANIFEST_URL``/``ASYNCHUB_FILE_URLS``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHUB_")}
    env.update(
        ONNX_HOME=str(home),
        ASYNCHUB_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra_env or {})
    env.pop("XDG_CACHE_HOME", None)
    args = {"base_url": base_url, "jobs": jobs, "config": config}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fleet.child", json.dumps(args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_node(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"node {proc.pid} exited {proc.returncode}: {err[-2000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"node {proc.pid} printed no result: {out[-500:]} {err[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["pid"] = proc.pid
    return result


def run_fleet(
    server: MirrorServer,
    homes: tuple[Path, Path],
    manifest: list[dict[str, Any]],
    *,
    per_mount: int = 3,
    kills: int = 2,
    config: dict[str, Any] | None = None,
    kill_timeout: float = 60.0,
) -> FleetRun:
    config = config or {}
    run = FleetRun()
    models = [[e["model"], e["opset_version"]] for e in manifest]
    by_dir: dict[Path, dict[str, Any]] = {}
    for entry in manifest:
        final = final_name(homes[0] / "hub", entry)
        by_dir[final] = entry
    t0 = time.monotonic()
    nodes: list[Node] = []
    for index in range(per_mount * 2):
        mount = index % 2
        jobs = [models[index % len(models)], models[(index + 1) % len(models)]]
        nodes.append(Node(mount, jobs, start_node(homes[mount], server.url, jobs, config,
                                                  {"ASYNCHUB_HOST_ID": HOSTS[mount]})))  # fmt: skip
    first_seen: dict[tuple[int, str], int] = {}
    deadline = time.monotonic() + kill_timeout
    while run.kills < kills and time.monotonic() < deadline:
        live = {n.proc.pid: n for n in nodes if not n.killed and n.proc.poll() is None}
        if not live:
            break
        for final, entry in by_dir.items():
            glob = "*" + PurePosixPath(entry["model_path"]).name
            size = entry["metadata"]["model_bytes"]
            try:
                names = os.listdir(final.parent)
            except OSError:
                continue
            for name in names:
                if not name.startswith(final.name + ".") or not name.endswith(".partial"):
                    continue
                pid = partial_owner(name)
                if pid not in live:
                    continue
                served = server.served_bytes(glob)
                key = (pid, name)
                start = first_seen.setdefault(key, served)
                if served - start >= CHUNK and served - start < size - CHUNK:
                    os.kill(pid, signal.SIGKILL)
                    live[pid].proc.wait(30)
                    live[pid].killed = True
                    run.kills += 1
                    run.killed_pids.append((live[pid].mount, pid))
                    path = entry["model_path"]
                    run.killed_bytes[path] = run.killed_bytes.get(path, 0) + served - start
                    del live[pid]
                    break
            if run.kills >= kills:
                break
        time.sleep(0.003)
    restarted: list[Node] = []
    for node in nodes:
        if node.killed:
            node.proc.communicate(timeout=30)
            restarted.append(
                Node(node.mount, node.jobs, start_node(homes[node.mount], server.url,
                                                       node.jobs, config,
                                                       {"ASYNCHUB_HOST_ID": HOSTS[node.mount]}))
            )  # fmt: skip
    for node in [n for n in nodes if not n.killed] + restarted:
        result = finish_node(node.proc, timeout=180)
        result["mount"] = node.mount
        result["jobs"] = node.jobs
        run.results.append(result)
    run.seconds = time.monotonic() - t0
    for entry in manifest:
        run.served[entry["model_path"]] = server.served_bytes(
            "*" + PurePosixPath(entry["model_path"]).name
        )
    return run


def leftovers(root: Path, allowed: set[Path]) -> list[str]:
    """Files under ``root`` other than ``allowed`` final files and cached documents."""
    found: list[str] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "_manifests"] if Path(current) == root else dirs
        for name in files:
            path = Path(current) / name
            if path not in allowed:
                found.append(str(path.relative_to(root)))
    manifests = root / "_manifests"
    for current, _dirs, files in os.walk(manifests):
        for name in files:
            if name.endswith(".tmp") or ".tmp" in name:
                found.append(str((Path(current) / name).relative_to(root)))
    return sorted(found)
