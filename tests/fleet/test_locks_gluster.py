"""Lock and leftover rules across two mounts of one GlusterFS volume ("two hosts").

Each mount plays a machine with its own ``host_id``: a holder on one cannot be judged by its
pid from the other, only by its lease; a partial left by a killed process of one is adopted
by the other never (another machine's page cache may hold stale pages of it), and deleted
once it has not been touched for ``2 * lock_lease``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from asynchub import Hub
from asynchub._cache.admin import prune_cache
from asynchub._cache.locks import CacheLock
from asynchub._hub.registry import all_sources
from tests.conftest import mirror_config
from tests.fleet.fleetrun import CHUNK, final_name, finish_node, start_node
from tests.fleet.system import GlusterVolume, wait_until
from tests.fleet.test_locks import holding
from tests.mirror import MirrorServer

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(900)]

LEASE = 1.0


def _homes(gluster: GlusterVolume) -> tuple[Path, Path]:
    name = f"locks-{secrets.token_hex(4)}"
    (gluster.mounts[0] / name).mkdir()
    return gluster.mounts[0] / name, gluster.mounts[1] / name


def _load(server: MirrorServer, cache: Path, entry: dict[str, Any], **overrides: Any) -> Path:
    config = mirror_config(server.url, cache, chunk_size=CHUNK, min_split_size=CHUNK, **overrides)
    hub = Hub(config)
    try:
        return hub.download(entry["model"], opset=entry["opset_version"])
    finally:
        hub.close()


def test_lock_spans_mounts_and_a_stopped_holder_there_is_passed_after_its_lease(
    gluster: GlusterVolume,
    fleet_mirror_root: Path,
    fleet_manifest: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asynchub")
    home_a, home_b = _homes(gluster)
    entry = fleet_manifest[0]
    final_a, final_b = final_name(home_a / "hub", entry), final_name(home_b / "hub", entry)
    final_a.parent.mkdir(parents=True)
    lock_a = final_a.with_name(final_a.name + ".lock")
    lock_b = final_b.with_name(final_b.name + ".lock")
    with holding(lock_a, "node-a", LEASE) as proc:
        assert not CacheLock(lock_b, host="node-b", lease=LEASE).try_acquire()
        os.kill(proc.pid, signal.SIGSTOP)
        with MirrorServer(fleet_mirror_root).running() as server:
            path = _load(server, home_b / "hub", entry, host_id="node-b", lock_lease=LEASE)
        assert path == final_b
        assert _sha_in_new_process(final_a) == entry["metadata"]["model_sha"]
        assert _sha_in_new_process(final_b) == entry["metadata"]["model_sha"]
    assert f"held by process {proc.pid} on node-a" in caplog.text
    assert "has not renewed its lease" in caplog.text


def _kill_mid_download(
    server: MirrorServer, home: Path, entry: dict[str, Any], config: dict[str, Any]
) -> Path:
    """Start a node on ``home`` and SIGKILL it once its resume state lists two chunks; the
    partial it left."""
    final = final_name(home / "hub", entry)
    proc = start_node(home, server.url, [[entry["model"], entry["opset_version"]]], config)

    def saved_chunks() -> bool:
        for state in final.parent.glob(final.name + ".*.partial.json"):
            try:
                finished = json.loads(state.read_text())["finished"]
            except (OSError, ValueError, KeyError):
                continue
            if len(finished) >= 2:
                return True
        return False

    try:
        wait_until(saved_chunks, "two chunks of resume state", 60)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    partials = list(final.parent.glob(final.name + ".*.partial"))
    assert len(partials) == 1, partials
    return partials[0]


NODE_A = {"host_id": "node-a", "lock_lease": LEASE, "state_interval": CHUNK // 4}


def test_partial_of_a_killed_process_is_resumed_on_its_own_host(
    gluster: GlusterVolume,
    fleet_mirror_root: Path,
    fleet_manifest: list[dict[str, Any]],
) -> None:
    home_a, home_b = _homes(gluster)
    entry = fleet_manifest[1]
    size = entry["metadata"]["model_bytes"]
    glob = "*" + PurePosixPath(entry["model_path"]).name
    with MirrorServer(fleet_mirror_root, rate_limit=512 * 1024).running() as server:
        partial = _kill_mid_download(server, home_a, entry, NODE_A)
        assert partial.name.split(".")[-2].startswith("node_a-")
        before = server.served_bytes(glob)
        again = start_node(home_a, server.url, [[entry["model"], entry["opset_version"]]], NODE_A)
        assert finish_node(again, timeout=120)["errors"] == []
        fetched = server.served_bytes(glob) - before
    assert fetched <= size - 2 * CHUNK, f"not resumed: fetched {fetched} of {size}"
    final_a, final_b = final_name(home_a / "hub", entry), final_name(home_b / "hub", entry)
    assert _sha_in_new_process(final_b) == _sha_in_new_process(final_a)
    assert _sha_in_new_process(final_a) == entry["metadata"]["model_sha"]
    assert not list(final_a.parent.glob(final_a.name + ".*")), "leftovers beside the file"


def test_partial_of_a_dead_host_is_left_while_fresh_then_removed_not_resumed(
    gluster: GlusterVolume,
    fleet_mirror_root: Path,
    fleet_manifest: list[dict[str, Any]],
) -> None:
    home_a, home_b = _homes(gluster)
    entry = fleet_manifest[2]
    size = entry["metadata"]["model_bytes"]
    glob = "*" + PurePosixPath(entry["model_path"]).name
    with MirrorServer(fleet_mirror_root, rate_limit=512 * 1024).running() as server:
        partial = _kill_mid_download(server, home_a, entry, NODE_A)
        seen_from_b = home_b / partial.relative_to(home_a)
        left = seen_from_b.read_bytes()
        before = server.served_bytes(glob)
        path = _load(server, home_b / "hub", entry, host_id="node-b", lock_lease=LEASE)
        fetched = server.served_bytes(glob) - before
    # node-b cannot tell whether node-a's writer is alive: while the partial is fresh it is
    # left alone, and it is never continued from another host (stale pages there).
    assert fetched >= size
    assert seen_from_b.read_bytes() == left
    assert _sha_in_new_process(path) == entry["metadata"]["model_sha"]
    assert _sha_in_new_process(final_name(home_a / "hub", entry)) == entry["metadata"]["model_sha"]
    wait_until(
        lambda: time.time() - seen_from_b.stat().st_mtime >= 2 * LEASE + 0.2,
        "the partial to age",
        30,
    )
    report = prune_cache(home_b / "hub", all_sources(), host="node-b", grace=2 * LEASE)
    assert seen_from_b in [p for p, _why, _n in report.removed]
    assert not list(path.parent.glob(path.name + ".*")), "leftovers beside the file"


def _sha_in_new_process(path: Path) -> str:
    """SHA-256 of ``path`` read by a new process (what any program on that mount reads)."""
    code = "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    return out.stdout.strip()
