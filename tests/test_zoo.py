"""The generated zoo: a real hub manifest and real, runnable ONNX models."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.compose
import onnx.version_converter
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from asynchub._demo.zoo import (
    NETWORK_INPUT,
    NETWORK_OUTPUT,
    PREPROCESS_INPUT,
    ZooModel,
    build_zoo,
    default_zoo,
)

REAL_MANIFEST = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ONNX_HUB_MANIFEST.json"
)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("zoo")
    return root, build_zoo(root)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of ``model`` under onnx's reference evaluator."""
    outputs = ReferenceEvaluator(model).run(None, feeds)
    assert isinstance(outputs, list)
    return np.asarray(outputs[0])


def _archive_tensors(archive: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        top = names[0]

        def tensor(name: str) -> np.ndarray:
            member = tar.extractfile(f"{top}/test_data_set_0/{name}")
            assert member is not None
            return numpy_helper.to_array(onnx.load_tensor_from_string(member.read()))

        return names, tensor("input_0.pb"), tensor("output_0.pb")


def test_manifest_file_matches_returned_list_and_files(
    zoo: tuple[Path, list[dict[str, Any]]],
) -> None:
    root, manifest = zoo
    on_disk = json.loads((root / "ONNX_HUB_MANIFEST.json").read_text(encoding="utf-8"))
    assert on_disk == manifest
    assert len(manifest) == len(default_zoo())
    for entry in manifest:
        assert set(entry) == {"model", "model_path", "onnx_version", "opset_version", "metadata"}
        meta = entry["metadata"]
        assert entry["model_path"].startswith("validated/")
        assert entry["model_path"].endswith(f"-{entry['opset_version']}.onnx")
        model_file = root / entry["model_path"]
        assert _sha256(model_file) == meta["model_sha"]
        assert model_file.stat().st_size == meta["model_bytes"]
        assert meta["tags"] and all(isinstance(tag, str) for tag in meta["tags"])
        for port in meta["io_ports"]["inputs"] + meta["io_ports"]["outputs"]:
            assert set(port) == {"name", "shape", "type"}
            assert port["type"].startswith("tensor(")
        if "model_with_data_path" in meta:
            archive = root / meta["model_with_data_path"]
            assert meta["model_with_data_path"] == entry["model_path"][:-5] + ".tar.gz"
            assert _sha256(archive) == meta["model_with_data_sha"]
            assert archive.stat().st_size == meta["model_with_data_bytes"]


def test_default_zoo_covers_selection_features(zoo: tuple[Path, list[dict[str, Any]]]) -> None:
    root, manifest = zoo
    names = {entry["model"] for entry in manifest}
    assert len(names) >= 4
    tiny = [entry["opset_version"] for entry in manifest if entry["model"] == "TinyNet"]
    assert len(tiny) >= 3
    assert any("model_with_data_path" not in entry["metadata"] for entry in manifest)
    vision = [entry for entry in manifest if "vision" in entry["metadata"]["tags"]]
    assert len({entry["model"] for entry in vision}) >= 2
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 2_000_000


def test_entry_keys_are_those_of_the_real_manifest(zoo: tuple[Path, list[dict[str, Any]]]) -> None:
    if not REAL_MANIFEST.is_file():
        pytest.skip("the real ONNX hub manifest is not beside this checkout")
    real = json.loads(REAL_MANIFEST.read_text(encoding="utf-8"))
    real_keys = {key for entry in real for key in entry}
    real_meta_keys = {key for entry in real for key in entry["metadata"]}
    _, manifest = zoo
    for entry in manifest:
        assert set(entry) <= real_keys
        assert set(entry["metadata"]) <= real_meta_keys


def test_models_check_run_and_reproduce_test_data(zoo: tuple[Path, list[dict[str, Any]]]) -> None:
    root, manifest = zoo
    checked = 0
    for entry in manifest:
        model = onnx.load(str(root / entry["model_path"]))
        onnx.checker.check_model(model, full_check=True)
        assert [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")] == [
            entry["opset_version"]
        ]
        ports = entry["metadata"]["io_ports"]
        assert [v.name for v in model.graph.input] == [p["name"] for p in ports["inputs"]]
        assert [v.name for v in model.graph.output] == [p["name"] for p in ports["outputs"]]
        meta = entry["metadata"]
        if "model_with_data_path" not in meta:
            continue
        names, given, expected = _archive_tensors(root / meta["model_with_data_path"])
        top = names[0]
        assert f"{top}/model.onnx" in names
        assert all(name == top or name.startswith(f"{top}/") for name in names)
        with tarfile.open(root / meta["model_with_data_path"]) as tar:
            member = tar.extractfile(f"{top}/model.onnx")
            assert member is not None
            assert hashlib.sha256(member.read()).hexdigest() == meta["model_sha"]
        result = _run(model, {model.graph.input[0].name: given})
        np.testing.assert_array_equal(result, expected)
        checked += 1
    assert checked >= 4


def test_archives_carry_no_timestamps(zoo: tuple[Path, list[dict[str, Any]]]) -> None:
    root, manifest = zoo
    for entry in manifest:
        path = entry["metadata"].get("model_with_data_path")
        if path is None:
            continue
        header = (root / path).read_bytes()[:10]
        assert header[:2] == b"\x1f\x8b"
        assert header[4:8] == b"\0\0\0\0"  # gzip MTIME
        with tarfile.open(root / path) as tar:
            assert {member.mtime for member in tar.getmembers()} == {0}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    models = default_zoo()[:3]
    first = build_zoo(tmp_path / "a", models, seed=7)
    second = build_zoo(tmp_path / "b", models, seed=7)
    other = build_zoo(tmp_path / "c", models, seed=8)
    assert first == second
    assert (tmp_path / "a" / "ONNX_HUB_MANIFEST.json").read_bytes() == (
        tmp_path / "b" / "ONNX_HUB_MANIFEST.json"
    ).read_bytes()
    assert {e["metadata"]["model_sha"] for e in first}.isdisjoint(
        e["metadata"]["model_sha"] for e in other
    )


def test_size_target_is_met_within_five_percent(tmp_path: Path) -> None:
    target = 20 * 1024 * 1024
    [entry] = build_zoo(
        tmp_path, [ZooModel("Bulky", 13, ("vision",), size=target, test_data=False)]
    )
    assert abs(entry["metadata"]["model_bytes"] - target) <= 0.05 * target
    model = onnx.load(str(tmp_path / entry["model_path"]))
    onnx.checker.check_model(model)
    width = entry["metadata"]["io_ports"]["inputs"][0]["shape"][1]
    out = _run(model, {NETWORK_INPUT: np.ones((2, width), np.float32)})
    assert out.shape[0] == 2 and (out >= 0).all()


def test_preprocess_model_composes_in_front_of_its_network(
    zoo: tuple[Path, list[dict[str, Any]]],
) -> None:
    root, manifest = zoo
    by_name: dict[str, dict[str, Any]] = {}
    for entry in manifest:  # the highest opset of each name, as the hub picks it
        best = by_name.get(entry["model"])
        if best is None or entry["opset_version"] > best["opset_version"]:
            by_name[entry["model"]] = entry
    network_entry, pre_entry = by_name["TinyNet"], by_name["TinyNet-preproc"]
    assert pre_entry["opset_version"] < network_entry["opset_version"]
    assert pre_entry["metadata"]["io_ports"]["outputs"][0]["name"] == NETWORK_INPUT
    assert pre_entry["metadata"]["io_ports"]["inputs"][0]["name"] == PREPROCESS_INPUT
    assert network_entry["metadata"]["io_ports"]["outputs"][0]["name"] == NETWORK_OUTPUT
    network = onnx.load(str(root / network_entry["model_path"]))
    pre = onnx.load(str(root / pre_entry["model_path"]))
    # What onnx.hub.load_composite_model does: raise the lower opset, align IR, merge.
    pre = onnx.version_converter.convert_version(pre, network_entry["opset_version"])
    pre.ir_version = network.ir_version
    onnx.checker.check_model(pre)
    io_map = [(o.name, i.name) for o, i in zip(pre.graph.output, network.graph.input, strict=True)]
    merged = onnx.compose.merge_models(pre, network, io_map=io_map)
    onnx.checker.check_model(merged)
    width = network_entry["metadata"]["io_ports"]["inputs"][0]["shape"][1]
    pixels = np.arange(width, dtype=np.uint8).reshape(1, width)
    combined = _run(merged, {PREPROCESS_INPUT: pixels})
    alone = _run(network, {NETWORK_INPUT: pixels.astype(np.float32) * np.float32(1 / 255)})
    np.testing.assert_allclose(combined, alone, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("opset", [1, 5, 18])
def test_any_opset_gives_a_valid_model(tmp_path: Path, opset: int) -> None:
    [entry] = build_zoo(tmp_path, [ZooModel("Odd", opset, ("misc",))])
    model = onnx.load(str(tmp_path / entry["model_path"]))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == opset


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (ZooModel("X", 13, ("a",), kind="weird"), "unknown kind"),
        (ZooModel("X", 0, ("a",)), "opset"),
        (ZooModel("X", 13, ("a",), size=-1), "size"),
        (ZooModel("X-preproc", 6, ("a",), kind="preprocess"), "opset >= 7"),
    ],
)
def test_bad_models_are_rejected(tmp_path: Path, model: ZooModel, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_zoo(tmp_path, [model])


def test_duplicate_name_and_opset_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="twice"):
        build_zoo(tmp_path, [ZooModel("A", 13, ("a",)), ZooModel("a", 13, ("b",))])
