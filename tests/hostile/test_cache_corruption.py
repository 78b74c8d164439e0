"""Row 14: a cached file damaged after the fact is detected on the next load and fetched again.

Each case downloads a file, damages it in place (truncation, one flipped byte in the middle,
bytes appended, emptied, replaced by a link to a copy with the right bytes), and loads it again
through the public API: the damage is noticed (size and SHA-256 are checked on every load), the
file is fetched again, and the published bytes are the manifest's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from asynchub import AsyncHub, CacheError, Hub, HubConfig
from tests.hostile.helpers import entry, final_archive, final_model, leftovers, sha_file
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)

NAME, OPSET = "TinyNet", 13
GLOB = "*tinynet-13.onnx"


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _append(path: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(b"\0")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _link_to_copy(path: Path) -> None:
    copy = path.with_name("elsewhere.onnx")
    copy.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(copy)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "one-byte-flipped": _flip_middle,
    "byte-appended": _append,
    "emptied": _empty,
    "link-to-good-copy": _link_to_copy,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
async def test_damaged_cached_model_is_fetched_again(
    damage: str, mirror: MirrorServer, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    final = final_model(hub_config.cache_dir, raw)
    async with AsyncHub(hub_config) as hub:
        first = await hub.load(NAME, opset=OPSET)
        good = final.read_bytes()
        before = len(mirror.requests_for(GLOB))
        DAMAGE[damage](final)
        assert os.path.islink(final) or sha_file(final) != raw["metadata"]["model_sha"]
        again = await hub.load(NAME, opset=OPSET)
    assert len(mirror.requests_for(GLOB)) > before, "the damaged file was not fetched again"
    assert not final.is_symlink() and final.read_bytes() == good
    assert again == first
    assert leftovers(hub_config.cache_dir) == []


def test_damaged_cached_model_through_the_sync_api(
    mirror_root: Path, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    final = final_model(hub_config.cache_dir, raw)
    with MirrorServer(mirror_root).running() as server:
        config = hub_config.replace(
            manifest_url=server.url + "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json",
            file_urls=(server.url + "/{owner}/{repo}/{ref}/{path}",),
        )
        with Hub(config) as hub:
            hub.load(NAME, opset=OPSET)
            _truncate(final)
            model = hub.load(NAME, opset=OPSET)
    assert isinstance(model, onnx.ModelProto) and model.graph.node
    assert sha_file(final) == raw["metadata"]["model_sha"]
    assert len(server.requests_for(GLOB)) >= 2 * (final.stat().st_size // (64 * 1024))


async def test_damaged_cached_archive_is_fetched_again(
    mirror: MirrorServer, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    archive = final_archive(hub_config.cache_dir, raw)
    async with AsyncHub(hub_config) as hub:
        folder = await hub.download_model_with_test_data(NAME, opset=OPSET)
        _truncate(archive)
        before = len(mirror.requests_for("*tinynet-13.tar.gz"))
        assert await hub.download_model_with_test_data(NAME, opset=OPSET) == folder
    assert len(mirror.requests_for("*tinynet-13.tar.gz")) > before
    assert sha_file(archive) == raw["metadata"]["model_with_data_sha"]
    assert (Path(folder) / "model.onnx").is_file()


async def test_directory_at_the_final_name_is_a_clear_error(
    hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    """Something that is not a file at the final name cannot be replaced safely: a typed error
    that names it, and nothing inside it is touched."""
    final = final_model(hub_config.cache_dir, entry(zoo_manifest, NAME, OPSET))
    final.mkdir(parents=True)
    (final / "keep").write_bytes(b"keep")
    async with AsyncHub(hub_config) as hub:
        with pytest.raises(CacheError) as caught:
            await hub.load(NAME, opset=OPSET)
    assert str(final) in str(caught.value)
    assert (final / "keep").read_bytes() == b"keep"
    assert leftovers(hub_config.cache_dir) == []
