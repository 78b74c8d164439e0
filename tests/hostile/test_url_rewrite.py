"""Row 2: manifest paths (and repo names) that would rewrite a mirror URL never send a request
to another host.

The mirror listens on 127.0.0.1 and, where the machine allows it, on 127.0.0.2 at the same
port: the "evil" host of every case below. Its request log must stay empty, and the configured
host must see no request outside the repo's own prefix.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asynchub import AsyncHub, ConfigError, HubError, ManifestError
from tests.conftest import REPO_PREFIX, mirror_config
from tests.hostile.helpers import entry, write_manifest
from tests.mirror import MirrorServer, can_bind

pytestmark = pytest.mark.timeout(60)

EVIL = "127.0.0.2" if can_bind("127.0.0.2") else "127.0.0.1"

#: Paths a hostile manifest may name; ``{evil}`` is the evil host:port.
HOSTILE_PATHS = [
    "//{evil}/evil/x.onnx",
    "///{evil}/evil/x.onnx",
    "http://{evil}/evil/x.onnx",
    "https://{evil}/evil/x.onnx",
    "HTTP://{evil}/evil/x.onnx",
    "file:///etc/passwd",
    "file:/etc/passwd",
    "@{evil}/evil/x.onnx",
    "x.onnx?u=http://{evil}/evil/",
    "x.onnx#@{evil}/evil/",
    "?//{evil}/evil/x.onnx",
    "#//{evil}/evil/x.onnx",
    "..%2F..%2F..%2Fevil%2Fx.onnx",
    "validated/%2e%2e/%2e%2e/%2e%2e/evil/x.onnx",
    "\\\\{evil}\\evil\\x.onnx",
    "validated/x.onnx\r\nHost: {evil}",
    " //{evil}/evil/x.onnx",
]


@pytest.fixture
async def two_host_mirror(mirror_root: Path) -> AsyncIterator[MirrorServer]:
    hosts = ("127.0.0.1", "127.0.0.2") if EVIL == "127.0.0.2" else ("127.0.0.1",)
    async with MirrorServer(mirror_root, hosts=hosts) as server:
        yield server


def _assert_stayed_home(server: MirrorServer) -> None:
    strays = [
        (r.host, r.path)
        for r in server.requests
        if r.host != "127.0.0.1" or not r.path.startswith(f"/{REPO_PREFIX}/")
    ]
    assert strays == [], f"requests left for another host or path: {strays}"


@pytest.mark.parametrize("field", ["model_path", "model_with_data_path"])
@pytest.mark.parametrize("template", HOSTILE_PATHS)
async def test_hostile_path_never_reaches_another_host(
    template: str,
    field: str,
    two_host_mirror: MirrorServer,
    zoo_manifest: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    server = two_host_mirror
    path = template.format(evil=f"{EVIL}:{server.port}")
    hostile = json.loads(json.dumps(entry(zoo_manifest, "TinyNet", 13)))
    if field == "model_path":
        hostile["model_path"] = path
    else:
        hostile["metadata"]["model_with_data_path"] = path
    write_manifest(server, [hostile])
    config = mirror_config(server.url, tmp_path / "cache")
    async with AsyncHub(config) as hub:
        with pytest.raises(HubError) as caught:
            if field == "model_path":
                await hub.download("TinyNet")
            else:
                await hub.download_model_with_test_data("TinyNet")
    assert isinstance(caught.value, ManifestError), caught.value
    assert field in str(caught.value)
    _assert_stayed_home(server)
    assert [r.path for r in server.requests] == [f"/{REPO_PREFIX}/ONNX_HUB_MANIFEST.json"]
    assert not any(p.name.endswith(".onnx") for p in (tmp_path / "cache").rglob("*"))


@pytest.mark.parametrize(
    "repo",
    [
        "{evil}/x",
        "{evil}:80/x",
        "onnx/models:main?x=//{evil}",
        "onnx/models:main#//{evil}",
        "onnx/models:../../../evil",
        "onnx/models:main/../../evil",
        "onnx@{evil}/models",
        "//{evil}/models",
        "onnx/models/../../evil",
        "onnx/models:%2e%2e/evil",
    ],
)
async def test_hostile_repo_spec_is_refused_before_any_request(
    repo: str, two_host_mirror: MirrorServer, tmp_path: Path
) -> None:
    server = two_host_mirror
    spec = repo.format(evil=f"{EVIL}:{server.port}")
    config = mirror_config(server.url, tmp_path / "cache")
    async with AsyncHub(config) as hub:
        with pytest.raises(ConfigError, match="repo"):
            await hub.load("TinyNet", repo=spec, trust_repo=True)
    assert server.requests == []
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.onnx"))


@pytest.mark.parametrize(
    "template",
    ["@evil/x.onnx", "validated/@{evil}/x.onnx", "validated/@{evil};x=1 +é/tiny net.onnx"],
)
async def test_odd_but_valid_path_is_fetched_from_the_configured_host_only(
    template: str,
    two_host_mirror: MirrorServer,
    zoo_manifest: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    """Characters the parser allows (``@``, ``;``, ``=``, spaces, ``+``, non-ASCII, ``:``
    after the first segment) are quoted within their segment: the request reaches the
    configured host, at exactly that path under the repo."""
    server = two_host_mirror
    raw = entry(zoo_manifest, "TinyNet", 13)
    odd = template.format(evil=f"{EVIL}:{server.port}")
    data = (server.root / REPO_PREFIX / raw["model_path"]).read_bytes()
    server.set_file(f"{REPO_PREFIX}/{odd}", data)
    changed = json.loads(json.dumps(raw))
    changed["model_path"] = odd
    write_manifest(server, [changed])
    async with AsyncHub(mirror_config(server.url, tmp_path / "cache")) as hub:
        path = await hub.download("TinyNet")
    assert path.read_bytes() == data
    _assert_stayed_home(server)
    assert any(r.path == f"/{REPO_PREFIX}/{odd}" for r in server.requests)
