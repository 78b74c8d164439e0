"""Bulk prefetch against a local mirror: selection, dedup, failures, resume, progress, space."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asynchub._config import HubConfig
from asynchub._demo.zoo import ZooModel, build_zoo
from asynchub._exceptions import (
    ConfigError,
    InsufficientSpaceError,
    ModelNotFoundError,
    OfflineError,
)
from asynchub._hub.client import AsyncHub
from asynchub._onnx.prefetch import PrefetchResult
from asynchub._progress.events import ProgressEvent
from tests.conftest import REPO_PREFIX, mirror_config
from tests.mirror import Fault, MirrorServer

pytestmark = pytest.mark.timeout(60)

MANIFEST = "ONNX_HUB_MANIFEST.json"


@pytest.fixture
async def phub(hub_config: HubConfig) -> AsyncIterator[AsyncHub]:
    async with AsyncHub(hub_config) as hub:
        yield hub


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file_requests(server: MirrorServer) -> list[str]:
    return [r.path for r in server.requests if not r.path.endswith(MANIFEST)]


async def test_tag_prefetch_takes_latest_opsets_and_rerun_fetches_nothing(
    phub: AsyncHub, mirror: MirrorServer
) -> None:
    result = await phub.prefetch(tags=["VISION"])
    picked = sorted((i.model, i.opset) for i in result.items)
    assert picked == [("LegacyNet", 6), ("MicroNet", 11), ("TinyNet", 13), ("TinyNet-preproc", 12)]
    assert not result.failed and len(result.ok) == 4
    assert {i.status for i in result.items} == {"fetched"}
    for item in result.items:
        assert item.path is not None and _sha(item.path) == item.sha256
    assert result.bytes_planned == result.bytes_total == sum(i.size or 0 for i in result.items)
    assert result.bytes_fetched == result.bytes_planned
    assert "4 fetched" in result.summary() and "0 failed" in result.summary()

    before = len(_file_requests(mirror))
    again = await phub.prefetch(tags=["vision"])
    assert {i.status for i in again.items} == {"cached"}
    assert again.bytes_planned == 0 and again.bytes_fetched == 0
    assert len(_file_requests(mirror)) == before  # not one file request on the re-run


async def test_models_all_opsets_with_test_data_extracted(phub: AsyncHub) -> None:
    result = await phub.prefetch(
        models=["tinynet", "MicroNet"], all_opsets=True, with_test_data=True
    )
    assert not result.failed
    kinds = sorted((i.model, i.opset, i.kind) for i in result.items)
    assert kinds == [("MicroNet", 11, "model")] + [
        ("TinyNet", o, k) for o in (7, 12, 13) for k in ("model", "test_data")
    ]
    for item in result.items:
        assert item.path is not None
        if item.kind == "test_data":
            assert (item.path / "model.onnx").is_file()
            assert list(item.path.glob("test_data_set_*/output_0.pb"))
    assert any("MicroNet" in note for note in result.notes)  # it has no test data


async def test_selection_errors_come_before_any_download(
    phub: AsyncHub, mirror: MirrorServer
) -> None:
    with pytest.raises(ConfigError, match="say what to prefetch"):
        await phub.prefetch()
    with pytest.raises(ModelNotFoundError, match="did you mean TinyNet"):
        await phub.prefetch(models=["TinyNett"])
    with pytest.raises(ModelNotFoundError, match="No models found with tags"):
        await phub.prefetch(tags=["no-such-tag"])
    with pytest.raises(ConfigError):
        await phub.prefetch(tags="vision")  # type: ignore[arg-type]
    assert _file_requests(mirror) == []


async def test_one_failing_file_does_not_cancel_the_others(
    phub: AsyncHub, mirror: MirrorServer
) -> None:
    mirror.add_fault(Fault(kind="status", path="*tinynet-13.onnx", status=404, times=None))
    result = await phub.prefetch(tags=["vision"], with_test_data=True)
    failed = [(i.model, i.kind) for i in result.failed]
    assert failed == [("TinyNet", "model")]
    assert len(result.ok) == len(result.items) - 1
    assert all(i.path is not None and i.path.exists() for i in result.ok)
    assert "FAILED TinyNet (opset 13) model" in result.summary()
    assert "404" in str(result.failed[0].error)


async def test_identical_sha_is_fetched_once(mirror_root: Path, tmp_path: Path) -> None:
    repo = mirror_root / REPO_PREFIX
    manifest: list[dict[str, Any]] = json.loads((repo / MANIFEST).read_text())
    original = next(e for e in manifest if e["model"] == "TinyNet" and e["opset_version"] == 13)
    copy = json.loads(json.dumps(original))
    copy["model"], copy["model_path"] = "TinyNetTwin", "validated/twin/tinynet-twin-13.onnx"
    copy["metadata"].pop("model_with_data_path")
    (repo / "validated/twin").mkdir(parents=True)
    shutil.copy(repo / original["model_path"], repo / copy["model_path"])
    (repo / MANIFEST).write_text(json.dumps([*manifest, copy]))
    async with (
        MirrorServer(mirror_root) as server,
        AsyncHub(mirror_config(server.url, tmp_path / "cache")) as hub,
    ):
        result = await hub.prefetch(models=["TinyNet", "TinyNetTwin"])
        files = _file_requests(server)
    statuses = {i.model: i.status for i in result.items}
    assert statuses == {"TinyNet": "fetched", "TinyNetTwin": "linked"}
    assert not any("twin" in path for path in files)
    twin = next(i for i in result.items if i.model == "TinyNetTwin")
    assert twin.path is not None and _sha(twin.path) == original["metadata"]["model_sha"]
    assert result.bytes_total == original["metadata"]["model_bytes"]  # counted once


async def test_progress_events_add_up_to_the_planned_totals(hub_config: HubConfig) -> None:
    events: list[ProgressEvent] = []
    async with AsyncHub(hub_config, progress=events.append) as hub:
        result = await hub.prefetch(all=True, all_opsets=True, with_test_data=True)
    assert not result.failed
    first_planned: dict[str, int] = {}
    moved: dict[str, int] = defaultdict(int)
    verified: dict[str, int] = defaultdict(int)
    done: set[str] = set()
    for event in events:
        if event.kind == "planned":
            first_planned.setdefault(event.name, event.total or 0)
        elif event.kind in ("resumed", "transfer"):
            assert event.name in first_planned, "bytes moved before the file was planned"
            moved[event.name] += event.nbytes
        elif event.kind == "verified":
            verified[event.name] += event.nbytes
        elif event.kind == "done":
            done.add(event.name)
    # Every planned event came before the first byte: totals are fixed at plan time.
    kinds = [e.kind for e in events]
    assert kinds.index("transfer") > max(
        i for i, k in enumerate(kinds[: len(first_planned)]) if k == "planned"
    )
    assert sum(first_planned.values()) == result.bytes_planned == result.bytes_total
    assert done == set(first_planned)
    for name, total in first_planned.items():
        assert moved[name] == total, name
        assert verified[name] == total, name
    assert sum(moved.values()) == result.bytes_fetched


async def _cancel_then_rerun(
    tmp_path: Path, models: list[ZooModel], tag: str, *, rate_limit: int, stop_at: float
) -> tuple[int, int, PrefetchResult, list[ProgressEvent], int]:
    """Prefetch ``tag`` from a capped mirror, cancelled once ``stop_at`` x the bytes of its
    models were moved, then prefetch it again. Returns the bytes of the models, the bytes
    moved before the cancel, the rerun's result and events, and the bytes served again."""
    repo = tmp_path / "mirror" / REPO_PREFIX
    build_zoo(repo, models)
    total = sum(p.stat().st_size for p in repo.rglob("*.onnx"))
    async with MirrorServer(tmp_path / "mirror", rate_limit=rate_limit) as server:
        config = mirror_config(server.url, tmp_path / "cache", max_connections=4)
        moved = 0
        async with AsyncHub(config) as hub:
            with anyio.CancelScope() as scope:

                def stop(event: ProgressEvent) -> None:
                    nonlocal moved
                    if event.kind == "transfer":
                        moved += event.nbytes
                        if moved >= total * stop_at:
                            scope.cancel()

                hub.progress = stop
                await hub.prefetch(tags=[tag])
            assert scope.cancelled_caught
        partials = list((tmp_path / "cache").rglob("*.partial"))
        assert partials, "an interrupted prefetch leaves resumable partial files"
        served_before = server.served_bytes("*.onnx")
        events: list[ProgressEvent] = []
        async with AsyncHub(config, progress=events.append) as hub:
            result = await hub.prefetch(tags=[tag])
        served_again = server.served_bytes("*.onnx") - served_before
    assert not result.failed
    for item in result.items:
        assert item.path is not None and _sha(item.path) == item.sha256
    return total, moved, result, events, served_again


