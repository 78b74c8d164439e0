"""Row 10: the disk fails us. ENOSPC during a download and during extraction (a tiny tmpfs in
a private mount namespace, skipped where ``unshare -m`` or ``mount`` is not allowed), and EIO
from ``fsync`` (through the engine's injectable file-writing seam). Each gives a typed error,
no final file, no temporary file, free locks and closed files; the next run, on a larger disk
(the tmpfs is remounted bigger in the same namespace) or a healthy one, succeeds.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asynchub import AsyncHub, CacheError, HubConfig, InsufficientSpaceError
from asynchub._cache.layout import cache_path, lock_path
from tests.hostile.helpers import (
    ROOT,
    leftovers,
    lock_is_free,
    open_files_under,
    sha_file,
    write_manifest,
)
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(90)

KIB = 1024


def _namespaces_work(tmp: Path) -> str | None:
    """None if a private mount namespace with a tmpfs can be made here, else the reason."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = tmp / "probe"
    probe.mkdir()
    try:
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if done.returncode != 0:
        return f"no private tmpfs here: {done.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory: pytest.TempPathFactory) -> None:
    reason = _namespaces_work(tmp_path_factory.mktemp("ns"))
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def served(mirror_root: Path) -> Iterator[MirrorServer]:
    with MirrorServer(mirror_root).running() as server:
        yield server


def _run_in_tmpfs(served: MirrorServer, tmp_path: Path, small: int, **args: Any) -> dict[str, Any]:
    mount = tmp_path / "disk"
    mount.mkdir()
    payload = {
        "base_url": served.url,
        "cache_dir": str(mount / "hub"),
        "mount": str(mount),
        "large": "16m",
        "model": "TinyNet",
        "opset": 13,
        **args,
    }
    script = (
        f"mount -t tmpfs -o size={small} tmpfs {mount} && "
        f"exec {sys.executable} -m tests.hostile.child disk '{json.dumps(payload)}'"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _assert_clean_failure(first: dict[str, Any], *, extracting: bool = False) -> None:
    assert first["error"] == "InsufficientSpaceError", first
    assert "CacheError" in first["mro"] and "OSError" in first["mro"]
    assert "no space left" in first["message"] and "free disk space" in first["message"]
    # while extracting, the verified archive may stay; the extraction target must not exist
    assert first["final_exists"] is extracting
    assert first.get("target_exists", False) is False
    assert first["leftovers"] == [], first["leftovers"]
    assert all(first["locks_free"]), "a lock is still held after the failure"
    assert first["open_files"] == []


@pytest.mark.usefixtures("namespaces")
def test_enospc_while_downloading(
    served: MirrorServer, tmp_path: Path, zoo_manifest: list[dict[str, Any]]
) -> None:
    """Space is reserved when a download starts: a 400 KB model on a 256 KiB disk fails at
    once, before any byte is fetched."""
    result = _run_in_tmpfs(served, tmp_path, 256 * KIB)
    _assert_clean_failure(result["first"])
    second = result["second"]
    raw = next(e for e in zoo_manifest if e["model"] == "TinyNet" and e["opset_version"] == 13)
    size = raw["metadata"]["model_bytes"]
    # only the second run fetched: the first failed before asking for any byte
    assert served.served_bytes("*tinynet-13.onnx") == size
    assert second["error"] is None, second
    assert second["sha"] == raw["metadata"]["model_sha"]
    assert second["leftovers"] == []


@pytest.mark.usefixtures("namespaces")
def test_enospc_while_streaming_a_file_of_unknown_size(
    served: MirrorServer, tmp_path: Path, zoo_manifest: list[dict[str, Any]]
) -> None:
    """Without ``model_bytes`` the size is only learnt from the server's answers: the disk
    fills after the transfer has started."""
    unsized = [dict(e, metadata=dict(e["metadata"])) for e in zoo_manifest]
    for item in unsized:
        item["metadata"].pop("model_bytes", None)
    write_manifest(served, unsized)
    result = _run_in_tmpfs(served, tmp_path, 256 * KIB)
    _assert_clean_failure(result["first"])
    assert served.requests_for("*tinynet-13.onnx"), "the failure came before any request"
    assert result["second"]["error"] is None, result["second"]
    assert result["second"]["leftovers"] == []


@pytest.mark.usefixtures("namespaces")
def test_enospc_while_extracting(
    served: MirrorServer, tmp_path: Path, zoo_manifest: list[dict[str, Any]]
) -> None:
    """The 370 KB archive fits on a 600 KiB disk, its 400 KB of members do not."""
    result = _run_in_tmpfs(served, tmp_path, 600 * KIB, test_data=True)
    first = result["first"]
    _assert_clean_failure(first, extracting=True)
    assert (
        "extract" in first["message"]
        or "staging" in first["message"]
        or "writing" in first["message"]
    ), first["message"]
    second = result["second"]
    assert second["error"] is None, second
    folder = Path(second["path"])
    assert folder.name == "tinynet"
    assert second["leftovers"] == []


async def test_eio_on_fsync_is_typed_and_a_healthy_disk_succeeds(
    hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    """The engine's file-writing seam (``AsyncHub(fsync=...)``) reports EIO when the verified
    file is flushed before its rename: a ``CacheError`` naming the file, nothing published,
    the partial deleted, files closed and the lock free; the next run succeeds."""
    raw = next(e for e in zoo_manifest if e["model"] == "TinyNet" and e["opset_version"] == 13)
    final = cache_path(hub_config.cache_dir, raw["model_path"], raw["metadata"]["model_sha"])
    flushed: list[int] = []

    def failing_fsync(fd: int) -> None:
        flushed.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    async with AsyncHub(hub_config, fsync=failing_fsync) as hub:
        with pytest.raises(CacheError) as caught:
            await hub.download("TinyNet", opset=13)
    assert flushed, "the seam was never called"
    error = caught.value
    assert not isinstance(error, InsufficientSpaceError)
    assert error.errno == errno.EIO and str(final) in str(error)
    assert not final.exists()
    assert leftovers(hub_config.cache_dir) == []
    assert open_files_under(hub_config.cache_dir) == []
    assert lock_is_free(lock_path(final))
    async with AsyncHub(hub_config) as hub:
        path = await hub.download("TinyNet", opset=13)
    assert sha_file(path) == raw["metadata"]["model_sha"]
