"""Proxies: which URL goes through which proxy (``proxy_for``, pure), and downloads through a
real forward proxy on 127.0.0.1 (``tests/forward_proxy.py``) that records what it carried."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from asynchub import AsyncHub, ConfigError, HubConfig, RetryPolicy
from asynchub._exceptions import ProxyError
from asynchub._transport.proxy import proxy_for, redact_url
from tests.conftest import FAST_RETRY, REPO_PREFIX
from tests.forward_proxy import ForwardProxy
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "/{owner}/{repo}/{ref}/"
P = "http://proxy.example:3128"


def _cfg(env: dict[str, str], **overrides: object) -> HubConfig:
    return HubConfig.from_env(env, **overrides)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _hub(config: HubConfig) -> AsyncIterator[AsyncHub]:
    """An AsyncHub whose whole use is bounded in time."""
    with anyio.fail_after(30):
        async with AsyncHub(config) as hub:
            yield hub


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- proxy_for: the rules, no network ----------------------------------------------------
def test_scheme_proxies_and_all_proxy_fallback() -> None:
    config = _cfg({"HTTP_PROXY": P, "HTTPS_PROXY": "http://tls.example:8080"})
    assert proxy_for("http://a.example/x", config) == P
    assert proxy_for("https://a.example/x", config) == "http://tls.example:8080"
    config = _cfg({"ALL_PROXY": P})
    assert proxy_for("http://a.example/x", config) == P
    assert proxy_for("https://a.example/x", config) == P
    assert proxy_for("https://a.example/x", _cfg({})) is None


def test_lower_case_wins_and_cgi_ignores_upper_http_proxy() -> None:
    config = _cfg({"http_proxy": P, "HTTP_PROXY": "http://upper.example:1"})
    assert proxy_for("http://a.example/", config) == P
    # httpoxy: under CGI, HTTP_PROXY may come from a request header (Proxy:), so it is ignored
    config = _cfg({"HTTP_PROXY": P, "REQUEST_METHOD": "GET"})
    assert proxy_for("http://a.example/", config) is None


def test_a_proxy_without_scheme_is_http_and_socks_is_refused() -> None:
    assert proxy_for("https://a.example/", _cfg({"https_proxy": "proxy.example:3128"})) == P
    with pytest.raises(ConfigError, match=r"socks5.*not supported") as info:
        _cfg({"ALL_PROXY": "socks5://bob:hunter2@proxy.example:1080"})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("no_proxy", "url", "bypassed"),
    [
        ("example.com", "https://example.com/x", True),
        ("example.com", "https://cdn.example.com/x", True),
        ("example.com", "https://badexample.com/x", False),
        (".example.com", "https://cdn.example.com/x", True),
        (".example.com", "https://example.com/x", True),
        ("*.example.com", "https://cdn.example.com/x", True),
        ("EXAMPLE.com", "https://Cdn.Example.COM/x", True),
        ("*", "https://anything.example/x", True),
        ("other.org, example.com", "https://example.com/x", True),
        ("other.org example.com", "https://example.com/x", True),
        ("example.com:8443", "https://example.com:8443/x", True),
        ("example.com:8443", "https://example.com/x", False),
        ("example.com:443", "https://example.com/x", True),
        ("10.0.0.0/8", "http://10.1.2.3/x", True),
        ("10.0.0.0/8", "http://11.1.2.3/x", False),
        ("10.1.2.3", "http://10.1.2.3:8080/x", True),
        ("::1", "http://[::1]:8080/x", True),
        ("fd00::/8", "http://[fd12::1]/x", True),
        ("", "https://example.com/x", False),
    ],
)
def test_no_proxy_rules(no_proxy: str, url: str, bypassed: bool) -> None:
    config = _cfg({"ALL_PROXY": P, "NO_PROXY": no_proxy})
    assert (proxy_for(url, config) is None) is bypassed


def test_explicit_proxy_wins_over_env_and_no_proxy_still_applies() -> None:
    env = {"HTTPS_PROXY": "http://env.example:1", "no_proxy": "internal.example"}
    config = _cfg(env, proxy=P)
    assert proxy_for("https://a.example/", config) == P
    assert proxy_for("https://internal.example/", config) is None
    assert proxy_for("https://a.example/", _cfg({**env, "ASYNCHUB_PROXY": P})) == P
    assert proxy_for("http://a.example/", HubConfig(proxy=P)) == P
    assert proxy_for("http://a.example/", HubConfig()) is None  # HubConfig() reads no env


def test_credentials_are_redacted() -> None:
    assert redact_url("http://alice:s3cret@proxy.example:3128") == (
        "http://alice:***@proxy.example:3128"
    )
    assert redact_url("http://proxy.example:3128") == "http://proxy.example:3128"
    config = _cfg({"HTTPS_PROXY": "http://alice:s3cret@proxy.example:3128"})
    assert "s3cret" not in repr(config) and "s3cret" not in str(config)


# -- through a real proxy -----------------------------------------------------------------
@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    async with ForwardProxy() as server:
        yield server


def _mirror_env(mirror: MirrorServer, cache: Path, **extra: str) -> dict[str, str]:
    env = {
        "ASYNCHUB_MANIFEST_URL": mirror.url + TEMPLATE + "ONNX_HUB_MANIFEST.json",
        "ASYNCHUB_FILE_URLS": mirror.url + TEMPLATE + "{path}",
        "ASYNCHUB_CACHE_DIR": str(cache),
        "ASYNCHUB_CHUNK_SIZE": "64K",
    }
    env.update(extra)
    return env


async def test_the_forward_proxy_itself_relays(mirror: MirrorServer, proxy: ForwardProxy) -> None:
    import aiohttp

    url = mirror.url + "/" + REPO_PREFIX + "/ONNX_HUB_MANIFEST.json"
    async with aiohttp.ClientSession() as http, http.get(url, proxy=proxy.url) as answer:
        assert answer.status == 200 and await answer.json(content_type=None)
    assert proxy.targets("GET") == [url]
    assert len(mirror.requests) == 1


async def test_http_proxy_from_env_carries_every_request(
    mirror: MirrorServer, proxy: ForwardProxy, tmp_path: Path
) -> None:
    config = _cfg(_mirror_env(mirror, tmp_path / "c", http_proxy=proxy.url), retry=FAST_RETRY)
    async with _hub(config) as hub:
        path = await hub.download("TinyNet")
    assert path.is_file()
    forwarded = proxy.targets("GET")
    assert forwarded[0] == mirror.url + "/" + REPO_PREFIX + "/ONNX_HUB_MANIFEST.json"
    assert any(target.endswith(path.name.split("_", 1)[1]) for target in forwarded)
    assert len(forwarded) == len(mirror.requests)  # nothing went around the proxy


async def test_https_goes_through_a_connect_tunnel(
    mirror_root: Path, proxy: ForwardProxy, tmp_path: Path
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with MirrorServer(mirror_root, ssl_context=server_ctx) as tls_mirror:
        env = _mirror_env(
            tls_mirror, tmp_path / "c", HTTPS_PROXY=proxy.url, ASYNCHUB_CA_BUNDLE=str(bundle)
        )
        async with _hub(_cfg(env, retry=FAST_RETRY)) as hub:
            await hub.download("TinyNet")
        assert tls_mirror.requests
    assert proxy.targets("CONNECT")
    assert set(proxy.targets("CONNECT")) == {f"127.0.0.1:{tls_mirror.port}"}
    assert not proxy.targets("GET")


async def test_an_https_proxy(mirror: MirrorServer, tmp_path: Path) -> None:
    """TLS to the proxy itself (``HTTPS_PROXY=https://...``), verified with the CA bundle."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    proxy_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(proxy_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with ForwardProxy(ssl_context=proxy_ctx) as proxy:
        assert proxy.url.startswith("https://")
        env = _mirror_env(
            mirror, tmp_path / "c", HTTP_PROXY=proxy.url, ASYNCHUB_CA_BUNDLE=str(bundle)
        )
        async with _hub(_cfg(env, retry=FAST_RETRY)) as hub:
            await hub.download("TinyNet")
        assert proxy.targets("GET") and len(proxy.targets("GET")) == len(mirror.requests)


async def test_a_tunnel_refused_by_the_proxy_is_not_retried(
    mirror_root: Path, tmp_path: Path
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with (
        MirrorServer(mirror_root, ssl_context=server_ctx) as tls_mirror,
        ForwardProxy(credentials=("alice", "s3cret")) as proxy,
    ):
        bad = proxy.url_with_credentials("alice", "wr0ng")
        env = _mirror_env(
            tls_mirror, tmp_path / "c", HTTPS_PROXY=bad, ASYNCHUB_CA_BUNDLE=str(bundle)
        )
        async with _hub(_cfg(env, retry=RetryPolicy())) as hub:
            with pytest.raises(ProxyError) as info:
                await hub.list_models()
        assert info.value.status == 407
        assert [r.status for r in proxy.records] == [407]  # refused once, not retried
        assert not tls_mirror.requests
    message = str(info.value)
    assert f"the proxy http://alice:***@127.0.0.1:{proxy.port} refused" in message
    assert "407" in message and "wr0ng" not in message


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "*", "127.0.0.0/8", "PORT"])
async def test_no_proxy_goes_direct(
    mirror: MirrorServer, proxy: ForwardProxy, tmp_path: Path, no_proxy: str
) -> None:
    no_proxy = no_proxy.replace("PORT", f"127.0.0.1:{mirror.port}")
    env = _mirror_env(mirror, tmp_path / "c", HTTP_PROXY=proxy.url, NO_PROXY=no_proxy)
    async with _hub(_cfg(env, retry=FAST_RETRY)) as hub:
        await hub.download("TinyNet")
    assert mirror.requests and not proxy.records


