"""``load`` parses while the file downloads, and still returns only verified models.

The parse follower (:mod:`asynchub._onnx.follow`) is driven here directly by a cursor over a
real model file (the engine's seam: a file descriptor and a cursor whose ``hashed`` prefix
grows), through the engine's seam (``FileJob.follower``) and end to end through ``AsyncHub.load``
(which uses the follower when it has a core to spare) against the local mirror: the model equals
``onnx.load`` of the verified file; a corrupted byte on the mirror raises ``IntegrityError``
and nothing is returned or cached; a file that is served wrong once and right the second
time (the cursor is reset in between) still gives the right model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import onnx
import pytest

from asynchub import AsyncHub, IntegrityError
from asynchub._demo.zoo import write_layered_model
from asynchub._onnx.follow import STEP, ParseFollower
from asynchub._onnx.urls import DEFAULT_REPO, RepoSpec
from tests.conftest import REPO_PREFIX, mirror_config
from tests.mirror import Fault, MirrorServer

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
MODEL = "LayerOverlap"  # 4 MiB embedding + 28 x 1 MiB: several follower steps


@pytest.fixture(scope="module")
def overlap_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("overlap")
    entry = write_layered_model(
        root / REPO_PREFIX, MODEL, embedding_bytes=4 * MiB, layers=28, layer_bytes=1 * MiB
    )
    (root / REPO_PREFIX / "ONNX_HUB_MANIFEST.json").write_text(json.dumps([entry]))
    return root


@pytest.fixture(scope="module")
def entry(overlap_root: Path) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(
        (overlap_root / REPO_PREFIX / "ONNX_HUB_MANIFEST.json").read_text()
    )
    return data[0]


def model_file(root: Path, entry: dict[str, Any]) -> Path:
    return root / REPO_PREFIX / entry["model_path"]


class GrowingCursor:
    """The engine's side of the seam: ``hashed`` bytes of the file are final; ``reset``
    starts a new generation."""

    def __init__(self) -> None:
        self.hashed = 0
        self.generation = 0
        self._moved = anyio.Event()

    def advance(self, hashed: int) -> None:
        self.hashed = hashed
        self._moved.set()
        self._moved = anyio.Event()

    def reset(self) -> None:
        self.generation += 1
        self.advance(0)

    async def moved(self) -> None:
        await self._moved.wait()


async def _drive(follower: ParseFollower, path: Path, steps: list[int | str]) -> None:
    """Run the follower beside a cursor that moves through ``steps`` (``"reset"`` resets)."""
    cursor = GrowingCursor()
    with open(path, "rb") as handle:
        async with anyio.create_task_group() as group:
            group.start_soon(follower.follow, handle.fileno(), cursor)  # type: ignore[arg-type]
            for step in steps:
                await anyio.lowlevel.checkpoint()
                if step == "reset":
                    cursor.reset()
                else:
                    assert isinstance(step, int)
                    cursor.advance(step)
                # let the follower catch up (a bounded poll: it parses a few MiB per step)
                for _ in range(30_000):
                    if follower.pos + STEP > cursor.hashed or follower.failed:
                        break
                    await anyio.sleep(0.001)
            group.cancel_scope.cancel()


async def test_the_follower_parses_before_the_end_and_equals_onnx_load(
    overlap_root: Path, entry: dict[str, Any]
) -> None:
    path = model_file(overlap_root, entry)
    size = path.stat().st_size
    follower = ParseFollower()
    await _drive(follower, path, list(range(0, size, 3 * MiB)))
    # most of the file was merged while it was "downloading"
    assert follower.model is not None and not follower.failed
    assert follower.pos > size - 3 * MiB - STEP
    parsed_early = len(follower.model.graph.initializer)
    assert parsed_early >= 20
    model = await anyio.to_thread.run_sync(follower.finish, path)
    assert model is follower.model  # finished from where it was, not parsed again
    assert model == onnx.load(str(path))
    assert model.SerializeToString() == path.read_bytes()


async def test_a_reset_starts_the_parse_over(overlap_root: Path, entry: dict[str, Any]) -> None:
    path = model_file(overlap_root, entry)
    size = path.stat().st_size
    follower = ParseFollower()
    await _drive(follower, path, [12 * MiB, 20 * MiB, "reset", 10 * MiB, size])
    assert follower.generation == 1 and follower.final_generation == 1
    model = await anyio.to_thread.run_sync(follower.finish, path)
    assert model == onnx.load(str(path))


async def test_a_reset_after_the_last_step_is_not_trusted(
    overlap_root: Path, entry: dict[str, Any], tmp_path: Path
) -> None:
    """The follower saw generation 0; the file was then rewritten (generation 1) and
    verified: ``finish`` must parse the verified file, not reuse the old work."""
    path = model_file(overlap_root, entry)
    stale = tmp_path / "stale.onnx"
    shutil.copyfile(path, stale)
    with open(stale, "r+b") as handle:  # the bytes the follower saw differ from the final ones
        handle.seek(8 * MiB)
        handle.write(b"\x00" * 64)
    follower = ParseFollower()
    cursor = GrowingCursor()
    with open(stale, "rb") as handle:
        async with anyio.create_task_group() as group:
            group.start_soon(follower.follow, handle.fileno(), cursor)  # type: ignore[arg-type]
            cursor.advance(24 * MiB)
            for _ in range(30_000):  # a bounded poll until it parsed past the changed bytes
                if follower.pos >= 16 * MiB:
                    break
                await anyio.sleep(0.001)
            assert follower.model is not None and follower.pos >= 16 * MiB
            cursor.generation += 1  # reset by the engine just before the end
            group.cancel_scope.cancel()
    assert follower.final_generation == 1
    model = await anyio.to_thread.run_sync(follower.finish, path)
    assert model == onnx.load(str(path))
    assert model.SerializeToString() == path.read_bytes()


# ----------------------------------------------------------------------------- end to end
@pytest.fixture
async def overlap_mirror(overlap_root: Path, tmp_path: Path) -> AsyncIterator[MirrorServer]:
    root = tmp_path / "mirror"
    shutil.copytree(overlap_root, root)
    async with MirrorServer(root) as server:
        yield server


def _config(server: MirrorServer, tmp_path: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {"chunk_size": 2 * MiB, "min_split_size": 2 * MiB}
    values.update(overrides)
    return mirror_config(server.url, tmp_path / "cache", **values)


def _final_files(cache: Path, entry: dict[str, Any]) -> list[Path]:
    return list(cache.rglob(f"{entry['metadata']['model_sha']}_*.onnx"))


async def test_load_returns_the_verified_model(
    overlap_mirror: MirrorServer, entry: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(overlap_mirror, tmp_path, max_connections=4)
    async with AsyncHub(config) as hub:
        with anyio.fail_after(60):
            model = await hub.load(MODEL)
    [cached] = _final_files(config.cache_dir, entry)
    assert model == onnx.load(str(cached))
    assert model.SerializeToString() == cached.read_bytes()


async def test_a_corrupted_byte_on_the_mirror_returns_and_caches_nothing(
    overlap_mirror: MirrorServer, entry: dict[str, Any], tmp_path: Path
) -> None:
    served = tmp_path / "mirror" / REPO_PREFIX / entry["model_path"]  # the mirror's copy
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a layer's weights: still a parseable model
    served.write_bytes(bytes(data))
    config = _config(overlap_mirror, tmp_path)
    outcome: list[Any] = []
    async with AsyncHub(config) as hub:
        with anyio.fail_after(60), pytest.raises(IntegrityError, match="SHA-256 mismatch"):
            outcome.append(await hub.load(MODEL))
    assert outcome == []
    assert _final_files(config.cache_dir, entry) == []
    leftovers = [p for p in config.cache_dir.rglob("*") if p.is_file() and "_manifests" not in
                 p.parts and not p.name.endswith((".lock", ".json"))]  # fmt: skip
    assert leftovers == [], leftovers


async def _fetch_with_follower(hub: AsyncHub) -> tuple[ParseFollower, Path]:
    """The engine's seam, as ``load`` uses it when it parses while downloading."""
    spec = RepoSpec.parse(DEFAULT_REPO)
    info = await hub.get_model_info(MODEL)
    follower = ParseFollower()
    job = replace(hub.onnx_source.model_job(info, spec), follower=follower.follow)
    path = await hub.engine.fetch(job)
    return follower, path


