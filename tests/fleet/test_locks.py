"""The rules of locks and leftovers in a shared cache (``asynchub._cache.locks``), each shown
with real processes: a lock holder is a child process (``tests/fleet/holder.py``) that the test
stops (SIGSTOP, as Ctrl-Z or a frozen container would) or kills (SIGKILL); downloads go
through the public ``Hub`` against the local mirror. The rules across two mounts of one
GlusterFS volume ("two hosts") are in ``test_locks_gluster.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asynchub import Hub, HubConfig
from asynchub._cache.admin import prune_cache
from asynchub._cache.locks import CacheLock, LockWait, host_tag
from asynchub._config import default_host_id
from asynchub._exceptions import ConfigError
from asynchub._hub.registry import all_sources
from tests.conftest import mirror_config
from tests.fleet.fleetrun import ROOT, final_name, finish_node
from tests.fleet.system import wait_until
from tests.mirror import MirrorServer

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(120)]

NAME, OPSET = "TinyNet", 13


@contextlib.contextmanager
def holding(lock: Path, host: str, lease: float) -> Iterator[subprocess.Popen[str]]:
    """A child process holding ``lock``; killed (after SIGCONT) at the end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fleet.holder", str(lock), host, str(lease)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("held"), line
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(30)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _entry(manifest: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in manifest if e["model"] == NAME and e["opset_version"] == OPSET)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(mirror_root: Path) -> Iterator[MirrorServer]:
    with MirrorServer(mirror_root).running() as server:
        yield server


def _download(server: MirrorServer, cache: Path, **overrides: Any) -> Path:
    hub = Hub(mirror_config(server.url, cache, **overrides))
    try:
        return hub.download(NAME, opset=OPSET)
    finally:
        hub.close()


def test_lock_file_names_its_holder_renews_and_goes_away(tmp_path: Path) -> None:
    path = tmp_path / "f.onnx.lock"
    mine = CacheLock(path, host="node-a", lease=0.2)
    other = CacheLock(path, host="node-b", lease=0.2)
    assert mine.try_acquire()
    try:
        record = json.loads(path.read_bytes())
        assert record["host"] == "node-a" and record["pid"] == os.getpid()
        assert record["started"] is not None and record["token"]
        assert not other.try_acquire()  # flock: another open file description is refused
        holder = other.holder()
        assert holder is not None and holder.pid == os.getpid()
        first = holder.renewed
        wait_until(lambda: (h := other.holder()) is not None and h.renewed > first, "a renewal", 5)
    finally:
        mine.release()
    assert not path.exists(), "a released lock leaves no file"
    assert other.try_acquire()
    other.release()


def test_one_thread_renews_every_lock_held(tmp_path: Path) -> None:
    """Locks held at once are renewed by one thread of the process, each at its own pace;
    the thread ends once none is held."""
    import threading

    locks = [CacheLock(tmp_path / f"f{i}.onnx.lock", host="node-a", lease=0.2) for i in range(5)]
    slow = CacheLock(tmp_path / "slow.onnx.lock", host="node-a", lease=60.0)
    try:
        for lock in (*locks, slow):
            assert lock.try_acquire()
        firsts = [lock.holder() for lock in locks]
        assert all(h is not None for h in firsts)
        renewers = [t for t in threading.enumerate() if t.name.startswith("asynchub-lease")]
        assert len(renewers) == 1
        for lock, first in zip(locks, firsts, strict=True):
            assert first is not None
            wait_until(
                lambda lock=lock, first=first: (h := lock.holder()) is not None
                and h.renewed > first.renewed,
                "a renewal of every lock",
                5,
            )
        held = slow.holder()
        assert held is not None and held.renewed == held.acquired  # not due for 15 s
    finally:
        for lock in (*locks, slow):
            lock.release()
    wait_until(
        lambda: not any(t.name.startswith("asynchub-lease") for t in threading.enumerate()),
        "the renewal thread to end",
        5,
    )


def test_a_forked_child_renews_its_own_locks(tmp_path: Path) -> None:
    """The renewal thread does not survive a fork: the child starts its own for its locks."""
    held = CacheLock(tmp_path / "parent.onnx.lock", host="node-a", lease=0.2)
    assert held.try_acquire()  # the parent's renewal thread runs
    try:
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 once its own lock was renewed
            code = 1
            try:
                mine = CacheLock(tmp_path / "child.onnx.lock", host="node-a", lease=0.2)
                if mine.try_acquire():
                    first = mine.holder()
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline and first is not None:
                        now = mine.holder()
                        if now is not None and now.renewed > first.renewed:
                            code = 0
                            break
                        time.sleep(0.02)
                    mine.release()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child's lock was never renewed"
    finally:
        held.release()


