"""The manifest index (``asynchub._onnx.index``) never changes an answer: a stale, corrupt or
truncated index, or a manifest replaced behind it, gives the same entries as a full parse;
non-ASCII manifests index by byte spans; the entry-by-entry decoder keeps JSON's errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from asynchub import ManifestError, ModelNotFoundError, OpsetNotFoundError
from asynchub._onnx.index import INDEX_THRESHOLD, ManifestView, index_path
from asynchub._onnx.manifest import parse_manifest

pytestmark = pytest.mark.timeout(120)


def _entry(name: str, opset: int = 12) -> dict[str, Any]:
    return {
        "model": name,
        "model_path": f"validated/{name}/model-{opset}.onnx",
        "opset_version": opset,
        "metadata": {"model_sha": hashlib.sha256(name.encode()).hexdigest(), "tags": ["t"]},
    }


def _manifest(extra: list[dict[str, Any]] | None = None, count: int = 6000) -> bytes:
    entries = [_entry(f"Modèle-{i:05d}é") for i in range(count)]
    entries += extra or [_entry("Net", 11), _entry("NET", 13), _entry("net", 12)]
    data = json.dumps(entries, ensure_ascii=False, indent=1).encode()
    assert len(data) > INDEX_THRESHOLD
    return data


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "ONNX_HUB_MANIFEST.json"
    path.write_bytes(data)
    return path


def _same(view: ManifestView, data: bytes) -> None:
    full = parse_manifest(data)
    for name, opset in [("net", None), ("Net", 11), ("nEt", 12), ("Modèle-04321É", None)]:
        expected = [e for e in full if e.model.lower() == name.lower()]
        want = max(expected, key=lambda e: e.opset) if opset is None else next(
            e for e in expected if e.opset == opset
        )
        got = view.select(name, opset)
        assert got.raw_model_info == want.raw_model_info


def test_index_is_written_and_used(tmp_path: Path) -> None:
    data = _manifest()
    path = _write(tmp_path, data)
    first = ManifestView.from_file(path, source="m")
    assert first.parsed and index_path(path).is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert index_path(path).stat().st_mode & 0o777 == 0o666 & ~umask  # group-shared caches
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    second = ManifestView.from_file(path, source="m")
    assert not second.parsed
    _same(second, data)
    assert not second.parsed, "a lookup by name must not parse the whole manifest"
    with pytest.raises(OpsetNotFoundError, match=r"Valid opsets: \[11, 13, 12\]"):
        second.select("net", 7)
    with pytest.raises(ModelNotFoundError, match="did you mean Modèle-04321é"):
        second.select("Modèle-04321")
    assert len(second.entries()) == len(parse_manifest(data))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other-sha", "swap-spans"])
def test_damaged_index_gives_the_same_answers(tmp_path: Path, damage: str) -> None:
    data = _manifest()
    path = _write(tmp_path, data)
    ManifestView.from_file(path, source="m")
    index = index_path(path)
    raw = index.read_bytes()
    if damage == "truncate":
        index.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        index.write_bytes(b"\0" * 1000)
    elif damage == "other-sha":
        index.write_bytes(raw.replace(hashlib.sha256(data).hexdigest().encode(), b"0" * 64))
    else:  # spans of one name point at another entry
        header, _, body = raw.partition(b"\n")
        index.write_bytes(header + b"\n" + body.replace(b'"net":[[6000,', b'"net":[[5999,'))
    _same(ManifestView.from_file(path, source="m"), data)


def test_replaced_manifest_is_not_answered_from_the_old_index(tmp_path: Path) -> None:
    path = _write(tmp_path, _manifest())
    ManifestView.from_file(path, source="m")
    newer = _manifest([_entry("Net", 17)])
    path.write_bytes(newer)
    view = ManifestView.from_file(path, source="m")
    assert view.select("net").opset == 17
    with pytest.raises(OpsetNotFoundError, match=r"Valid opsets: \[17\]"):
        view.select("net", 11)


def test_invalid_big_manifest_is_refused_and_not_indexed(tmp_path: Path) -> None:
    bad = _manifest([{"model": "Bad", "model_path": "../escape", "opset_version": 1}])
    path = _write(tmp_path, bad)
    with pytest.raises(ManifestError, match=re.escape("'..'")):
        ManifestView.from_file(path, source="m")
    assert not index_path(path).exists()


@pytest.mark.parametrize(
    "text",
    ['[{"a": 1} {"b": 2}]', "[1,]", '[{"a": 1}] x', '[{"a": NaN}]', '[{"a": 1, "a": 2}]', "[", ""],
)
def test_entry_by_entry_decoding_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(text.encode())
