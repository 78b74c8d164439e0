"""The static mirror server: ranges, validators, traversal, HEAD, pacing."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from asynchub._demo.static_server import StaticMirror
from asynchub._demo.zoo import build_zoo

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes
SIZE = len(PAYLOAD)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[StaticMirror]:
    root = tmp_path / "root"
    (root / "validated" / "m").mkdir(parents=True)
    (root / "validated" / "m" / "model.onnx").write_bytes(PAYLOAD)
    (root / "ONNX_HUB_MANIFEST.json").write_text("[]", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("do not serve", encoding="utf-8")
    with StaticMirror(root) as server:
        yield server


def _get(
    mirror: StaticMirror, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(mirror.url + path, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def _raw(mirror: StaticMirror, path: str) -> int:
    """Status for a path sent byte for byte (urllib could normalise it)."""
    connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        assert b"do not serve" not in body
        return response.status
    finally:
        connection.close()


def test_full_get(mirror: StaticMirror) -> None:
    status, headers, body = _get(mirror, "/validated/m/model.onnx")
    assert status == 200
    assert body == PAYLOAD
    assert headers["Content-Length"] == str(SIZE)
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"].startswith('"') and not headers["ETag"].startswith("W/")
    assert "Last-Modified" in headers
    status, headers, body = _get(mirror, "/ONNX_HUB_MANIFEST.json")
    assert (status, body) == (200, b"[]")
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=10-99", 10, 99),
        ("bytes=10000-", 10000, SIZE - 1),
        ("bytes=-100", SIZE - 100, SIZE - 1),
        ("bytes=5000-999999", 5000, SIZE - 1),
        ("bytes=-999999", 0, SIZE - 1),
    ],
)
def test_single_ranges(mirror: StaticMirror, spec: str, first: int, last: int) -> None:
    status, headers, body = _get(mirror, "/validated/m/model.onnx", {"Range": spec})
    assert status == 206
    assert body == PAYLOAD[first : last + 1]
    assert headers["Content-Range"] == f"bytes {first}-{last}/{SIZE}"
    assert headers["Content-Length"] == str(last - first + 1)


@pytest.mark.parametrize("spec", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 9}", "bytes=-0"])
def test_unsatisfiable_range_is_416(mirror: StaticMirror, spec: str) -> None:
    status, headers, _ = _get(mirror, "/validated/m/model.onnx", {"Range": spec})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "bytes=9-3", "items=0-1", "bytes=x-"])
def test_multi_or_malformed_range_gives_full_body(mirror: StaticMirror, spec: str) -> None:
    status, headers, body = _get(mirror, "/validated/m/model.onnx", {"Range": spec})
    assert status == 200
    assert body == PAYLOAD
    assert "Content-Range" not in headers


def test_if_range(mirror: StaticMirror) -> None:
    _, headers, _ = _get(mirror, "/validated/m/model.onnx", method="HEAD")
    etag, modified = headers["ETag"], headers["Last-Modified"]
    status, _, body = _get(
        mirror, "/validated/m/model.onnx", {"Range": "bytes=0-9", "If-Range": etag}
    )
    assert (status, body) == (206, PAYLOAD[:10])
    status, _, body = _get(
        mirror, "/validated/m/model.onnx", {"Range": "bytes=0-9", "If-Range": modified}
    )
    assert (status, body) == (206, PAYLOAD[:10])
    status, _, body = _get(
        mirror, "/validated/m/model.onnx", {"Range": "bytes=0-9", "If-Range": '"other"'}
    )
    assert (status, body) == (200, PAYLOAD)


def test_etag_changes_when_file_changes(mirror: StaticMirror) -> None:
    path = mirror.root / "validated" / "m" / "model.onnx"
    _, before, _ = _get(mirror, "/validated/m/model.onnx", method="HEAD")
    path.write_bytes(PAYLOAD + b"x")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    _, after, _ = _get(mirror, "/validated/m/model.onnx", method="HEAD")
    assert before["ETag"] != after["ETag"]
    status, _, body = _get(
        mirror, "/validated/m/model.onnx", {"Range": "bytes=0-9", "If-Range": before["ETag"]}
    )
    assert (status, len(body)) == (200, SIZE + 1)


def test_if_none_match_gives_304(mirror: StaticMirror) -> None:
    _, headers, _ = _get(mirror, "/validated/m/model.onnx", method="HEAD")
    status, headers304, body = _get(
        mirror, "/validated/m/model.onnx", {"If-None-Match": headers["ETag"]}
    )
    assert (status, body) == (304, b"")
    assert headers304["ETag"] == headers["ETag"]
    status, _, body = _get(
        mirror, "/validated/m/model.onnx", {"If-None-Match": f'"nope", W/{headers["ETag"]}'}
    )
    assert status == 304
    status, _, body = _get(mirror, "/validated/m/model.onnx", {"If-None-Match": '"nope"'})
    assert (status, body) == (200, PAYLOAD)


def test_head_has_headers_and_no_body(mirror: StaticMirror) -> None:
    status, headers, body = _get(mirror, "/validated/m/model.onnx", method="HEAD")
    assert status == 200
    assert body == b""
    assert headers["Content-Length"] == str(SIZE)
    status, headers, body = _get(
        mirror, "/validated/m/model.onnx", {"Range": "bytes=1-2"}, method="HEAD"
    )
    assert (status, body) == (206, b"")
    assert headers["Content-Range"] == f"bytes 1-2/{SIZE}"


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/validated/../../secret.txt",
        "/validated/%2E%2E/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/validated/..%5c..%5csecret.txt",
        "/%00",
        "/%ff",
    ],
)
def test_traversal_is_refused(mirror: StaticMirror, path: str) -> None:
    assert _raw(mirror, path) in (400, 404)


def test_symlink_out_of_root_is_refused(mirror: StaticMirror) -> None:
    link = mirror.root / "escape.txt"
    link.symlink_to(mirror.root.parent / "secret.txt")
    assert _raw(mirror, "/escape.txt") == 404


@pytest.mark.parametrize("path", ["/missing.onnx", "/validated", "/validated/m/", "/"])
def test_missing_files_and_directories_are_404(mirror: StaticMirror, path: str) -> None:
    status, _, _ = _get(mirror, path)
    assert status == 404


def test_request_count_and_query_strings(mirror: StaticMirror) -> None:
    before = mirror.request_count
    status, _, body = _get(mirror, "/validated/m/model.onnx?download=true")
    assert (status, body) == (200, PAYLOAD)
    _get(mirror, "/missing")
    assert mirror.request_count == before + 2


def test_rate_limit_paces_the_body(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"\0" * 1_000_000)
    with StaticMirror(tmp_path, rate_limit=2_000_000) as slow:
        started = time.monotonic()
        status, _, body = _get(slow, "/blob.bin")
        elapsed = time.monotonic() - started
    assert (status, len(body)) == (200, 1_000_000)
    assert 0.4 <= elapsed < 5.0


def test_latency_delays_each_response(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    with StaticMirror(tmp_path, latency=0.2) as delayed:
        started = time.monotonic()
        assert _get(delayed, "/a")[2] == b"a"
        assert time.monotonic() - started >= 0.2


def test_stop_closes_idle_keep_alive_connections(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"abc")
    server = StaticMirror(tmp_path)
    server.start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", "/a")
        response = connection.getresponse()
        assert response.read() == b"abc"
        assert not response.will_close  # HTTP/1.1 keep-alive
        server.stop()
        server.stop()  # idempotent
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            connection.request("GET", "/a")
            connection.getresponse()
    finally:
        connection.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url + "/a", timeout=5)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        StaticMirror(tmp_path, rate_limit=0)
    with pytest.raises(ValueError, match="latency"):
        StaticMirror(tmp_path, latency=-1)
    with pytest.raises(ValueError, match="not a directory"):
        StaticMirror(tmp_path / "absent")


def test_serves_a_generated_zoo_byte_for_byte(tmp_path: Path) -> None:
    manifest = build_zoo(tmp_path)
    with StaticMirror(tmp_path) as server:
        status, _, body = _get(server, "/ONNX_HUB_MANIFEST.json")
        assert status == 200
        assert json.loads(body) == manifest
        for entry in manifest:
            meta = entry["metadata"]
            for path, sha in [
                (entry["model_path"], meta["model_sha"]),
                (meta.get("model_with_data_path"), meta.get("model_with_data_sha")),
            ]:
                if path is None:
                    continue
                status, _, body = _get(server, "/" + path)
                assert status == 200
                assert hashlib.sha256(body).hexdigest() == sha


def test_large_file_ranges_via_sendfile(tmp_path: Path) -> None:
    blob = os.urandom(5 * 1024 * 1024 + 7)
    (tmp_path / "big.bin").write_bytes(blob)
    with StaticMirror(tmp_path) as server:
        assert _get(server, "/big.bin")[2] == blob
        status, _, body = _get(server, "/big.bin", {"Range": "bytes=3000000-"})
        assert (status, body) == (206, blob[3_000_000:])
