"""Row 7: corrupted bytes in transit and a file that changes on the server between chunks.

Through ``AsyncHub`` against the fault mirror: a mismatch is detected before anything is
published, the file is fetched once more from scratch, and a second mismatch is a typed
``IntegrityError`` (an ``AssertionError``, as onnx.hub raised) with nothing under the final name
and no partial file left behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from asynchub import AsyncHub, HubConfig, HubError, IntegrityError
from tests.conftest import REPO_PREFIX
from tests.hostile.helpers import entry, final_model, leftovers, write_manifest
from tests.mirror import Fault, MirrorServer

pytestmark = pytest.mark.timeout(60)

NAME, OPSET = "TinyNet", 13
GLOB = "*tinynet-13.onnx"
CHUNK = 64 * 1024


async def _fetch(config: HubConfig) -> Path | HubError:
    async with AsyncHub(config) as hub:
        try:
            return await hub.download(NAME, opset=OPSET)
        except HubError as exc:
            return exc


def _starts_at_zero(mirror: MirrorServer) -> int:
    return sum(1 for r in mirror.requests_for(GLOB) if r.range is None or r.range[0] == 0)


def _source(mirror: MirrorServer, raw: dict[str, Any]) -> bytes:
    return (mirror.root / REPO_PREFIX / raw["model_path"]).read_bytes()


async def test_one_corrupted_byte_is_detected_and_refetched_from_scratch(
    mirror: MirrorServer, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    fault = mirror.add_fault(
        Fault("corrupt", path=GLOB, after_bytes=777, only_start_above=2 * CHUNK)
    )
    outcome = await _fetch(hub_config)
    assert fault.hits == 1
    assert not isinstance(outcome, HubError), outcome
    assert outcome.read_bytes() == _source(mirror, raw)
    assert _starts_at_zero(mirror) == 2, "the file was not fetched again from its first byte"
    assert leftovers(hub_config.cache_dir) == []


async def test_corruption_on_every_try_is_an_integrity_error(
    mirror: MirrorServer, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    size = raw["metadata"]["model_bytes"]
    mirror.add_fault(Fault("corrupt", path=GLOB, times=None, after_bytes=5, only_start_above=0))
    outcome = await _fetch(hub_config)
    assert isinstance(outcome, IntegrityError) and isinstance(outcome, AssertionError)
    assert raw["metadata"]["model_sha"] in str(outcome)
    assert not final_model(hub_config.cache_dir, raw).exists()
    assert leftovers(hub_config.cache_dir) == [], "the failed partial was not deleted"
    assert _starts_at_zero(mirror) == 2, "exactly one retry from scratch"
    assert mirror.served_bytes(GLOB) <= 2 * size


async def test_file_changing_between_chunks_restarts_then_fails_integrity(
    mirror: MirrorServer, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    old = _source(mirror, raw)
    new = bytes(b ^ 0x5A for b in old)  # same size, other bytes, new ETag
    fault = mirror.add_fault(Fault("change_etag", path=GLOB, data=new, only_start_above=CHUNK))
    outcome = await _fetch(hub_config)
    assert fault.hits == 1
    assert isinstance(outcome, IntegrityError), outcome
    assert not final_model(hub_config.cache_dir, raw).exists()
    assert leftovers(hub_config.cache_dir) == []
    requests = mirror.requests_for(GLOB)
    changed_at = next(i for i, r in enumerate(requests) if r.fault == "change_etag")
    assert "If-Range" not in requests[changed_at].headers  # validators alone discard nothing
    # the SHA-256 noticed the change: the file was fetched once more from scratch
    restarts = [r for r in requests[changed_at + 1 :] if r.range is None or r.range[0] == 0]
    assert len(restarts) == 1
    assert len(requests) <= 4 * (len(old) // CHUNK + 1) + 4


async def test_new_etag_with_the_same_bytes_keeps_the_bytes_and_succeeds(
    mirror: MirrorServer, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    mirror.add_fault(Fault("change_etag", path=GLOB, only_start_above=3 * CHUNK))
    outcome = await _fetch(hub_config)
    assert not isinstance(outcome, HubError), outcome
    assert outcome.read_bytes() == _source(mirror, raw)
    assert _starts_at_zero(mirror) == 1  # an ETag change alone does not start the file over
    assert leftovers(hub_config.cache_dir) == []


@pytest.mark.parametrize("times", [1, None], ids=["once", "forever"])
async def test_unsized_file_corrupted_in_transit(
    times: int | None,
    mirror: MirrorServer,
    hub_config: HubConfig,
    zoo_manifest: list[dict[str, Any]],
) -> None:
    """A file without ``model_bytes`` (its size is learnt from the server) follows the same
    rule: one retry from scratch, then a typed integrity error."""
    raw = entry(zoo_manifest, NAME, OPSET)
    unsized = [dict(e, metadata=dict(e["metadata"])) for e in zoo_manifest]
    for item in unsized:
        item["metadata"].pop("model_bytes", None)
    write_manifest(mirror, unsized)
    mirror.add_fault(Fault("corrupt", path=GLOB, times=times, after_bytes=1000))
    outcome = await _fetch(hub_config)
    final = final_model(hub_config.cache_dir, raw)
    assert _starts_at_zero(mirror) == 2, "the file was not fetched again from its first byte"
    assert leftovers(hub_config.cache_dir) == []
    if times == 1:
        assert not isinstance(outcome, HubError), outcome
        assert final.read_bytes() == _source(mirror, raw)
    else:
        assert isinstance(outcome, IntegrityError), outcome
        assert not final.exists()
