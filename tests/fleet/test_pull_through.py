"""nginx in front of the hub: the shipped ``deploy/nginx/*.conf`` run for real.

* pull-through (``deploy/nginx/pull-through.conf``, slice + proxy_cache + proxy_cache_lock, and
  redirects followed inside nginx): four nodes with separate caches load three ~3 MiB models at
  once through nginx (``ASYNCHUB_FILE_URLS=<nginx>,<origin>``) from an origin that redirects
  every file to a one-use signed URL on another host, as Hugging Face does for LFS files; the
  origin serves each file's bytes about once.
* a cache that serves corrupted bytes (a byte flipped in nginx's cache files) is caught by the
  SHA-256: the node falls back to the origin and caches nothing wrong.
* an in-cluster static mirror (``deploy/nginx/static-mirror.conf``) serving what
  ``asynchub mirror`` wrote, as-is, is a complete origin for a fresh cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.fleet.fleetrun import ROOT, final_name, finish_node, leftovers, start_node
from tests.fleet.nginx import DEPLOY, free_port, nginx_running, render
from tests.mirror import MirrorServer

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(600)]

#: Bytes/s of every origin answer: a 1 MiB slice takes 0.5 s, so the nodes' requests overlap.
RATE = 2 * 1024 * 1024
LAYOUT = "/{owner}/{repo}/{ref}"
SLICE = "1m"


@dataclass(frozen=True)
class Cache:
    url: str
    cache_dir: Path


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("nginx fleet tests need root (apt-get install nginx when it is missing)")


@pytest.fixture
def origin(fleet_mirror_root: Path) -> Iterator[MirrorServer]:
    """The origin: like huggingface.co for LFS files, it answers every model file with a 302
    to a signed URL on another host (127.0.0.2) that serves one request only."""
    server = MirrorServer(fleet_mirror_root, hosts=("127.0.0.1", "127.0.0.2"), rate_limit=RATE)
    with server.running():
        for rel in sorted(fleet_mirror_root.rglob("*.onnx")):
            server.add_signed_redirect(str(rel.relative_to(fleet_mirror_root)), "127.0.0.2", 1)
        yield server


@pytest.fixture
def pull_through(origin: MirrorServer, tmp_path: Path) -> Iterator[Cache]:
    _need_root()
    import trustme

    port, fetcher = free_port(), free_port()
    cache_dir = tmp_path / "nginx-cache"
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    site = render(
        DEPLOY / "pull-through.conf",
        {
            "cache_path": f"proxy_cache_path {cache_dir} levels=1:2 keys_zone=asynchub:8m"
            " max_size=1g inactive=1d use_temp_path=off;",
            "listen": f"listen 127.0.0.1:{port};",
            "slice": f"slice {SLICE};",
            "fetcher_url": f"proxy_pass http://127.0.0.1:{fetcher};",
            "fetcher_listen": f"listen 127.0.0.1:{fetcher};",
            "resolver": "# (redirect targets are IP addresses here: no resolver needed)",
            "origin_ca": f"proxy_ssl_trusted_certificate {ca_file};",
            "origin_url": f"proxy_pass http://127.0.0.1:{origin.port};",
        },
    )
    with nginx_running(tmp_path / "nginx", [site], [port, fetcher]):
        yield Cache(f"http://127.0.0.1:{port}", cache_dir)


def _env(manifest_from: str, *file_urls: str) -> dict[str, str]:
    return {
        "ASYNCHUB_MANIFEST_URL": manifest_from + LAYOUT + "/ONNX_HUB_MANIFEST.json",
        "ASYNCHUB_FILE_URLS": ",".join(url + LAYOUT + "/{path}" for url in file_urls),
    }


def _jobs(manifest: list[dict[str, Any]], rotate: int = 0) -> list[list[Any]]:
    jobs = [[e["model"], e["opset_version"]] for e in manifest]
    return jobs[rotate:] + jobs[:rotate]


def _served(server: MirrorServer, entry: dict[str, Any]) -> int:
    return server.served_bytes("*" + PurePosixPath(entry["model_path"]).name)


def _load_all(
    homes: list[Path], env: dict[str, str], manifest: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    procs = [
        start_node(home, None, _jobs(manifest, index), {}, env) for index, home in enumerate(homes)
    ]
    results = [finish_node(proc, timeout=240) for proc in procs]
    by_key = {f"{e['model']}:{e['opset_version']}": e for e in manifest}
    for home, result in zip(homes, results, strict=True):
        assert result["errors"] == [], result
        assert len(result["results"]) == len(manifest)
        for key, (path, digest) in result["results"].items():
            assert digest == by_key[key]["metadata"]["model_sha"]
            assert Path(path) == final_name(home / "hub", by_key[key])
    return results


def _assert_clean(home: Path, manifest: list[dict[str, Any]]) -> None:
    finals = {final_name(home / "hub", e) for e in manifest}
    left = leftovers(home / "hub", finals)
    assert [name for name in left if not name.endswith(".lock")] == []
    for entry in manifest:
        data = final_name(home / "hub", entry).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["metadata"]["model_sha"]


def test_pull_through_cache_fetches_each_file_from_the_origin_once(
    origin: MirrorServer,
    pull_through: Cache,
    fleet_manifest: list[dict[str, Any]],
    tmp_path: Path,
    record_property: Any,
) -> None:
    homes = [tmp_path / f"node{i}" for i in range(4)]
    _load_all(homes, _env(origin.url, pull_through.url, origin.url), fleet_manifest)
    signed = origin.requests_for("/signed/*")
    assert signed and all(r.host == "127.0.0.2" for r in signed), "nginx did not follow"
    figures = []
    for entry in fleet_manifest:
        size, served = entry["metadata"]["model_bytes"], _served(origin, entry)
        figures.append(f"{entry['model']} {served} B from the origin for {size} B")
        assert size <= served <= 1.1 * size, (entry["model"], served, size)
    for home in homes:
        _assert_clean(home, fleet_manifest)
    assert any(pull_through.cache_dir.rglob("*")), "nginx cached nothing"
    summary = "pull-through, 4 nodes x 3 models: " + "; ".join(figures)
    record_property("fleet", summary)
    print(summary)


def _flip_last_byte_of_cached(cache_dir: Path, basename: str) -> int:
    """Corrupt every cached slice of the file named ``basename``; return how many."""
    flipped = 0
    for path in cache_dir.rglob("*"):
        if not path.is_file():
            continue
        data = bytearray(path.read_bytes())
        if basename.encode() not in data[:4096]:
            continue
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        flipped += 1
    return flipped


def test_corrupt_pull_through_cache_is_caught_and_the_origin_used(
    origin: MirrorServer,
    pull_through: Cache,
    fleet_manifest: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    env = _env(origin.url, pull_through.url, origin.url)
    entry = fleet_manifest[0]
    size = entry["metadata"]["model_bytes"]
    _load_all([tmp_path / "warm"], env, [entry])
    assert _served(origin, entry) <= 1.1 * size
    assert (
        _flip_last_byte_of_cached(pull_through.cache_dir, PurePosixPath(entry["model_path"]).name)
        >= 2
    ), "expected several cached slices of the model"
    before = _served(origin, entry)
    home = tmp_path / "fresh"
    _load_all([home], env, [entry])
    # The corrupt copy was detected and the whole file came from the origin.
    assert _served(origin, entry) - before >= size
    _assert_clean(home, [entry])


def test_static_mirror_written_by_asynchub_mirror_served_by_nginx(
    origin: MirrorServer,
    fleet_manifest: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    _need_root()
    site_dir = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHUB_")}
    env.update(_env(origin.url, origin.url), ONNX_HOME=str(tmp_path / "mirror-home"),
               ASYNCHUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "asynchub", "mirror", str(site_dir), "--all"],
        env=env, capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    port = free_port()
    site = render(
        DEPLOY / "static-mirror.conf",
        {"listen": f"listen 127.0.0.1:{port};", "root": f"root {site_dir};"},
    )
    asked = len(origin.requests)
    with nginx_running(tmp_path / "nginx", [site], [port]):
        url = f"http://127.0.0.1:{port}"
        homes = [tmp_path / "node0", tmp_path / "node1"]
        _load_all(homes, _env(url, url), fleet_manifest)
    assert len(origin.requests) == asked, "a node went to the origin"
    for home in homes:
        _assert_clean(home, fleet_manifest)
