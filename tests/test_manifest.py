"""Manifest parsing, ModelInfo and selection: onnx.hub's contract, on small manifests and on
the real ONNX Model Zoo manifest (skipped when ``../shared/data`` is absent)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

from asynchub._exceptions import (
    ConfigError,
    HubError,
    ManifestError,
    ModelNotFoundError,
    OpsetNotFoundError,
)
from asynchub._onnx.manifest import (
    MAX_DEPTH,
    ModelInfo,
    filter_models,
    parse_manifest,
    select,
    validate_path,
    validate_sha,
    validate_size,
)

REAL_MANIFEST = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ONNX_HUB_MANIFEST.json"
)

SHA_A = "a" * 64
SHA_B = "B" * 64


def entry(
    model: str = "Net", opset: int = 7, tags: list[str] | None = None, **metadata: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"model_sha": SHA_A, "model_bytes": 10, "tags": tags or ["vision"]}
    meta.update(metadata)
    return {
        "model": model,
        "model_path": f"validated/{model.lower()}/model/{model.lower()}-{opset}.onnx",
        "onnx_version": "1.9",
        "opset_version": opset,
        "metadata": meta,
    }


@pytest.fixture(scope="module")
def real_bytes() -> bytes:
    if not REAL_MANIFEST.is_file():
        pytest.skip(f"real manifest not found at {REAL_MANIFEST}")
    return REAL_MANIFEST.read_bytes()


@pytest.fixture(scope="module")
def real(real_bytes: bytes) -> list[ModelInfo]:
    return parse_manifest(real_bytes, source=str(REAL_MANIFEST))


# --- ModelInfo ---------------------------------------------------------------------------


def test_model_info_attributes_and_str() -> None:
    raw = entry("MNIST", 8, ["vision", "Classification"], model_with_data_path="a/b.tar.gz",
                model_with_data_sha=SHA_B, model_with_data_bytes=5)
    info = ModelInfo(raw)
    assert info.model == "MNIST"
    assert info.model_path == "validated/mnist/model/mnist-8.onnx"
    assert info.opset == 8
    assert info.model_sha == SHA_A
    assert info.model_bytes == 10
    assert info.tags == {"vision", "Classification"}
    assert info.metadata is raw["metadata"]
    assert info.raw_model_info is raw
    assert info.model_with_data_path == "a/b.tar.gz"
    assert info.model_with_data_sha == SHA_B.lower()
    assert info.model_with_data_bytes == 5
    expected = (
        f"ModelInfo(model=MNIST, opset=8, path=validated/mnist/model/mnist-8.onnx, "
        f"metadata={raw['metadata']})"
    )
    assert str(info) == expected
    assert repr(info) == expected


def test_model_info_optional_fields_absent() -> None:
    raw = {"model": "Bare", "model_path": "m/bare.onnx", "opset_version": 3, "metadata": {}}
    info = ModelInfo(raw)
    assert info.model_sha is None  # onnx.hub allowed it; the client refuses to download it
    assert info.model_bytes is None
    assert info.tags == set()
    assert info.model_with_data_path is None
    assert info.model_with_data_sha is None
    assert info.model_with_data_bytes is None
    no_meta = ModelInfo({"model": "NoMeta", "model_path": "x.onnx", "opset_version": 1})
    assert no_meta.metadata == {}


def test_model_info_constructor_validates() -> None:
    raw = entry()
    raw["model_path"] = "../escape.onnx"
    with pytest.raises(ManifestError, match="model_path"):
        ModelInfo(raw)


# --- parse_manifest ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bytes", "str", "list", "bytearray"])
def test_parse_accepts_every_input_kind(kind: str) -> None:
    doc = [entry("A", 1), entry("B", 2)]
    text = json.dumps(doc)
    data: Any = {"bytes": text.encode(), "str": text, "list": doc,
                 "bytearray": bytearray(text.encode())}[kind]
    infos = parse_manifest(data)
    assert [i.model for i in infos] == ["A", "B"]


def test_parse_utf8_bom_and_utf16() -> None:
    text = json.dumps([entry("Ü-net", 1)], ensure_ascii=False)
    assert parse_manifest(b"\xef\xbb\xbf" + text.encode())[0].model == "Ü-net"
    assert parse_manifest(text.encode("utf-16"))[0].model == "Ü-net"


def test_error_names_source_entry_model_and_field() -> None:
    doc = [entry("Good", 1), entry("Bad", 2)]
    doc[1]["metadata"]["model_sha"] = "../../x"
    with pytest.raises(ManifestError) as err:
        parse_manifest(json.dumps(doc), source="https://example.test/M.json")
    message = str(err.value)
    assert "https://example.test/M.json" in message
    assert "entry 1" in message
    assert "'Bad'" in message
    assert "model_sha" in message
    assert "fix the manifest" in message
    assert isinstance(err.value, HubError) and isinstance(err.value, ValueError)


def test_entry_without_model_names_index() -> None:
    doc: list[Any] = [entry("A", 1), {"model_path": "x.onnx", "opset_version": 1}]
    with pytest.raises(ManifestError, match=r"entry 1: field 'model' is missing"):
        parse_manifest(doc)


def test_depth_limit_is_exact() -> None:
    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = [value]
        return value

    # list (1) > entry (2) > metadata (3) > extra (4 ...): the extra adds `levels` levels.
    ok = [entry(extra=nested(MAX_DEPTH - 3))]
    assert len(parse_manifest(json.dumps(ok))) == 1
    assert len(parse_manifest(ok)) == 1
    too_deep = [entry(extra=nested(MAX_DEPTH - 2))]
    with pytest.raises(ManifestError, match="deeper than 32"):
        parse_manifest(json.dumps(too_deep))
    with pytest.raises(ManifestError, match="deeper than 32"):
        parse_manifest(too_deep)


def test_self_referencing_list_is_refused() -> None:
    doc: list[Any] = [entry()]
    loop: list[Any] = []
    loop.append(loop)
    doc[0]["metadata"]["loop"] = loop
    with pytest.raises(ManifestError, match="deeper"):
        parse_manifest(doc)


def test_sha_and_sizes_normalised() -> None:
    info = parse_manifest([entry(model_sha=SHA_B)])[0]
    assert info.model_sha == "b" * 64
    assert validate_sha("AbCd" * 16, where="w") == "abcd" * 16
    assert validate_size(0, where="w") == 0
    assert validate_size(2**50, where="w") == 2**50
    assert validate_path("a/b-c_d.e/f g.onnx", where="w") == "a/b-c_d.e/f g.onnx"
    assert validate_path("a/b:c.onnx", where="w") == "a/b:c.onnx"  # ':' only refused first


def test_validate_path_where_prefixes_message() -> None:
    with pytest.raises(ManifestError, match=r"^asset card x\.md, field 'path': "):
        validate_path("/abs", where="asset card x.md, field 'path'")


# --- selection on small manifests --------------------------------------------------------


@pytest.fixture()
def small() -> list[ModelInfo]:
    return parse_manifest(
        [
            entry("MNIST", 1, ["vision", "MNIST"]),
            entry("MNIST", 8, ["vision"]),
            entry("MNIST-12", 12, ["vision"]),
            entry("MNIST", 7, ["Vision"]),
            entry("Tie", 5, ["text"]),
            entry("tie", 5, ["text", "second"]),
            entry("Tie", 3, ["text"]),
        ]
    )


def test_name_matches_exactly_ignoring_case(small: list[ModelInfo]) -> None:
    assert [i.opset for i in filter_models(small, model="mnist")] == [1, 8, 7]
    assert all(i.model == "MNIST" for i in filter_models(small, model="Mnist"))
    assert [i.model for i in filter_models(small, model="mnist-12")] == ["MNIST-12"]
    assert filter_models(small, model="mnis") == []


def test_tags(small: list[ModelInfo]) -> None:
    assert filter_models(small) == small  # no filter: everything, manifest order
    assert filter_models(small, model=None, tags=None) == small
    assert filter_models(small, tags=[]) == []
    assert len(filter_models(small, tags=["VISION"])) == 4
    assert [i.tags for i in filter_models(small, tags=["second", "nothing"])] == [
        {"text", "second"}
    ]
    assert len(filter_models(small, tags=["mnist", "text"])) == 4  # ANY tag matches
    assert [i.opset for i in filter_models(small, model="MNIST", tags=["mnist"])] == [1]
    with pytest.raises(ConfigError, match="list of strings"):
        filter_models(small, tags="vision")  # type: ignore[arg-type]


def test_select_newest_and_ties(small: list[ModelInfo]) -> None:
    assert select(small, "mnist").opset == 8
    assert select(small, "MNIST", opset=7).opset == 7
    tie = select(small, "TIE")
    assert tie.opset == 5 and tie.model == "Tie" and tie is small[4]  # first on ties


def test_select_unknown_name(small: list[ModelInfo]) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        select(small, "mnst")
    message = str(err.value)
    assert message.startswith("No models found with name mnst")
    assert "list_models()" in message
    assert "MNIST" in message  # the close match is suggested
    assert isinstance(err.value, AssertionError)


def test_select_unknown_opset(small: list[ModelInfo]) -> None:
    with pytest.raises(OpsetNotFoundError) as err:
        select(small, "mnist", opset=9)
    message = str(err.value)
    assert message.startswith("mnist has no version with opset 9. Valid opsets: [1, 8, 7]")
    assert "opset=" in message
    assert isinstance(err.value, AssertionError)


def test_select_empty_manifest() -> None:
    with pytest.raises(ModelNotFoundError, match=r"^No models found with name x"):
        select([], "x")


# --- the real manifest -------------------------------------------------------------------


def test_real_manifest_counts(real: list[ModelInfo]) -> None:
    assert len(real) == 184
    assert len({i.model.lower() for i in real}) == 116
    assert len({t.lower() for i in real for t in i.tags}) == 47
    assert {i.opset for i in real} == {1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 18}
    assert all(i.model_sha is not None and i.model_bytes is not None for i in real)
    assert all(i.model_with_data_path and i.model_with_data_sha for i in real)
    assert max(i.model_bytes or 0 for i in real) == 664_871_060
    total = sum((i.model_bytes or 0) + (i.model_with_data_bytes or 0) for i in real)
    assert total == 46_698_357_246


def test_real_manifest_selection(real: list[ModelInfo]) -> None:
    assert len(filter_models(real, model="mnist", tags=["vision"])) == 3
    assert len(filter_models(real, tags=["vision"])) == 172
    assert len(filter_models(real, tags=["VISION"])) == 172
    assert filter_models(real, tags=[]) == []
    assert filter_models(real) == real
    mnist = select(real, "mnist")
    assert mnist.opset == 8
    assert mnist.model == "MNIST"
    assert str(mnist).startswith(
        "ModelInfo(model=MNIST, opset=8, "
        "path=validated/vision/classification/mnist/model/mnist-8.onnx, metadata={"
    )
    assert all(i.model == "MNIST" for i in filter_models(real, model="mnist"))
    assert select(real, "mnist-12").model == "MNIST-12"
    with pytest.raises(OpsetNotFoundError, match=r"Valid opsets: \[1, 7, 8\]"):
        select(real, "mnist", opset=12)


def test_real_manifest_matches_plain_json(real_bytes: bytes, real: list[ModelInfo]) -> None:
    raw = json.loads(real_bytes)
    assert [i.raw_model_info for i in real] == raw
    assert [i.model_path for i in real] == [e["model_path"] for e in raw]
    assert [i.model_sha for i in real] == [e["metadata"]["model_sha"] for e in raw]


def test_real_manifest_parses_fast(real_bytes: bytes) -> None:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        parse_manifest(real_bytes)
        best = min(best, time.perf_counter() - start)
    assert best < 0.05  # a few ms in practice; generous bound for slow CI machines


def test_real_manifest_mutations_are_caught(real_bytes: bytes) -> None:
    raw = json.loads(real_bytes)
    broken = copy.deepcopy(raw)
    broken[100]["metadata"]["model_with_data_path"] = "validated/../../../etc/passwd"
    with pytest.raises(ManifestError, match=r"entry 100 .*model_with_data_path"):
        parse_manifest(broken)