async def test_interrupted_after_the_last_byte_is_not_fetched_again(tmp_path: Path) -> None:
    """Cancelled after every byte of a file arrived, before it was verified: the rerun
    resumes all of it (the state is saved on the way out) and asks the mirror for nothing."""
    total, moved, result, events, served_again = await _cancel_then_rerun(
        tmp_path, [ZooModel("Whole", 12, ("one",), size=400_000)], "one",
        rate_limit=4_000_000, stop_at=1.0,
    )
    assert moved == total
    assert sum(e.nbytes for e in events if e.kind == "resumed") == total
    assert served_again == 0 and result.bytes_fetched == 0


async def test_interrupted_then_rerun_fetches_only_the_rest(tmp_path: Path) -> None:
    total, moved, result, events, served_again = await _cancel_then_rerun(
        tmp_path, [ZooModel(f"Big{c}", 12, ("big",), size=600_000) for c in "ABCD"], "big",
        rate_limit=1_000_000, stop_at=0.5,
    )
    resumed = sum(e.nbytes for e in events if e.kind == "resumed")
    assert resumed > 0
    assert result.bytes_fetched == result.bytes_planned - resumed
    # Only the rest went over the wire: at most the missing bytes (+ one 64 KiB chunk per file
    # for a piece that arrived but was not yet recorded when the cancel hit).
    assert served_again <= total - moved + 4 * 64 * 1024
    assert served_again < total


