"""A generated zoo of real, runnable ONNX models laid out like the ONNX Model Zoo hub.

The demo command, the tests and the benchmarks need a hub they can serve from 127.0.0.1: a
``ONNX_HUB_MANIFEST.json`` with the same shape as the real one and real model files (plus the
``.tar.gz`` test-data archives) at the ``validated/...`` paths the manifest names. This module
writes such a tree; :mod:`asynchub._demo.static_server` (or any HTTP server) serves it.

Choices:

* Two kinds of model. ``"affine"`` computes ``Relu(x @ W + b)`` with ``x: [batch, N]``,
  ``W: [N, M]``; MatMul, Add and Relu exist from opset 1, so every opset 1..current works
  (below opset 7, Add is given the legacy ``broadcast=1`` attribute). ``"preprocess"`` casts
  ``uint8`` pixels to float and scales them by 1/255; its shape is symbolic
  (``[batch, features]``) so it feeds any network of the zoo, and its output is named
  ``data``, exactly the input name of every affine network, as onnx.hub's
  ``load_composite_model`` expects of a ``<Network>-preproc`` model.
* IR version: the smallest the opset allows, but at least 4 (IR 3 would require every
  initializer to be repeated as a graph input).
* ``size`` is reached by sizing ``W``: ``M`` is about the square root of the weight count
  (capped at 4096) so that inputs and outputs of the test data stay small even for 1 GiB models.
  Weights come from ``numpy``'s PCG64 seeded per model from ``(seed, name, opset)``.
* Determinism: fixed producer fields and no timestamps anywhere (tar members have
  ``mtime = 0``, uid/gid 0, no user names; the gzip header has ``mtime = 0`` and no file name),
  so the same seed always gives the same bytes and the same SHA-256.
* Memory and speed: the big weight matrix never goes through ``SerializeToString`` (which
  would hold three copies of it). The file is written as the serialized model without ``W``,
  then the ``graph`` field, whose last ``initializer`` is ``W`` with its ``raw_data`` written
  straight from the numpy array (protobuf parsers accept fields in any order and append
  repeated fields). The peak is about 1x the model size; a 1 GiB model takes a few seconds.
  Test outputs come from ``ReferenceEvaluator`` on the written file; above 64 MiB they come
  from the same formula in numpy (``relu(x @ W + b)``) to avoid loading the model twice.
  Archives are streamed from the written model file; above 64 MiB they are stored at gzip
  level 0, as random floats barely compress and level 6 would spend a minute per GiB.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

__all__ = [
    "NETWORK_INPUT",
    "NETWORK_OUTPUT",
    "PREPROCESS_INPUT",
    "ZooModel",
    "build_zoo",
    "default_zoo",
]

logger = logging.getLogger("asynchub")

#: Input name of every affine network (and output name of every preprocessing model).
NETWORK_INPUT = "data"
#: Output name of every affine network.
NETWORK_OUTPUT = "scores"
#: Input name of every preprocessing model (``uint8`` pixels).
PREPROCESS_INPUT = "pixels"

_MANIFEST_NAME = "ONNX_HUB_MANIFEST.json"
_PRODUCER_NAME = "asynchub.zoo"
_PRODUCER_VERSION = "1"
_KINDS = ("affine", "preprocess")
_MIN_DIM = 8  # N and M of a minimal model
_MAX_M = 4096
_OVERHEAD_GUESS = 400  # bytes of a model file that are not weights
_BIG_MODEL = 64 * 1024 * 1024
_TAR_MTIME = 0
_WRITE_BLOCK = 16 * 1024 * 1024


@dataclass(frozen=True)
class ZooModel:
    """One manifest entry of a generated zoo.

    ``size`` is the approximate size of the ``.onnx`` file in bytes (0 = minimal, a few hundred
    bytes); it is honoured within a few kilobytes for affine models and ignored for
    preprocessing models. ``test_data=False`` leaves out the ``model_with_data_*`` fields and
    the archive, as some real zoo entries do.
    """

    name: str
    opset: int
    tags: tuple[str, ...]
    size: int = 0
    test_data: bool = True
    kind: str = "affine"


def default_zoo() -> list[ZooModel]:
    """A small zoo (about 1.5 MB on disk) covering the manifest features the hub relies on.

    ``TinyNet`` at opsets 7, 12 and 13 (the latest is the default pick), ``TinyNet-preproc``
    (opset 12, lower than its network so that composing it converts versions), ``MicroNet``
    without test data, ``NanoText`` under other tags and ``LegacyNet`` at the old opset 6.
    The tag ``vision`` is shared by four names, ``classification`` by three.
    """
    vision_cls = ("vision", "classification")
    return [
        ZooModel("TinyNet", 7, (*vision_cls, "tinynet")),
        ZooModel("TinyNet", 12, (*vision_cls, "tinynet")),
        ZooModel("TinyNet", 13, (*vision_cls, "tinynet"), size=400_000),
        ZooModel(
            "TinyNet-preproc", 12, (*vision_cls, "tinynet", "preprocessing"), kind="preprocess"
        ),
        ZooModel(
            "MicroNet",
            11,
            ("vision", "object detection segmentation", "micronet"),
            size=100_000,
            test_data=False,
        ),
        ZooModel("NanoText", 10, ("text", "machine comprehension", "nanotext"), size=300_000),
        ZooModel("LegacyNet", 6, (*vision_cls, "legacynet")),
    ]


def _slug(text: str, sep: str) -> str:
    return re.sub(r"[^a-z0-9]+", sep, text.lower()).strip(sep) or "model"


def _rel_paths(model: ZooModel) -> tuple[str, str]:
    """``(model_path, model_with_data_path)`` shaped like the real zoo's paths."""
    category = "/".join(_slug(tag, "_") for tag in model.tags[:2]) or "misc"
    lower = _slug(model.name, "-")
    if model.kind == "preprocess":
        network = _slug(re.sub(r"(?i)[-_]?preproc(ess(ing)?)?$", "", model.name), "-")
        folder = f"validated/{category}/{network}/preproc"
    else:
        folder = f"validated/{category}/{lower}/model"
    stem = f"{folder}/{lower}-{model.opset}"
    return f"{stem}.onnx", f"{stem}.tar.gz"


