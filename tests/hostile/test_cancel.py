"""Row 15: a task cancelled mid-download or mid-extraction closes its files, releases its locks
and leaves work that the next call resumes (or finds done).

Cancellation points are reached deterministically: from the public progress callback after a
number of ``transfer`` events, while the mirror holds one Range answer stalled, and while the
extraction's staging directory is being filled.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from asynchub import AsyncHub, HubConfig, ProgressEvent
from asynchub._cache.archive import COMPLETE_MARKER
from asynchub._cache.layout import lock_path
from tests.conftest import REPO_PREFIX
from tests.hostile.helpers import (
    entry,
    final_archive,
    final_model,
    finished_chunks,
    leftovers,
    lock_is_free,
    many_member_archive,
    open_files_under,
    partials,
    wait_until,
    with_archive,
    write_manifest,
)
from tests.mirror import Fault, MirrorServer

pytestmark = pytest.mark.timeout(60)

NAME, OPSET = "TinyNet", 13
GLOB = "*tinynet-13.onnx"
CHUNK = 64 * 1024


def _assert_released(cache: Path, final: Path) -> None:
    assert open_files_under(cache) == [], "files under the cache are still open"
    assert lock_is_free(lock_path(final)), "the file lock is still held"


async def _resume(config: HubConfig, mirror: MirrorServer, final: Path, good: bytes) -> int:
    """Run again; returns the bytes the mirror served for it."""
    before = mirror.served_bytes(GLOB)
    async with AsyncHub(config) as hub:
        assert await hub.download(NAME, opset=OPSET) == final
    assert final.read_bytes() == good
    assert leftovers(config.cache_dir) == []
    return mirror.served_bytes(GLOB) - before


async def test_cancelled_mid_download_from_progress(
    mirror: MirrorServer, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    final = final_model(hub_config.cache_dir, raw)
    good = (mirror.root / REPO_PREFIX / raw["model_path"]).read_bytes()
    mirror.rate_limit = 1024 * 1024  # ~60 ms per chunk: the cancel lands mid-transfer
    config = hub_config.replace(max_connections=2)  # two chunks at a time: some stay to do
    with anyio.CancelScope() as scope:
        seen = 0

        def cancel_after_three(event: ProgressEvent) -> None:
            nonlocal seen
            if event.kind == "transfer":
                seen += 1
                if seen == 3:
                    scope.cancel()

        async with AsyncHub(config, progress=cancel_after_three) as hub:
            await hub.download(NAME, opset=OPSET)
    assert scope.cancelled_caught
    assert not final.exists()
    _assert_released(hub_config.cache_dir, final)
    kept = partials(hub_config.cache_dir)
    assert len(kept) == 1
    state = json.loads(kept[0].with_name(kept[0].name + ".json").read_text())
    assert state["finished"], "the resume state lists no finished chunk"
    mirror.rate_limit = None
    served = await _resume(hub_config, mirror, final, good)
    assert 0 < served < len(good), f"the next call fetched {served} of {len(good)} bytes"


async def test_cancelled_while_a_range_is_stalled(
    mirror: MirrorServer, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    size = raw["metadata"]["model_bytes"]
    final = final_model(hub_config.cache_dir, raw)
    good = (mirror.root / REPO_PREFIX / raw["model_path"]).read_bytes()
    chunks = -(-size // CHUNK)
    mirror.add_fault(Fault("stall", path=GLOB, after_bytes=1000, only_start_above=4 * CHUNK - 1))
    async with AsyncHub(hub_config) as hub, anyio.create_task_group() as group:
        group.start_soon(functools.partial(hub.download, NAME, opset=OPSET))
        await mirror.wait_for_requests(chunks, GLOB, timeout=20)
        stalled = next(r for r in mirror.requests_for(GLOB) if r.fault == "stall")
        await wait_until(
            lambda: stalled.body_bytes >= 1000 and finished_chunks(hub_config.cache_dir) >= 1,
            "the stalled answer and a saved resume state",
        )
        group.cancel_scope.cancel()
    assert not final.exists()
    _assert_released(hub_config.cache_dir, final)
    assert len(partials(hub_config.cache_dir)) == 1
    served = await _resume(hub_config, mirror, final, good)
    assert 0 < served < size


async def test_cancelled_mid_extraction(
    mirror: MirrorServer, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    """The extraction runs in a worker thread that finishes its current step; the task is
    cancelled, the staging directory is gone or published complete, the locks are free, and
    the next call returns a complete directory."""
    raw = entry(zoo_manifest, NAME, OPSET)
    model = (mirror.root / REPO_PREFIX / raw["model_path"]).read_bytes()
    blob = many_member_archive(model, 600)
    rel = "validated/vision/classification/tinynet/model/tinynet-13-many.tar.gz"
    mirror.set_file(f"{REPO_PREFIX}/{rel}", blob)
    changed = with_archive(raw, rel, blob)
    write_manifest(mirror, [changed])
    archive = final_archive(hub_config.cache_dir, changed)
    target = archive.with_name(archive.name.removesuffix(".tar.gz"))
    cache = hub_config.cache_dir
    caught_staging = False
    async with AsyncHub(hub_config) as hub:
        async with anyio.create_task_group() as group:
            group.start_soon(
                functools.partial(hub.download_model_with_test_data, NAME, opset=OPSET)
            )

            def staging_or_done() -> bool:
                nonlocal caught_staging
                if target.parent.exists():
                    prefix = f".{target.name}.staging-"
                    caught_staging = any(p.name.startswith(prefix) for p in target.parent.iterdir())
                return caught_staging or (target / COMPLETE_MARKER).exists()

            await wait_until(staging_or_done, "the extraction", polls=10_000)
            group.cancel_scope.cancel()
        assert caught_staging, "the extraction was not caught in progress"
        assert open_files_under(cache) == []
        assert lock_is_free(lock_path(archive))
        assert lock_is_free(target.with_name(f".{target.name}.lock"))
        assert leftovers(cache) == [], "a cancelled extraction left its staging directory"
        folder = Path(await hub.download_model_with_test_data(NAME, opset=OPSET))
    assert (target / COMPLETE_MARKER).is_file()
    assert (folder / "model.onnx").read_bytes() == model
    assert len(list((folder / "test_data_set_0").iterdir())) == 600
