"""Manifests from ``CHILD_THRESHOLD`` (4 MiB) on are validated and indexed in a child process.

The child gives the same answers as the in-process parse: the same index bytes, the same
``ManifestError`` for an invalid manifest (and then no index), an index only written when the
caller saves it; served by a mirror, an invalid big manifest never replaces the cached one.
(The event loop staying responsive is ``test_local_big_manifest.py``'s lag test.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from asynchub import AsyncHub, ManifestError
from asynchub._onnx.index import CHILD_THRESHOLD, ManifestView, build_index, index_path
from asynchub._onnx.manifest import parse_manifest, parse_manifest_spans
from tests.conftest import REPO_PREFIX, mirror_config
from tests.hostile.local_helpers import MAX_MESSAGE
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(180)

MANIFEST_REL = f"{REPO_PREFIX}/ONNX_HUB_MANIFEST.json"


def _entry(name: str, opset: int = 12) -> dict[str, Any]:
    return {
        "model": name,
        "model_path": f"validated/{name}/model-{opset}.onnx",
        "opset_version": opset,
        "metadata": {"model_sha": hashlib.sha256(name.encode()).hexdigest(), "tags": ["t"]},
    }


def _big(tail: list[dict[str, Any]], count: int = 20_000) -> bytes:
    entries = [_entry(f"Modèle-{i:05d}é") for i in range(count)] + tail
    data = json.dumps(entries, ensure_ascii=False, indent=1).encode()
    assert len(data) >= CHILD_THRESHOLD
    return data


BAD_TAIL = [{"model": "Bad", "model_path": "../escape", "opset_version": 1}]


def test_child_builds_the_index_this_process_would_build(tmp_path: Path) -> None:
    data = _big([_entry("Net", 11), _entry("NET", 13)])
    path = tmp_path / "ONNX_HUB_MANIFEST.json"
    path.write_bytes(data)
    view = ManifestView.from_file(path, source="m")
    assert not view.parsed, "the entries must stay in the child"
    entries, spans = parse_manifest_spans(data, source="m")
    assert spans is not None
    assert index_path(path).read_bytes() == build_index(
        entries, spans, hashlib.sha256(data).hexdigest()
    )
    assert view.select("net").opset == 13
    assert view.select("modèle-01234É").raw_model_info == entries[1234].raw_model_info
    assert not view.parsed


def test_deferred_index_is_written_only_when_saved(tmp_path: Path) -> None:
    data = _big([_entry("Net")])
    index = tmp_path / "ONNX_HUB_MANIFEST.json.index"
    view = ManifestView.from_bytes(data, source="m", index_file=index, defer=True)
    assert not view.parsed and not index.exists()
    assert view.select("Net").model == "Net"
    view.save_index()
    assert index.is_file()
    assert ManifestView.from_bytes(data, source="m", index_file=index).select("net").opset == 12


def test_invalid_big_manifest_raises_the_in_process_error(tmp_path: Path) -> None:
    bad = _big(BAD_TAIL)
    with pytest.raises(ManifestError) as in_process:
        parse_manifest(bad, source="m")
    path = tmp_path / "ONNX_HUB_MANIFEST.json"
    path.write_bytes(bad)
    with pytest.raises(ManifestError) as from_child:
        ManifestView.from_file(path, source="m")
    assert str(from_child.value) == str(in_process.value)
    assert len(str(from_child.value)) < MAX_MESSAGE
    assert not index_path(path).exists()


async def test_invalid_big_manifest_from_the_mirror_keeps_the_cached_one(
    mirror_root: Path, zoo_manifest: list[dict[str, Any]], tmp_path: Path
) -> None:
    tiny = [e for e in zoo_manifest if e["model"] == "TinyNet"]
    good = _big(tiny)
    (mirror_root / MANIFEST_REL).write_bytes(good)
    cache = tmp_path / "cache"
    cached = cache / "_manifests/onnx/models/main/ONNX_HUB_MANIFEST.json"
    server = MirrorServer(mirror_root, hosts=("127.0.0.1",))
    await server.start()
    try:
        async with AsyncHub(mirror_config(server.url, cache)) as hub:
            first = await hub.get_model_info("TinyNet")
        assert cached.read_bytes() == good
        good_index = index_path(cached).read_bytes()
        server.set_file(MANIFEST_REL, _big(tiny + BAD_TAIL))  # a new ETag: answered 200
        async with AsyncHub(mirror_config(server.url, cache)) as hub:
            again = await hub.get_model_info("TinyNet")
        assert len(server.requests_for("*ONNX_HUB_MANIFEST.json")) == 2
    finally:
        await server.stop()
    assert again.raw_model_info == first.raw_model_info
    assert cached.read_bytes() == good
    assert index_path(cached).read_bytes() == good_index