def _model_seed(seed: int, model: ZooModel) -> int:
    digest = hashlib.sha256(f"{seed}\0{model.name}\0{model.opset}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _ir_version(opset: int) -> int:
    candidates = [row[1] for row in helper.VERSION_TABLE if row[2] >= opset]
    if not candidates:
        raise ValueError(
            f"opset {opset} is newer than this onnx package knows; "
            f"upgrade onnx or pick an opset <= {helper.VERSION_TABLE[-1][2]}"
        )
    return max(4, min(candidates))


def _dims(size: int) -> tuple[int, int]:
    """``(N, M)`` so that ``4 * (N * M + M)`` bytes of weights give a file of about ``size``."""
    if size <= 0:
        return _MIN_DIM, _MIN_DIM
    floats = max(1, (size - _OVERHEAD_GUESS) // 4)
    m = min(max(math.isqrt(floats), 1), _MAX_M)
    n = max(1, round((floats - m) / m))
    return n, m


@dataclass(frozen=True)
class _Weight:
    """The weight matrix written after the rest of the model, and the bias it goes with."""

    name: str
    array: np.ndarray
    bias: np.ndarray


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_field(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(length)


_GRAPH_FIELD = 7  # ModelProto.graph
_INITIALIZER_FIELD = 5  # GraphProto.initializer
_RAW_DATA_FIELD = 9  # TensorProto.raw_data


def _write_model(target: Path, proto: onnx.ModelProto, weight: _Weight | None) -> tuple[str, int]:
    """Write ``proto`` plus ``weight`` as the graph's last initializer; ``(sha256, size)``."""
    digest = hashlib.sha256()
    with target.open("wb") as stream:

        def emit(chunk: bytes | memoryview) -> None:
            digest.update(chunk)
            stream.write(chunk)

        if weight is None:
            emit(proto.SerializeToString())
        else:
            head = onnx.ModelProto()
            head.CopyFrom(proto)
            head.ClearField("graph")
            tensor_head = onnx.TensorProto(
                name=weight.name, data_type=TensorProto.FLOAT, dims=list(weight.array.shape)
            ).SerializeToString()
            raw = np.ascontiguousarray(weight.array, dtype="<f4").data.cast("B")
            raw_head = _length_field(_RAW_DATA_FIELD, raw.nbytes)
            tensor_len = len(tensor_head) + len(raw_head) + raw.nbytes
            graph_head = proto.graph.SerializeToString()
            tensor_field = _length_field(_INITIALIZER_FIELD, tensor_len)
            graph_len = len(graph_head) + len(tensor_field) + tensor_len
            for chunk in (
                head.SerializeToString(),
                _length_field(_GRAPH_FIELD, graph_len),
                graph_head,
                tensor_field,
                tensor_head,
                raw_head,
            ):
                emit(chunk)
            for start in range(0, raw.nbytes, _WRITE_BLOCK):
                emit(raw[start : start + _WRITE_BLOCK])
    return digest.hexdigest(), target.stat().st_size


def _finish(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=_ir_version(opset),
        producer_name=_PRODUCER_NAME,
        producer_version=_PRODUCER_VERSION,
    )
    return model


def _affine_model(model: ZooModel, rng: np.random.Generator) -> tuple[onnx.ModelProto, _Weight]:
    """The model without its weight matrix, and that matrix (see :func:`_write_model`)."""
    n, m = _dims(model.size)
    prefix = _slug(model.name, "_")
    add_attrs: dict[str, Any] = {"broadcast": 1} if model.opset < 7 else {}
    nodes = [
        helper.make_node(
            "MatMul", [NETWORK_INPUT, f"{prefix}_W"], [f"{prefix}_mm"], name=f"{prefix}_matmul"
        ),
        helper.make_node(
            "Add",
            [f"{prefix}_mm", f"{prefix}_b"],
            [f"{prefix}_affine"],
            name=f"{prefix}_add",
            **add_attrs,
        ),
        helper.make_node("Relu", [f"{prefix}_affine"], [NETWORK_OUTPUT], name=f"{prefix}_relu"),
    ]
    # Uniform in [-1, 1) / sqrt(N), scaled in place: one copy of the weights.
    weights = rng.random((n, m), dtype=np.float32)
    weights *= np.float32(2.0 / math.sqrt(n))
    weights -= np.float32(1.0 / math.sqrt(n))
    bias = (rng.random(m, dtype=np.float32) - np.float32(0.5)) * np.float32(0.1)
    graph = helper.make_graph(
        nodes,
        prefix,
        [helper.make_tensor_value_info(NETWORK_INPUT, TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info(NETWORK_OUTPUT, TensorProto.FLOAT, ["batch", m])],
        [numpy_helper.from_array(bias, f"{prefix}_b")],
    )
    return _finish(graph, model.opset), _Weight(f"{prefix}_W", weights, bias)


def _preprocess_model(model: ZooModel) -> onnx.ModelProto:
    prefix = _slug(model.name, "_")
    shape: list[str | int] = ["batch", "features"]
    nodes = [
        helper.make_node(
            "Cast",
            [PREPROCESS_INPUT],
            [f"{prefix}_float"],
            name=f"{prefix}_cast",
            to=TensorProto.FLOAT,
        ),
        helper.make_node(
            "Mul",
            [f"{prefix}_float", f"{prefix}_scale"],
            [NETWORK_INPUT],
            name=f"{prefix}_scale_mul",
        ),
    ]
    graph = helper.make_graph(
        nodes,
        prefix,
        [helper.make_tensor_value_info(PREPROCESS_INPUT, TensorProto.UINT8, shape)],
        [helper.make_tensor_value_info(NETWORK_INPUT, TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), f"{prefix}_scale")],
    )
    return _finish(graph, model.opset)


def _features(proto: onnx.ModelProto, default: int) -> int:
    dim = proto.graph.input[0].type.tensor_type.shape.dim[1]
    return dim.dim_value if dim.HasField("dim_value") else default


def _sample_input(proto: onnx.ModelProto, kind: str, rng: np.random.Generator) -> np.ndarray:
    features = _features(proto, _MIN_DIM)
    if kind == "preprocess":
        return rng.integers(0, 256, size=(1, features), dtype=np.uint8)
    return rng.random((1, features), dtype=np.float32)


def _io_ports(proto: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    def port(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
        elem = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        type_name = {"float32": "float", "float64": "double"}.get(elem.name, elem.name)
        return {"name": value.name, "shape": shape, "type": f"tensor({type_name})"}

    return {
        "inputs": [port(v) for v in proto.graph.input],
        "outputs": [port(v) for v in proto.graph.output],
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _tar_member(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = _TAR_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.mode = 0o644
        info.size = size
    return info


def _write_archive(
    target: Path, top: str, model_file: Path, tensors: Sequence[tuple[str, bytes]]
) -> None:
    """Write ``top/model.onnx`` and ``top/test_data_set_0/*.pb`` as a reproducible tar.gz."""
    level = 0 if model_file.stat().st_size > _BIG_MODEL else 6
    with (
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=level) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.addfile(_tar_member(top, 0, directory=True))
        with model_file.open("rb") as model_stream:
            tar.addfile(_tar_member(f"{top}/model.onnx", model_file.stat().st_size), model_stream)
        tar.addfile(_tar_member(f"{top}/test_data_set_0", 0, directory=True))
        for name, payload in tensors:
            tar.addfile(
                _tar_member(f"{top}/test_data_set_0/{name}", len(payload)), io.BytesIO(payload)
            )


def _build_one(out_dir: Path, model: ZooModel, *, seed: int, onnx_version: str) -> dict[str, Any]:
    rng = np.random.default_rng(_model_seed(seed, model))
    weight: _Weight | None = None
    if model.kind == "affine":
        proto, weight = _affine_model(model, rng)
    else:
        proto = _preprocess_model(model)
    model_path, data_path = _rel_paths(model)
    target = out_dir / model_path
    target.parent.mkdir(parents=True, exist_ok=True)
    sha, size = _write_model(target, proto, weight)
    full: onnx.ModelProto | None = None
    if size < _BIG_MODEL:  # a real check of what was written; big ones skip the reload
        full = onnx.load(str(target))
        onnx.checker.check_model(full)
    metadata: dict[str, Any] = {
        "model_sha": sha,
        "model_bytes": size,
        "tags": list(model.tags),
        "io_ports": _io_ports(proto),
    }
    if model.test_data:
        sample = _sample_input(proto, model.kind, rng)
        if full is not None:
            feeds = {proto.graph.input[0].name: sample}
            outputs = cast("list[Any]", ReferenceEvaluator(full).run(None, feeds))
            result = np.asarray(outputs[0])
        else:
            assert weight is not None  # only affine models get big
            result = np.maximum(sample @ weight.array + weight.bias, np.float32(0))
        tensors = [
            (
                "input_0.pb",
                numpy_helper.from_array(sample, proto.graph.input[0].name).SerializeToString(),
            ),
            (
                "output_0.pb",
                numpy_helper.from_array(result, proto.graph.output[0].name).SerializeToString(),
            ),
        ]
        archive = out_dir / data_path
        _write_archive(archive, _slug(model.name, "-"), target, tensors)
        metadata["model_with_data_path"] = data_path
        metadata["model_with_data_sha"] = _sha256(archive)
        metadata["model_with_data_bytes"] = archive.stat().st_size
    logger.debug("zoo: wrote %s (%d bytes)", model_path, metadata["model_bytes"])
    return {
        "model": model.name,
        "model_path": model_path,
        "onnx_version": onnx_version,
        "opset_version": model.opset,
        "metadata": metadata,
    }


def _check_models(models: Sequence[ZooModel]) -> None:
    seen: set[tuple[str, int]] = set()
    for model in models:
        if model.kind not in _KINDS:
            raise ValueError(f"unknown kind {model.kind!r} for {model.name!r}; use one of {_KINDS}")
        if model.opset < 1:
            raise ValueError(f"opset of {model.name!r} must be >= 1, got {model.opset}")
        if model.kind == "preprocess" and model.opset < 7:
            raise ValueError(
                f"preprocessing model {model.name!r} needs opset >= 7, got {model.opset}"
            )
        if model.size < 0:
            raise ValueError(f"size of {model.name!r} must be >= 0, got {model.size}")
        key = (model.name.lower(), model.opset)
        if key in seen:
            raise ValueError(f"{model.name!r} at opset {model.opset} is listed twice")
        seen.add(key)


def build_zoo(
    out_dir: Path,
    models: Sequence[ZooModel] | None = None,
    *,
    seed: int = 0,
    onnx_version: str = "1.14",
) -> list[dict[str, Any]]:
    """Write a hub mirror tree under ``out_dir`` and return its manifest (a list of entries).

    ``out_dir/ONNX_HUB_MANIFEST.json`` lists the entries in the order of ``models`` (default:
    :func:`default_zoo`); each file sits at ``out_dir/<model_path>``. ``onnx_version`` only
    fills the manifest field of that name. Raises ``ValueError`` for an unknown ``kind``, a
    negative size, an opset below 1 (or below 7 for preprocessing) or a repeated name/opset.
    """
    chosen = list(default_zoo() if models is None else models)
    _check_models(chosen)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = [
        _build_one(out_dir, model, seed=seed, onnx_version=onnx_version) for model in chosen
    ]
    (out_dir / _MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


# --- layered models --------------------------------------------------------------------------


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """``(field number, encoded field)`` of every top-level field of a serialized message
    (only varint and length-delimited fields, which is all ONNX protos use here)."""
    out: list[tuple[int, bytes]] = []
    pos = 0

    def varint(at: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, at
            shift += 7

    while pos < len(data):
        key, body = varint(pos)
        if key & 7 == 0:
            end = varint(body)[1]
        elif key & 7 == 2:
            length, start = varint(body)
            end = start + length
        else:  # pragma: no cover - not produced by onnx.helper for these protos
            raise ValueError(f"wire type {key & 7}")
        out.append((key >> 3, data[pos:end]))
        pos = end
    return out


def write_layered_model(
    out_dir: Path,
    name: str,
    *,
    embedding_bytes: int,
    layers: int,
    layer_bytes: int,
    opset: int = 13,
    tags: Sequence[str] = ("layered",),
    seed: int = 0,
) -> dict[str, Any]:
    """Write a model laid out like a transformer's weights and return its manifest entry.

    A ``Gather`` from an embedding table of about ``embedding_bytes`` (float32 ``[vocab,
    hidden]``), then ``layers`` ``MatMul`` weights of about ``layer_bytes`` each (alternately
    ``[hidden, wide]`` and ``[wide, hidden]``), each followed by ``Relu``; e.g. 32 MiB + 28 x
    8 MiB for a 256 MiB model. The file has the field order ``SerializeToString`` gives (nodes,
    name, initializers, inputs, outputs; then the opset imports), but is written one tensor at a
    time, so memory stays at one layer whatever the size. The manifest entry has the zoo's
    shape (``validated/layered/<name>/model/<name>-<opset>.onnx``) without test data.
    """
    rng = np.random.default_rng(_model_seed(seed, ZooModel(name, opset, tuple(tags))))
    layer_floats = max(layer_bytes // 4, 8)
    hidden = 1 << max(1, int(math.log2(max(2, math.isqrt(layer_floats // 2)))))
    wide = max(1, layer_floats // hidden)
    vocab = max(1, embedding_bytes // 4 // hidden)
    prefix = _slug(name, "_")
    shapes = [("embedding", (vocab, hidden))] + [
        (f"layer{i}", (hidden, wide) if i % 2 == 0 else (wide, hidden)) for i in range(layers)
    ]
    nodes = [helper.make_node("Gather", ["embedding", "ids"], ["h_embed"], name="embed")]
    current = "h_embed"
    for i in range(layers):
        out = NETWORK_OUTPUT if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, f"layer{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out], name=f"relu{i}"))
        current = out
    last = (hidden if layers % 2 == 0 else wide) if layers else hidden
    graph = helper.make_graph(
        nodes,
        prefix,
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", "seq", last])],
    )
    proto = _finish(graph, opset)
    tensors = []
    for tensor_name, shape in shapes:
        head = onnx.TensorProto(
            name=tensor_name, data_type=TensorProto.FLOAT, dims=list(shape)
        ).SerializeToString()
        nbytes = 4 * shape[0] * shape[1]
        body_len = len(head) + len(_length_field(_RAW_DATA_FIELD, nbytes)) + nbytes
        tensors.append((shape, head, nbytes, _length_field(_INITIALIZER_FIELD, body_len)))
    graph_fields = _fields(proto.graph.SerializeToString())
    before = b"".join(f for number, f in graph_fields if number < _INITIALIZER_FIELD)
    after = b"".join(f for number, f in graph_fields if number > _INITIALIZER_FIELD)
    graph_len = len(before) + len(after) + sum(len(t[3]) + len(t[1]) + len(
        _length_field(_RAW_DATA_FIELD, t[2])) + t[2] for t in tensors)  # fmt: skip
    head = onnx.ModelProto()
    head.CopyFrom(proto)
    head.ClearField("graph")
    model_fields = _fields(head.SerializeToString())
    rel = f"validated/layered/{_slug(name, '-')}/model/{_slug(name, '-')}-{opset}.onnx"
    target = Path(out_dir) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with target.open("wb") as stream:

        def emit(chunk: bytes | memoryview) -> None:
            digest.update(chunk)
            stream.write(chunk)

        emit(b"".join(f for number, f in model_fields if number < _GRAPH_FIELD))
        emit(_length_field(_GRAPH_FIELD, graph_len) + before)
        for shape, tensor_head, nbytes, field in tensors:
            weights = rng.standard_normal(shape, dtype=np.float32)
            weights *= np.float32(1.0 / math.sqrt(shape[0]))
            emit(field + tensor_head + _length_field(_RAW_DATA_FIELD, nbytes))
            emit(np.ascontiguousarray(weights, dtype="<f4").data.cast("B"))
            del weights
        emit(after)
        emit(b"".join(f for number, f in model_fields if number > _GRAPH_FIELD))
    return {
        "model": name,
        "model_path": rel,
        "onnx_version": "1.14",
        "opset_version": opset,
        "metadata": {
            "model_sha": digest.hexdigest(),
            "model_bytes": target.stat().st_size,
            "tags": list(tags),
            "io_ports": _io_ports(proto),
        },
    }
