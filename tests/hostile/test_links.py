"""Row 13: symbolic links planted in the cache are refused and nothing is written through them.

Every case plants a link from inside the cache to a "victim" outside it (an existing file, a
directory, or a path that does not exist yet), runs the public API, and checks that the victim
is byte-for-byte and inode-for-inode unchanged and that nothing new appeared outside the cache.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from asynchub import AsyncHub, CacheError, HubConfig, HubError
from tests.hostile.helpers import entry, final_archive, final_model, leftovers

pytestmark = pytest.mark.timeout(60)

NAME, OPSET = "TinyNet", 13


def _tree(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path under ``root`` with (inode, size, content of files)."""
    out: dict[str, tuple[int, int, bytes | None]] = {}
    for current, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(current) / name
            st = os.lstat(path)
            data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            out[str(path.relative_to(root))] = (st.st_ino, st.st_size, data)
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside the cache holding one precious file."""
    root = tmp_path / "victim"
    root.mkdir()
    (root / "precious.txt").write_bytes(b"do not touch\n")
    return root


async def _download(config: HubConfig, *, test_data: bool = False) -> Any:
    async with AsyncHub(config) as hub:
        try:
            if test_data:
                return await hub.download_model_with_test_data(NAME, opset=OPSET)
            return await hub.download(NAME, opset=OPSET)
        except HubError as exc:
            return exc


def _plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


@pytest.mark.parametrize("target", ["existing-file", "missing-file", "directory"])
async def test_symlink_at_the_lock_path_is_refused(
    target: str, victim: Path, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    final = final_model(hub_config.cache_dir, entry(zoo_manifest, NAME, OPSET))
    aim = {"existing-file": victim / "precious.txt", "missing-file": victim / "new.lock",
           "directory": victim}[target]  # fmt: skip
    _plant(final.with_name(final.name + ".lock"), aim)
    before = _tree(victim)
    outcome = await _download(hub_config)
    assert isinstance(outcome, CacheError), outcome
    assert "lock" in str(outcome) and "remove it" in str(outcome)
    assert _tree(victim) == before, "something was written through the planted lock link"
    assert not final.exists()
    assert leftovers(hub_config.cache_dir) == []


@pytest.mark.parametrize(
    "depth", [1, 3, 5], ids=["validated", "validated-vision-classification", "model-dir"]
)
async def test_symlinked_cache_subdirectory_is_refused(
    depth: int, victim: Path, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    parts = raw["model_path"].split("/")[:depth]
    _plant(hub_config.cache_dir.joinpath(*parts), victim)
    before = _tree(victim)
    outcome = await _download(hub_config)
    assert isinstance(outcome, CacheError), outcome
    assert "symbolic link" in str(outcome)
    assert _tree(victim) == before, "something was written through the planted directory link"


async def test_symlinked_manifest_cache_directory_is_not_written_through(
    victim: Path, hub_config: HubConfig, caplog: pytest.LogCaptureFixture
) -> None:
    _plant(hub_config.cache_dir / "_manifests", victim)
    before = _tree(victim)
    with caplog.at_level(logging.WARNING, logger="asynchub"):
        async with AsyncHub(hub_config) as hub:
            models = await hub.list_models()  # the manifest is still usable, just not cached
    assert models
    assert "could not cache" in caplog.text and "symbolic link" in caplog.text
    assert _tree(victim) == before, "the manifest cache was written through a planted link"


async def test_symlink_at_the_final_name_is_replaced_not_followed(
    victim: Path, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    """A link at the final name is never trusted (even to a file with the right bytes): it is
    removed, the file fetched, and the link's target left alone."""
    raw = entry(zoo_manifest, NAME, OPSET)
    final = final_model(hub_config.cache_dir, raw)
    async with AsyncHub(hub_config) as hub:
        good = (await hub.download(NAME, opset=OPSET)).read_bytes()
    os.unlink(final)
    copy = victim / "right-bytes.onnx"
    copy.write_bytes(good)
    _plant(final, copy)
    before = _tree(victim)
    outcome = await _download(hub_config)
    assert outcome == final
    assert not final.is_symlink() and final.read_bytes() == good
    assert _tree(victim) == before


async def test_planted_partial_link_is_ignored(
    victim: Path, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    """A link named like a partial download (and a state file claiming it is complete) is never
    resumed, written or truncated through."""
    raw = entry(zoo_manifest, NAME, OPSET)
    final = final_model(hub_config.cache_dir, raw)
    size = raw["metadata"]["model_bytes"]
    (victim / "big.bin").write_bytes(b"V" * size)
    partial = final.with_name(final.name + ".1-deadbeef.partial")
    _plant(partial, victim / "big.bin")
    state = {
        "version": 1,
        "sha256": raw["metadata"]["model_sha"],
        "size": size,
        "chunk_size": 65536,
        "url": None,
        "etag": None,
        "last_modified": None,
        "finished": list(range(7)),
        "partial": {},
    }
    partial.with_name(partial.name + ".json").write_text(json.dumps(state))
    before = _tree(victim)
    outcome = await _download(hub_config)
    assert outcome == final
    assert final.read_bytes() != b"V" * size
    assert _tree(victim) == before


async def test_symlink_at_the_extraction_lock_is_refused(
    victim: Path, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    archive = final_archive(hub_config.cache_dir, raw)
    target = archive.with_name(archive.name.removesuffix(".tar.gz"))
    _plant(target.with_name(f".{target.name}.lock"), victim / "extract.lock")
    before = _tree(victim)
    outcome = await _download(hub_config, test_data=True)
    assert isinstance(outcome, CacheError), outcome
    assert _tree(victim) == before
    assert not target.exists()
    assert leftovers(hub_config.cache_dir) == []


async def test_symlink_at_the_extraction_target_is_replaced_not_followed(
    victim: Path, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = entry(zoo_manifest, NAME, OPSET)
    archive = final_archive(hub_config.cache_dir, raw)
    target = archive.with_name(archive.name.removesuffix(".tar.gz"))
    _plant(target, victim)
    before = _tree(victim)
    outcome = await _download(hub_config, test_data=True)
    assert not isinstance(outcome, HubError), outcome
    assert not target.is_symlink() and (Path(outcome) / "model.onnx").is_file()
    assert _tree(victim) == before
