"""Hostile manifests: every malformed or malicious entry is refused with ManifestError, and
whatever the parser accepts can neither leave the cache nor change a mirror URL's host."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from asynchub._cache.layout import cache_path
from asynchub._config import HubConfig
from asynchub._exceptions import ManifestError
from asynchub._onnx.manifest import ModelInfo, parse_manifest, validate_path
from asynchub._onnx.urls import RepoSpec, file_urls

SHA = "0" * 64
FAST = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def good() -> dict[str, Any]:
    return {
        "model": "Net",
        "model_path": "validated/vision/net/model/net-7.onnx",
        "onnx_version": "1.9",
        "opset_version": 7,
        "metadata": {
            "model_sha": SHA,
            "model_bytes": 100,
            "tags": ["vision"],
            "model_with_data_path": "validated/vision/net/model/net-7.tar.gz",
            "model_with_data_sha": SHA,
            "model_with_data_bytes": 200,
        },
    }


def top(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(e: dict[str, Any]) -> None:
        e[key] = value

    return mutate


def meta(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(e: dict[str, Any]) -> None:
        e["metadata"][key] = value

    return mutate


def drop(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(e: dict[str, Any]) -> None:
        del e[key]

    return mutate


BAD_PATHS = {
    "empty": "",
    "absolute": "/etc/passwd",
    "unc": "//host/share/m.onnx",
    "backslash": "validated\\m.onnx",
    "backslash-traversal": "..\\..\\m.onnx",
    "nul": "validated/m\x00.onnx",
    "newline": "validated/m\n.onnx",
    "tab": "validated/\tm.onnx",
    "del": "validated/m\x7f.onnx",
    "c1-control": "validated/m\x85.onnx",
    "lone-surrogate": "validated/m\ud800.onnx",
    "drive": "C:/models/m.onnx",
    "drive-relative": "C:m.onnx",
    "empty-segment": "a//b.onnx",
    "trailing-slash": "validated/models/",
    "dot-segment": "./m.onnx",
    "dot-inside": "a/./m.onnx",
    "dotdot": "../m.onnx",
    "dotdot-inside": "validated/../../m.onnx",
    "dotdot-last": "validated/..",
    "segment-256-bytes": "a/" + "x" * 256,
    "segment-256-utf8-bytes": "a/" + "é" * 128,
    "total-4097": "/".join(["x" * 200] * 20) + "/" + "y" * 77,
    "question": "m.onnx?download=1",
    "hash": "m.onnx#frag",
    "percent": "validated/%2e%2e/m.onnx",
    "file-scheme": "file:/etc/passwd",
    "https-scheme": "https://evil.example/m.onnx",
    "colon-first-segment": "host:8080/m.onnx",
    "not-a-string": 42,
    "list": ["a", "b"],
}

BAD_SHAS = {
    "traversal": "../../x",
    "short": "0" * 63,
    "long": "0" * 65,
    "non-hex": "g" * 64,
    "spaces": " " + "0" * 63,
    "int": 123,
    "list": [SHA],
    "empty": "",
}

BAD_SIZES = {
    "negative": -1,
    "float": 100.0,
    "bool": True,
    "nan": float("nan"),
    "inf": float("inf"),
    "string": "100",
    "too-big": 2**50 + 1,
    "list": [1],
}

CASES: dict[str, Callable[[dict[str, Any]], None]] = {
    "model-missing": drop("model"),
    "model-int": top("model", 3),
    "model-null": top("model", None),
    "model-empty": top("model", ""),
    "model-control-char": top("model", "Net\x1b[31m"),
    "model_path-missing": drop("model_path"),
    "model_path-null": top("model_path", None),
    "opset-missing": drop("opset_version"),
    "opset-zero": top("opset_version", 0),
    "opset-negative": top("opset_version", -3),
    "opset-bool": top("opset_version", True),
    "opset-float": top("opset_version", 7.0),
    "opset-string": top("opset_version", "7"),
    "opset-huge": top("opset_version", 2**64),
    "onnx_version-int": top("onnx_version", 1),
    "metadata-list": top("metadata", []),
    "metadata-string": top("metadata", "x"),
    "tags-string": meta("tags", "vision"),
    "tags-int-item": meta("tags", ["vision", 3]),
    "tags-null-item": meta("tags", [None]),
    "tags-object": meta("tags", {"vision": True}),
}
for _name, _value in BAD_PATHS.items():
    CASES[f"model_path-{_name}"] = top("model_path", _value)
    CASES[f"model_with_data_path-{_name}"] = meta("model_with_data_path", _value)
for _name, _value in BAD_SHAS.items():
    CASES[f"model_sha-{_name}"] = meta("model_sha", _value)
    CASES[f"model_with_data_sha-{_name}"] = meta("model_with_data_sha", _value)
for _name, _value in BAD_SIZES.items():
    CASES[f"model_bytes-{_name}"] = meta("model_bytes", _value)
    CASES[f"model_with_data_bytes-{_name}"] = meta("model_with_data_bytes", _value)


def _field(case: str) -> str:
    """The field the error must name: the case id up to its first '-'."""
    return case.split("-")[0].replace("opset", "opset_version")


def test_good_entry_is_accepted() -> None:
    assert parse_manifest([good()])[0].model == "Net"


def test_limits_are_exact() -> None:
    assert len(BAD_PATHS["total-4097"]) == 4097
    longest = "/".join(["x" * 200] * 20) + "/" + "y" * 76
    assert len(longest) == 4096
    segment = "é" * 127 + "x"  # 255 UTF-8 bytes
    entry = good()
    entry["model_path"] = longest
    basename = "é" * 70  # 140 UTF-8 bytes: MAX_BASENAME_BYTES, the longest cacheable name
    entry["metadata"]["model_with_data_path"] = f"{segment}/{basename}"
    info = parse_manifest([entry])[0]
    assert info.model_path == longest
    assert info.model_with_data_path == f"{segment}/{basename}"
    entry["metadata"]["model_with_data_path"] = f"a/{basename}x"
    with pytest.raises(ManifestError, match="141 bytes"):
        parse_manifest([entry])
    entry["metadata"]["model_with_data_path"] = f"a/{basename}"
    entry["metadata"]["model_bytes"] = 2**50
    assert parse_manifest([entry])[0].model_bytes == 2**50


@pytest.mark.parametrize("case", sorted(CASES), ids=str)
def test_hostile_entry_refused(case: str) -> None:
    entry = good()
    CASES[case](entry)
    manifest = [good(), entry]
    with pytest.raises(ManifestError) as err:
        parse_manifest(manifest, source="test-manifest")
    message = str(err.value)
    assert message.startswith("test-manifest: entry 1")
    assert repr(_field(case)) in message, message
    if case.startswith("model-") or case == "model_path-missing":
        return
    assert "'Net'" in message  # the model name is known, so it is named
    # The same entry as JSON text (when JSON can carry it) is refused too, and so is the
    # entry given directly to ModelInfo.
    try:
        text = json.dumps(manifest, allow_nan=False)
    except ValueError:
        text = None
    if text is not None:
        with pytest.raises(ManifestError):
            parse_manifest(text.encode())
    with pytest.raises(ManifestError):
        ModelInfo(entry)


JSON_CASES: dict[str, Any] = {
    "object-top-level": b'{"model": "x"}',
    "string-top-level": b'"manifest"',
    "null-top-level": b"null",
    "number-top-level": b"3",
    "entry-not-object": b"[1]",
    "entry-list": b"[[]]",
    "entry-string": b'["MNIST"]',
    "invalid-json": b"[{",
    "trailing-garbage": b"[] []",
    "empty": b"",
    "not-utf8": b'["\xff\xfe\xfa"]',
    "nan-literal": b'[{"model": NaN}]',
    "infinity-literal": b"[Infinity]",
    "neg-infinity-literal": b"[-Infinity]",
    "overflowing-float": b"[1e999]",
    "huge-integer": b"[" + b"9" * 5000 + b"]",
    "duplicate-key": b'[{"model": "a", "model": "b"}]',
    "duplicate-escaped-key": b'[{"model": "a", "mod\\u0065l": "b"}]',
    "duplicate-key-deep": b'[{"metadata": {"io": [{"n": 1, "n": 2}]}}]',
    "nested-33": b"[" * 33 + b"]" * 33,
    "nested-100000": b"[" * 100_000 + b"]" * 100_000,
    "str-bom": "\ufeff[]",
    "python-object": {"model": "x"},
    "python-none": None,
    "python-tuple-entry": [("model", "x")],
    "python-set-value": [{**good(), "extra": {1, 2}}],
    "python-int-key": [{**good(), 1: "x"}],
    "python-nan-value": [{**good(), "extra": float("nan")}],
}


@pytest.mark.parametrize("case", sorted(JSON_CASES), ids=str)
def test_hostile_json_refused(case: str) -> None:
    with pytest.raises(ManifestError, match=r"^manifest: "):
        parse_manifest(JSON_CASES[case])


def test_manifest_over_64_mib_refused() -> None:
    data = b"[" + b" " * (64 * 1024 * 1024) + b"]"
    with pytest.raises(ManifestError, match="limit"):
        parse_manifest(data)


# --- properties ----------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
segments = st.one_of(
    st.sampled_from(["validated", "vision", "model", "m.onnx", ".", "..", "", "C:", "a b"]),
    st.text(min_size=0, max_size=12),
)
paths = st.one_of(st.lists(segments, min_size=1, max_size=5).map("/".join), st.text(max_size=40))
shas = st.one_of(st.just(SHA), st.text(alphabet="0123456789abcdefABCDEF", min_size=63, max_size=65))
entries = st.fixed_dictionaries(
    {
        "model": st.one_of(st.text(max_size=10), json_scalars),
        "model_path": st.one_of(paths, json_scalars),
        "opset_version": st.one_of(st.integers(min_value=-2, max_value=30), json_scalars),
        "metadata": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "model_sha": st.one_of(shas, json_scalars),
                    "model_bytes": st.one_of(st.integers(-5, 2**51), json_scalars),
                    "tags": st.one_of(st.lists(st.text(max_size=5), max_size=3), json_values),
                    "model_with_data_path": st.one_of(paths, json_scalars),
                    "io_ports": json_values,
                },
            ),
            json_values,
        ),
    },
    optional={"onnx_version": st.one_of(st.just("1.9"), json_scalars)},
)
finite_json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
valid_shas = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)
safe_segments = st.text(alphabet="abcXYZ019-_. é", min_size=1, max_size=10)
safe_paths = st.lists(
    safe_segments.filter(lambda s: s not in {".", ".."}),
    min_size=1,
    max_size=4,
).map("/".join)
valid_entries = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["Net", "MNIST", "mnist", "ResNet-50"]),
        "model_path": safe_paths,
        "opset_version": st.integers(min_value=1, max_value=20),
        "metadata": st.fixed_dictionaries(
            {"model_sha": valid_shas, "model_bytes": st.integers(0, 2**50)},
            optional={
                "tags": st.lists(st.text(max_size=5), max_size=3),
                "model_with_data_path": safe_paths,
                "io_ports": finite_json_values,
            },
        ),
    }
)
documents = st.one_of(
    st.lists(st.one_of(valid_entries, entries, json_values), max_size=4), json_values
)


def encodings(doc: Any) -> st.SearchStrategy[Any]:
    text = json.dumps(doc)
    return st.sampled_from([doc, text, text.encode(), text.encode("utf-16")])


@FAST
@given(data=st.one_of(documents.flatmap(encodings), st.binary(max_size=64), st.text(max_size=64)))
def test_parse_only_returns_or_raises_manifest_error(data: Any) -> None:
    try:
        result = parse_manifest(data)
    except ManifestError as exc:
        event("refused")
        assert str(exc)
    else:
        event("accepted, empty" if not result else "accepted, with entries")
        assert isinstance(result, list)
        assert all(isinstance(info, ModelInfo) for info in result)
        for info in result:
            validate_path(info.model_path, where="re-check")


@FAST
@given(doc=st.lists(valid_entries, max_size=5))
def test_valid_entries_round_trip(doc: list[dict[str, Any]]) -> None:
    infos = parse_manifest(json.dumps(doc).encode())
    assert [i.model for i in infos] == [e["model"] for e in doc]
    assert [i.model_path for i in infos] == [e["model_path"] for e in doc]
    assert [i.opset for i in infos] == [e["opset_version"] for e in doc]
    assert [i.model_sha for i in infos] == [e["metadata"]["model_sha"].lower() for e in doc]
    assert [i.tags for i in infos] == [set(e["metadata"].get("tags", [])) for e in doc]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hub").resolve()


def _accepted(path: str) -> str:
    try:
        return validate_path(path, where="property")
    except ManifestError:
        assume(False)
        raise


@FAST
@given(path=paths)
def test_accepted_paths_stay_inside_cache(cache_root: Path, path: str) -> None:
    accepted = _accepted(path)
    final = cache_path(cache_root, accepted, SHA)
    normalised = os.path.normpath(final)
    assert normalised.startswith(str(cache_root) + os.sep)
    assert final.resolve().is_relative_to(cache_root)
    assert final.name.startswith(SHA + "_")
    assert final.parent.relative_to(cache_root).parts == tuple(accepted.split("/")[:-1])


@FAST
@given(path=paths)
def test_accepted_paths_keep_mirror_origin(cache_root: Path, path: str) -> None:
    accepted = _accepted(path)
    config = HubConfig(
        cache_dir=cache_root, file_urls=("http://127.0.0.1:8080/{owner}/{repo}/{ref}/{path}",)
    )
    urls = file_urls(config, RepoSpec.parse("onnx/models"), accepted)
    assert len(urls) == 1
    for url in urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.port) == ("http", "127.0.0.1", 8080)
        assert parts.path.startswith("/onnx/models/main/")
        assert parts.query == "" and parts.fragment == ""
        assert parts.path.count("/") == 4 + accepted.count("/")


hosts = st.sampled_from(
    ["127.0.0.1", "localhost", "mirror.example.org", "[::1]", "xn--bcher-kva.de"]
)
ports = st.one_of(st.none(), st.integers(min_value=1, max_value=65535))


@FAST
@given(path=paths, scheme=st.sampled_from(["http", "https"]), host=hosts, port=ports,
       prefix=st.sampled_from(["", "/resolve/main", "/{owner}/{repo}/{ref}"]))  # fmt: skip
def test_accepted_paths_keep_any_configured_origin(
    cache_root: Path, path: str, scheme: str, host: str, port: int | None, prefix: str
) -> None:
    accepted = _accepted(path)
    netloc = host if port is None else f"{host}:{port}"
    config = HubConfig(cache_dir=cache_root, file_urls=(f"{scheme}://{netloc}{prefix}/{{path}}",))
    (url,) = file_urls(config, RepoSpec.parse("someone/zoo:v1"), accepted)
    parts = urlsplit(url)
    assert parts.scheme == scheme
    assert parts.hostname == host.strip("[]").lower()
    assert parts.port == port
    assert parts.query == "" and parts.fragment == "" and "@" not in parts.netloc


# --- end to end: a hostile manifest served by the mirror ------------------------------------

SERVED_CASES: dict[str, Callable[[list[dict[str, Any]]], bytes]] = {
    "dotdot-path": lambda m: json.dumps([{**m[0], "model_path": "../../../etc/passwd"}]).encode(),
    "sha-traversal": lambda m: json.dumps(
        [{**m[0], "metadata": {**m[0]["metadata"], "model_sha": "../../x"}}]
    ).encode(),
    "negative-size": lambda m: json.dumps(
        [{**m[0], "metadata": {**m[0]["metadata"], "model_bytes": -1}}]
    ).encode(),
    "duplicate-key": lambda m: (
        json.dumps(m).encode().replace(b'"model":', b'"model": "Evil", "model":', 1)
    ),
    "deep-nesting": lambda m: b"[" * 5000 + b"]" * 5000,
    "nan-size": lambda m: json.dumps(
        [{**m[0], "metadata": {**m[0]["metadata"], "model_bytes": float("nan")}}]
    ).encode(),
}


@pytest.mark.parametrize("case", sorted(SERVED_CASES))
async def test_served_hostile_manifest_causes_no_file_io(
    case: str, mirror: Any, zoo_manifest: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Through the public API: ``ManifestError``, no request for any file the manifest names,
    nothing written in the cache besides the cached manifest document itself."""
    from asynchub import AsyncHub
    from tests.conftest import REPO_PREFIX, mirror_config

    mirror.set_file(f"{REPO_PREFIX}/ONNX_HUB_MANIFEST.json", SERVED_CASES[case](zoo_manifest))
    config = mirror_config(mirror.url, tmp_path / "cache")
    async with AsyncHub(config) as hub:
        with pytest.raises(ManifestError):
            await hub.load("TinyNet")
        with pytest.raises(ManifestError):
            await hub.download_model_with_test_data("TinyNet")
    assert {r.path for r in mirror.requests} == {f"/{REPO_PREFIX}/ONNX_HUB_MANIFEST.json"}
    written = [p for p in config.cache_dir.rglob("*") if "_manifests" not in p.parts]
    assert written == [], f"the cache was written to: {written}"
    assert not (tmp_path / "etc").exists()
