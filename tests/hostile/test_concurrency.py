"""Row 12: many processes and coroutines fetching overlapping models into one cache.

Processes are real (``tests/hostile/child.py`` through the public API) and share a mirror run
in a thread of this process; the mirror paces every answer so downloads overlap in time. The
checks: every caller gets the same verified bytes at the same final path, each SHA-256 is
published under exactly one file name, no temporary file survives, and with the inter-process
lock on, each file's bytes cross the network exactly once. Everything holds with
``use_locks=False`` too (correctness rests on unique partial names, the final hash and the
atomic rename, not on the lock).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asynchub import AsyncHub
from asynchub._cache.archive import COMPLETE_MARKER
from tests.conftest import REPO_PREFIX, mirror_config
from tests.hostile.helpers import (
    finish_child,
    leftovers,
    many_member_archive,
    sha256,
    start_child,
    with_archive,
    write_manifest,
)
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(120)

PROCESSES = 8
COROUTINES = 50
RATE = 2 * 1024 * 1024


@pytest.fixture
def served(mirror_root: Path) -> Iterator[MirrorServer]:
    with MirrorServer(mirror_root, rate_limit=RATE).running() as server:
        yield server


def _jobs(manifest: list[dict[str, Any]], seed: int, count: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    pairs = [(e["model"], e["opset_version"]) for e in manifest]
    return [rng.choice(pairs) for _ in range(count)]


def _assert_published_once(cache: Path, manifest: list[dict[str, Any]]) -> None:
    """Each SHA-256 of the manifest names at most one file in the cache, with those bytes."""
    files = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    files = [p for p in files if "_manifests" not in p.parts]
    shas = {e["metadata"]["model_sha"] for e in manifest}
    by_sha: dict[str, list[Path]] = {}
    for path in files:
        prefix = path.name.split("_", 1)[0]
        assert prefix in shas, f"unexpected file in the cache: {path}"
        by_sha.setdefault(prefix, []).append(path)
    for sha, paths in by_sha.items():
        assert len(paths) == 1, f"{sha} published {len(paths)} times: {paths}"
        assert hashlib.sha256(paths[0].read_bytes()).hexdigest() == sha
    assert leftovers(cache) == []


@pytest.mark.parametrize("use_locks", [True, False], ids=["locks", "no-locks"])
def test_eight_processes_of_fifty_coroutines(
    use_locks: bool,
    served: MirrorServer,
    zoo_manifest: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    procs = [
        start_child(
            "load",
            {
                "base_url": served.url,
                "cache_dir": str(cache),
                "jobs": _jobs(zoo_manifest, seed, COROUTINES),
                "parse": seed % 2 == 0,
                "config": {"use_locks": use_locks},
            },
        )
        for seed in range(PROCESSES)
    ]
    runs = [finish_child(proc, timeout=100) for proc in procs]
    answers: dict[str, set[str]] = {}
    for run in runs:
        assert run.returncode == 0 and run.result is not None, run.stderr[-3000:]
        assert run.result["errors"] == [], run.result["errors"]
        for key, values in run.result["results"].items():
            answers.setdefault(key, set()).update(values)
    expected = {f"{e['model']}:{e['opset_version']}": e for e in zoo_manifest}
    for key, values in answers.items():
        assert len(values) == 1, f"{key}: callers saw different files {values}"
        path, digest = next(iter(values)).split("|")
        assert digest == expected[key]["metadata"]["model_sha"]
        assert Path(path).name.startswith(digest + "_")
    _assert_published_once(cache, zoo_manifest)
    if use_locks:
        for key in answers:
            raw = expected[key]
            glob = "*/" + raw["model_path"].rsplit("/", 1)[1]
            size = raw["metadata"]["model_bytes"]
            assert served.served_bytes(glob) == size, f"{key} crossed the network more than once"


@pytest.mark.parametrize("use_locks", [True, False], ids=["locks", "no-locks"])
async def test_fifty_coroutines_over_separate_hubs(
    use_locks: bool, mirror: MirrorServer, zoo_manifest: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Fifty coroutines spread over five hubs (no shared in-flight table between hubs)."""
    mirror.rate_limit = RATE
    config = mirror_config(mirror.url, tmp_path / "cache", use_locks=use_locks)
    jobs = _jobs(zoo_manifest, 99, COROUTINES)
    found: dict[tuple[str, int], set[tuple[Path, str]]] = {}

    async def one(hub: AsyncHub, model: str, opset: int) -> None:
        path = await hub.download(model, opset=opset)
        data = await anyio.Path(path).read_bytes()
        found.setdefault((model, opset), set()).add((path, sha256(data)))

    hubs = [AsyncHub(config) for _ in range(5)]
    try:
        async with anyio.create_task_group() as group:
            for index, (model, opset) in enumerate(jobs):
                group.start_soon(one, hubs[index % len(hubs)], model, opset)
    finally:
        for hub in hubs:
            await hub.aclose()
    for (model, opset), values in found.items():
        raw = next(e for e in zoo_manifest if e["model"] == model and e["opset_version"] == opset)
        assert values == {(values.copy().pop()[0], raw["metadata"]["model_sha"])}
    _assert_published_once(config.cache_dir, zoo_manifest)


@pytest.mark.parametrize("use_locks", [True, False], ids=["locks", "no-locks"])
def test_two_processes_extract_the_same_test_data(
    use_locks: bool,
    served: MirrorServer,
    zoo_manifest: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    raw = next(e for e in zoo_manifest if e["model"] == "TinyNet" and e["opset_version"] == 13)
    model = (served.root / REPO_PREFIX / raw["model_path"]).read_bytes()
    blob = many_member_archive(model, 300)
    rel = "validated/vision/classification/tinynet/model/tinynet-13-race.tar.gz"
    served.set_file(f"{REPO_PREFIX}/{rel}", blob)
    write_manifest(served, [with_archive(raw, rel, blob)])
    cache = tmp_path / "cache"
    args = {
        "base_url": served.url,
        "cache_dir": str(cache),
        "model": "TinyNet",
        "opset": 13,
        "test_data": True,
        "config": {"use_locks": use_locks},
    }
    runs = [finish_child(p, timeout=100) for p in [start_child("fetch", args) for _ in range(2)]]
    paths = set()
    for run in runs:
        assert run.result is not None and run.result["error"] is None, (run.result, run.stderr)
        paths.add(run.result["path"])
    assert len(paths) == 1
    folder = Path(paths.pop())
    assert (folder.parent / COMPLETE_MARKER).is_file()
    assert (folder / "model.onnx").read_bytes() == model
    extras = list((folder / "test_data_set_0").iterdir())
    assert len(extras) == 300
    assert leftovers(cache) == []
    if use_locks:
        assert served.served_bytes("*tinynet-13-race.tar.gz") == len(blob)
