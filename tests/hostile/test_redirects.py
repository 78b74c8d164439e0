"""Row 4: hostile redirects while fetching a model file, end to end through ``AsyncHub``.

Redirects to ``file:``/``data:``/other schemes, from https down to http, loops and chains longer
than the hop limit are refused with a typed error and leave nothing in the cache (no final file,
no partial). A redirect to another host (127.0.0.1 → 127.0.0.2) is followed without the
credentials of the first host: the mirror URL carries ``user:password@``, which the client
turns into an ``Authorization`` header for that host only, and a cookie the first host set is
not sent to the second.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from asynchub import AsyncHub, HubConfig, HubError, MirrorsExhaustedError, ProtocolError
from asynchub._transport.base import MAX_REDIRECTS
from tests.conftest import REPO_PREFIX, mirror_config
from tests.hostile.helpers import entry, final_model, leftovers
from tests.mirror import Fault, MirrorServer, can_bind
from tests.mirror_http import bind_same_port

pytestmark = pytest.mark.timeout(60)

NAME, OPSET = "TinyNet", 13
GLOB = "*tinynet-13.onnx"
TWO_HOSTS = can_bind("127.0.0.2")


def _rel(zoo: list[dict[str, Any]]) -> str:
    return str(entry(zoo, NAME, OPSET)["model_path"])


async def _fetch(config: HubConfig) -> Path | HubError:
    async with AsyncHub(config) as hub:
        try:
            return await hub.download(NAME, opset=OPSET)
        except HubError as exc:
            return exc


def _assert_refused(outcome: Path | HubError, config: HubConfig, zoo: list[dict[str, Any]]) -> str:
    assert isinstance(outcome, MirrorsExhaustedError), outcome
    errors = [err for _, err in outcome.errors]
    assert errors and all(isinstance(err, ProtocolError) for err in errors), errors
    assert not final_model(config.cache_dir, entry(zoo, NAME, OPSET)).exists()
    assert leftovers(config.cache_dir) == [], "a refused redirect left files in the cache"
    return " ".join(str(err) for err in errors)


@pytest.mark.parametrize(
    "location",
    [
        "file:///etc/passwd",
        "file://localhost/etc/hostname",
        "data:application/octet-stream;base64,{payload}",
        "ftp://127.0.0.1/{rel}",
        "gopher://127.0.0.1:70/x",
        "javascript:alert(1)",
        "//:0/x",
        "http://[::1/x",
    ],
)
async def test_redirect_to_a_non_http_target_is_refused(
    location: str, mirror: MirrorServer, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    rel = _rel(zoo_manifest)
    data = (mirror.root / REPO_PREFIX / rel).read_bytes()
    # the data: URL even carries the right bytes: it must be refused all the same
    target = location.format(payload=base64.b64encode(data[:48]).decode(), rel=rel)
    fault = mirror.add_fault(Fault("redirect", path=GLOB, location=target, times=None))
    outcome = await _fetch(hub_config)
    assert fault.hits == 1, "a refused redirect must not be retried"
    _assert_refused(outcome, hub_config, zoo_manifest)


async def test_redirect_loop_is_refused(
    mirror: MirrorServer, hub_config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    rel = _rel(zoo_manifest)
    mirror.add_fault(Fault("redirect", path=GLOB, location=f"/{REPO_PREFIX}/{rel}", times=None))
    message = _assert_refused(await _fetch(hub_config), hub_config, zoo_manifest)
    assert "redirected more than" in message
    assert len(mirror.requests_for(GLOB)) == MAX_REDIRECTS + 1


def _chain(mirror: MirrorServer, rel: str, hops: int) -> str:
    """``/hop0/<file>`` → ``/hop1/<file>`` → ... → the real file after ``hops`` redirects."""
    for index in range(hops):
        nxt = (
            f"/hop{index + 1}/{REPO_PREFIX}/{rel}" if index + 1 < hops else f"/{REPO_PREFIX}/{rel}"
        )
        mirror.add_fault(Fault("redirect", path=f"/hop{index}/*", location=nxt, times=None))
    return mirror.url + "/hop0/{owner}/{repo}/{ref}/{path}"


async def test_redirect_chain_within_the_limit_is_followed(
    mirror: MirrorServer, tmp_path: Path, zoo_manifest: list[dict[str, Any]]
) -> None:
    rel = _rel(zoo_manifest)
    template = _chain(mirror, rel, MAX_REDIRECTS)
    config = mirror_config(mirror.url, tmp_path / "cache", file_urls=(template,))
    outcome = await _fetch(config)
    assert not isinstance(outcome, HubError), outcome
    assert outcome.read_bytes() == (mirror.root / REPO_PREFIX / rel).read_bytes()
    assert leftovers(config.cache_dir) == []


async def test_too_many_hops_are_refused(
    mirror: MirrorServer, tmp_path: Path, zoo_manifest: list[dict[str, Any]]
) -> None:
    rel = _rel(zoo_manifest)
    template = _chain(mirror, rel, MAX_REDIRECTS + 1)
    config = mirror_config(mirror.url, tmp_path / "cache", file_urls=(template,))
    message = _assert_refused(await _fetch(config), config, zoo_manifest)
    assert "redirected more than" in message
    assert not mirror.requests_for(f"/{REPO_PREFIX}/{rel}"), "the last hop was followed"


@pytest.fixture
async def tls_pair(mirror_root: Path, tmp_path: Path) -> AsyncIterator[tuple[MirrorServer, Path]]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with MirrorServer(mirror_root, ssl_context=server_ctx) as secure:
        yield secure, bundle


async def test_https_to_http_downgrade_is_refused(
    tls_pair: tuple[MirrorServer, Path],
    mirror: MirrorServer,
    tmp_path: Path,
    zoo_manifest: list[dict[str, Any]],
) -> None:
    secure, bundle = tls_pair
    rel = _rel(zoo_manifest)
    plain_target = f"{mirror.url}/{REPO_PREFIX}/{rel}"
    secure.add_fault(Fault("redirect", path=GLOB, location=plain_target, times=None))
    config = mirror_config(
        mirror.url,
        tmp_path / "cache",
        file_urls=(secure.url + "/{owner}/{repo}/{ref}/{path}",),
        ca_bundle=bundle,
    )
    message = _assert_refused(await _fetch(config), config, zoo_manifest)
    assert "down to plain http" in message
    assert secure.url.startswith("https://")
    assert not mirror.requests_for(GLOB), "the plain-http target was contacted"


@pytest.fixture
async def two_hosts(mirror_root: Path) -> AsyncIterator[MirrorServer]:
    if not TWO_HOSTS:
        pytest.skip("127.0.0.2 cannot be bound on this machine")
    async with MirrorServer(mirror_root, hosts=("127.0.0.1", "127.0.0.2")) as server:
        yield server


async def test_cross_host_redirect_drops_credentials(
    two_hosts: MirrorServer, tmp_path: Path, zoo_manifest: list[dict[str, Any]]
) -> None:
    server = two_hosts
    rel = _rel(zoo_manifest)
    elsewhere = f"{server.url_for('127.0.0.2')}/{REPO_PREFIX}/{rel}"
    # once: the engine then keeps using the final URL, on 127.0.0.2, for every chunk
    server.add_fault(Fault("redirect", path=GLOB, location=elsewhere, times=1))
    with_credentials = f"http://hub-user:s3cret@127.0.0.1:{server.port}"
    config = mirror_config(
        server.url,
        tmp_path / "cache",
        file_urls=(with_credentials + "/{owner}/{repo}/{ref}/{path}",),
    )
    outcome = await _fetch(config)
    assert not isinstance(outcome, HubError), outcome
    assert outcome.read_bytes() == (server.root / REPO_PREFIX / rel).read_bytes()
    first = [r for r in server.requests_for(GLOB) if r.host == "127.0.0.1"]
    second = [r for r in server.requests_for(GLOB) if r.host == "127.0.0.2"]
    assert first and second
    expected = "Basic " + base64.b64encode(b"hub-user:s3cret").decode()
    assert all(r.headers.get("Authorization") == expected for r in first)
    for request in second:
        assert "Authorization" not in request.headers, request.headers
        assert "Cookie" not in request.headers, request.headers
    assert leftovers(config.cache_dir) == []


async def test_cross_host_redirect_does_not_forward_cookies(
    zoo_manifest: list[dict[str, Any]], zoo_dir: Path, tmp_path: Path
) -> None:
    """A mirror at ``localhost`` sets a cookie (the client's jar keeps it and sends it back to
    that host); its redirect to 127.0.0.2 must not carry it."""
    if not TWO_HOSTS:
        pytest.skip("127.0.0.2 cannot be bound on this machine")
    raw = entry(zoo_manifest, NAME, OPSET)
    data = (zoo_dir / raw["model_path"]).read_bytes()
    seen: list[tuple[str, str, dict[str, str]]] = []
    port = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        host = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        seen.append((host, request.path, dict(request.headers)))
        if request.path.endswith("ONNX_HUB_MANIFEST.json"):
            response = web.json_response([raw])
            response.set_cookie("hubsession", "s3cret", path="/")
            return response
        if request.path.startswith("/files/"):
            rest = request.path.removeprefix("/files/")
            raise web.HTTPFound(f"http://127.0.0.2:{port}/elsewhere/{rest}")
        return web.Response(body=data, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    socks, port = bind_same_port(("127.0.0.1", "127.0.0.2"))
    for sock in socks:
        await web.SockSite(runner, sock).start()
    try:
        base = f"http://localhost:{port}"
        config = mirror_config(
            base, tmp_path / "cache", file_urls=(base + "/files/{owner}/{repo}/{ref}/{path}",)
        )
        outcome = await _fetch(config)
    finally:
        await runner.cleanup()
    assert not isinstance(outcome, HubError), outcome
    assert outcome.read_bytes() == data
    first_host = [h for host, path, h in seen if path.startswith("/files/")]
    other_host = [(host, h) for host, path, h in seen if path.startswith("/elsewhere/")]
    assert first_host and other_host
    assert all("hubsession=s3cret" in h.get("Cookie", "") for h in first_host), first_host
    for host, headers in other_host:
        assert host == "127.0.0.2"
        assert "Cookie" not in headers and "Authorization" not in headers, headers