async def test_the_engine_runs_the_follower_during_a_paced_download(
    overlap_root: Path, entry: dict[str, Any], tmp_path: Path
) -> None:
    async with MirrorServer(overlap_root, rate_limit=8 * MiB) as server:
        config = _config(server, tmp_path, max_connections=2)
        async with AsyncHub(config) as hub:
            with anyio.fail_after(60):
                follower, path = await _fetch_with_follower(hub)
            assert follower.model is not None and follower.pos > STEP, "parsed while fetching"
            model = await hub.run_blocking(follower.finish, path)
    assert model is follower.model
    assert model.SerializeToString() == path.read_bytes()
    assert model == onnx.load(str(path))


async def test_bytes_served_wrong_once_do_not_leak_into_the_model(
    overlap_mirror: MirrorServer, entry: dict[str, Any], tmp_path: Path
) -> None:
    """One range of the first pass is corrupted: the SHA-256 does not match, the engine resets
    the cursor and fetches the file again; the follower's first work must not be used."""
    overlap_mirror.add_fault(
        Fault("corrupt", path=f"*/{entry['model_path']}", after_bytes=100, times=1)
    )
    config = _config(overlap_mirror, tmp_path, max_connections=2)
    async with AsyncHub(config) as hub:
        with anyio.fail_after(60):
            follower, path = await _fetch_with_follower(hub)
        assert follower.final_generation == 1, "the engine started the file again"
        model = await hub.run_blocking(follower.finish, path)
    [cached] = _final_files(config.cache_dir, entry)
    assert path == cached
    assert model.SerializeToString() == cached.read_bytes()
    assert model == onnx.load(str(cached))