async def test_space_check_refuses_before_writing_and_can_be_skipped(
    mirror_root: Path, tmp_path: Path
) -> None:
    repo = mirror_root / REPO_PREFIX
    manifest: list[dict[str, Any]] = json.loads((repo / MANIFEST).read_text())
    huge = next(e for e in manifest if e["model"] == "NanoText")
    huge["metadata"]["model_bytes"] = 2**49  # 512 TiB: no test machine has that
    (repo / MANIFEST).write_text(json.dumps(manifest))
    cache = tmp_path / "cache"
    async with (
        MirrorServer(mirror_root) as server,
        AsyncHub(mirror_config(server.url, cache)) as hub,
    ):
        with pytest.raises(InsufficientSpaceError) as caught:
            await hub.prefetch(all=True)
        message = str(caught.value)
        assert "check_space=False" in message and "--no-space-check" in message
        assert "TB" in message  # the numbers are in the message
        assert _file_requests(server) == []
        assert not [p for p in cache.rglob("*") if p.is_file() and "_manifests" not in p.parts]

        result = await hub.prefetch(all=True, check_space=False)
    assert [i.model for i in result.failed] == ["NanoText"]
    assert len(result.ok) == 4


async def test_offline_prefetch_uses_the_cache_and_fails_the_rest(hub_config: HubConfig) -> None:
    async with AsyncHub(hub_config) as hub:
        await hub.prefetch(tags=["text"])
    async with AsyncHub(hub_config.replace(offline=True)) as hub:
        result = await hub.prefetch(all=True)
    assert [i.model for i in result.ok] == ["NanoText"]
    assert result.failed and all(isinstance(i.error, OfflineError) for i in result.failed)