async def test_proxy_credentials_are_sent_and_never_logged(
    mirror: MirrorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asynchub")
    async with ForwardProxy(credentials=("alice", "s3cret")) as proxy:
        good = proxy.url_with_credentials("alice", "s3cret")
        env = _mirror_env(mirror, tmp_path / "c", http_proxy=good)
        async with _hub(_cfg(env, retry=FAST_RETRY)) as hub:
            await hub.download("TinyNet")
        assert proxy.records and all(r.authorized for r in proxy.records)

        bad = proxy.url_with_credentials("alice", "wr0ng")
        env = _mirror_env(mirror, tmp_path / "c2", http_proxy=bad)
        async with _hub(_cfg(env, retry=FAST_RETRY)) as hub:
            with pytest.raises(ProxyError) as info:
                await hub.list_models()
    message = str(info.value)
    assert f"http://alice:***@127.0.0.1:{proxy.port}" in message
    assert "407" in message and "wr0ng" not in message
    assert "s3cret" not in caplog.text and "wr0ng" not in caplog.text


async def test_a_dead_proxy_is_named_and_reported_fast(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    dead = f"http://alice:s3cret@127.0.0.1:{_dead_port()}"
    env = _mirror_env(mirror, tmp_path / "c", HTTP_PROXY=dead)
    started = time.monotonic()
    async with _hub(_cfg(env, retry=RetryPolicy())) as hub:
        with pytest.raises(ProxyError) as info:
            await hub.list_models()
    took = time.monotonic() - started
    message = str(info.value)
    assert "could not connect to the proxy http://alice:***@127.0.0.1:" in message
    assert "s3cret" not in message and "Client" not in message
    assert "proxy" in message.lower() and "NO_PROXY" in message
    assert took < 5.0, f"a dead proxy took {took:.1f} s to report"
    assert not mirror.requests


async def test_explicit_proxy_setting_wins_over_the_env(
    mirror: MirrorServer, proxy: ForwardProxy, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{_dead_port()}"
    env = _mirror_env(mirror, tmp_path / "c", HTTP_PROXY=dead, ASYNCHUB_PROXY=proxy.url)
    async with _hub(_cfg(env, retry=FAST_RETRY)) as hub:
        await hub.list_models()
    assert proxy.targets("GET")


async def test_cli_proxy_option(mirror: MirrorServer, proxy: ForwardProxy, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(_mirror_env(mirror, tmp_path / "c", ASYNCHUB_DISABLE_PROGRESS_BARS="1"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asynchub",
        "--proxy",
        proxy.url,
        "list",
        env=env,
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    with anyio.fail_after(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "TinyNet" in out.decode()
    assert proxy.targets("GET") == [mirror.url + "/" + REPO_PREFIX + "/ONNX_HUB_MANIFEST.json"]