def test_dead_holder_on_this_host_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "f.onnx.lock"
    with holding(path, "node-a", 0.2) as proc:
        waiter = CacheLock(path, host="node-a", lease=0.2)
        assert not waiter.try_acquire()
        assert LockWait(waiter, name="f", timeout=None).verdict() is None  # alive, renewing
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert json.loads(path.read_bytes())["pid"] == proc.pid  # the dead holder's record stays
    assert waiter.try_acquire()
    try:
        assert json.loads(path.read_bytes())["pid"] == os.getpid()
    finally:
        waiter.release()


def test_stopped_holder_on_this_host_does_not_make_a_download_wait(
    served: MirrorServer,
    zoo_manifest: list[dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asynchub")
    entry = _entry(zoo_manifest)
    cache = tmp_path / "cache"
    final = final_name(cache, entry)
    final.parent.mkdir(parents=True)
    # A long lease: the process state (T in /proc), not the lease, tells it is stopped.
    with holding(final.with_name(final.name + ".lock"), default_host_id(), 60) as proc:
        os.kill(proc.pid, signal.SIGSTOP)
        path = _download(served, cache, lock_lease=60.0, lock_timeout=None)
        assert _sha(path) == entry["metadata"]["model_sha"]
    text = caplog.text
    assert f"held by process {proc.pid} on {default_host_id()}" in text
    assert f"process {proc.pid} on this host, is stopped" in text
    assert "downloading it in parallel" in text


def test_holder_on_another_host_that_stops_renewing_is_passed_after_the_lease(
    served: MirrorServer,
    zoo_manifest: list[dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asynchub")
    entry = _entry(zoo_manifest)
    cache = tmp_path / "cache"
    final = final_name(cache, entry)
    final.parent.mkdir(parents=True)
    with holding(final.with_name(final.name + ".lock"), "elsewhere", 0.5) as proc:
        os.kill(proc.pid, signal.SIGSTOP)
        start = time.monotonic()
        path = _download(served, cache, host_id="here", lock_lease=0.5, lock_timeout=None)
        waited = time.monotonic() - start
        assert _sha(path) == entry["metadata"]["model_sha"]
    assert waited >= 0.5, "it went on before the lease ran out"
    assert f"held by process {proc.pid} on elsewhere" in caplog.text
    assert "has not renewed its lease" in caplog.text


def test_waiter_gives_up_on_a_live_holder_after_the_lock_timeout(
    served: MirrorServer,
    zoo_manifest: list[dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asynchub")
    entry = _entry(zoo_manifest)
    cache = tmp_path / "cache"
    final = final_name(cache, entry)
    final.parent.mkdir(parents=True)
    with holding(final.with_name(final.name + ".lock"), "elsewhere", 0.2):
        path = _download(served, cache, host_id="here", lock_lease=5.0, lock_timeout=0.8)
        assert _sha(path) == entry["metadata"]["model_sha"]
    assert "(the lock timeout)" in caplog.text
    assert "has not renewed" not in caplog.text  # it did renew all along


@pytest.mark.parametrize("use_locks", [True, False], ids=["locks", "no-locks"])
def test_only_partials_of_gone_writers_are_taken_or_removed(
    served: MirrorServer,
    zoo_manifest: list[dict[str, Any]],
    tmp_path: Path,
    use_locks: bool,
) -> None:
    entry = _entry(zoo_manifest)
    cache = tmp_path / "cache"
    final = final_name(cache, entry)
    final.parent.mkdir(parents=True)
    here = "here"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        planted = {
            "live": final.with_name(f"{final.name}.{here}-{sleeper.pid}-aaaa0001.partial"),
            "fresh-other-host": final.with_name(f"{final.name}.there-123-aaaa0002.partial"),
            "old-other-host": final.with_name(f"{final.name}.there-124-aaaa0003.partial"),
            "dead": final.with_name(f"{final.name}.{here}-{dead_pid()}-aaaa0004.partial"),
        }
        for name, path in planted.items():
            path.write_bytes(name.encode())
        an_hour_ago = time.time() - 3600
        os.utime(planted["old-other-host"], (an_hour_ago, an_hour_ago))
        path = _download(served, cache, host_id=here, lock_lease=30.0, use_locks=use_locks)
        assert _sha(path) == entry["metadata"]["model_sha"]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert planted["live"].read_bytes() == b"live"
    assert planted["fresh-other-host"].read_bytes() == b"fresh-other-host"
    assert not planted["old-other-host"].exists()
    assert not planted["dead"].exists()
    assert not final.with_name(final.name + ".lock").exists()


@pytest.mark.parametrize("umask", ["002", "077"])
def test_manifest_cache_honours_the_umask(served: MirrorServer, tmp_path: Path, umask: str) -> None:
    cmd_home = tmp_path / f"home-{umask}"
    node = _start_with(cmd_home, served.url, {"umask": umask})
    result = finish_node(node, timeout=60)
    assert result["errors"] == []
    manifests = list((cmd_home / "hub" / "_manifests").rglob("ONNX_HUB_MANIFEST.json*"))
    assert manifests, "no manifest cached"
    expected = 0o666 & ~int(umask, 8)
    for path in manifests:
        assert path.stat().st_mode & 0o777 == expected, (path, oct(path.stat().st_mode))


def _start_with(home: Path, base_url: str, extra: dict[str, Any]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHUB_")}
    env.update(ONNX_HOME=str(home), ASYNCHUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT))
    args = {"base_url": base_url, "jobs": [[NAME, OPSET]], **extra}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fleet.child", json.dumps(args)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_manifest_tmp_files_of_killed_writers_are_removed(
    served: MirrorServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _download(served, cache)
    manifest = next((cache / "_manifests").rglob("ONNX_HUB_MANIFEST.json"))
    host = host_tag(default_host_id())
    dead = manifest.with_name(f".{manifest.name}.{host}-{dead_pid()}-0badcafe.tmp")
    live = manifest.with_name(f".{manifest.name}.{host}-{os.getpid()}-0badcaff.tmp")
    dead.write_bytes(b"half a manifest")
    live.write_bytes(b"being written")
    report = prune_cache(cache, all_sources())
    assert dead in [path for path, _why, _n in report.removed]
    assert not dead.exists()
    assert live.exists(), "a live writer's temporary file was removed"
    # The next manifest write removes them too (here: one left by another dead writer).
    dead.write_bytes(b"half a manifest")
    served.set_file(
        "onnx/models/main/ONNX_HUB_MANIFEST.json",
        (served.root / "onnx/models/main/ONNX_HUB_MANIFEST.json").read_bytes() + b"\n",
    )
    hub = Hub(mirror_config(served.url, cache))
    try:
        hub.list_models()  # revalidates the manifest: a new one is stored
    finally:
        hub.close()
    assert not dead.exists()
    assert live.exists()


def test_lock_settings_from_the_environment() -> None:
    env = {
        "ASYNCHUB_USE_LOCKS": "0",
        "ASYNCHUB_HOST_ID": "node-7",
        "ASYNCHUB_LOCK_LEASE": "12.5",
        "ASYNCHUB_LOCK_TIMEOUT": "0",
    }
    config = HubConfig.from_env(env)
    assert (config.use_locks, config.host_id) == (False, "node-7")
    assert (config.lock_lease, config.lock_timeout) == (12.5, None)
    assert HubConfig.from_env({}).host_id == os.uname().nodename  # the initial pid namespace
    assert HubConfig.from_env({}, lock_lease=3.0).lock_lease == 3.0
    with pytest.raises(ConfigError, match="ASYNCHUB_LOCK_LEASE"):
        HubConfig.from_env({"ASYNCHUB_LOCK_LEASE": "a minute"})
    with pytest.raises(ConfigError, match="ASYNCHUB_USE_LOCKS"):
        HubConfig.from_env({"ASYNCHUB_USE_LOCKS": "maybe"})
    with pytest.raises(ConfigError, match="lock_lease"):
        HubConfig(lock_lease=0)


def test_default_host_id_tells_containers_sharing_a_host_name_apart() -> None:
    """In another pid namespace (a container with host networking) the pids of this host's
    processes mean nothing: the default host id says which namespace it is."""
    if subprocess.run(["unshare", "--help"], capture_output=True).returncode != 0:
        pytest.skip("unshare(1) is not available")
    code = "from asynchub._config import default_host_id; print(default_host_id())"
    inside = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", code],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    if inside.returncode != 0:
        pytest.skip(f"cannot create a pid namespace here: {inside.stderr.strip()[-200:]}")
    name = inside.stdout.strip()
    assert name.startswith(os.uname().nodename + ":") and name != default_host_id()
