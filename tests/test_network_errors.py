"""Network failures in words a person understands, each its own error class, reported fast.

A refused connection, a name that does not resolve, a TLS failure, a server that never answers
and a 404 each raise their own subclass of ``TransferError`` with their own words, a hint of
what to do, and no library reprs; a dead network is reported within seconds with the default
retry policy; retries and mirror failover are logged at INFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from asynchub import AsyncHub, HubConfig, HubError, RetryPolicy
from asynchub._exceptions import (
    ConnectError,
    ConnectTimeoutError,
    HostNotFoundError,
    HTTPStatusError,
    ManifestNotFoundError,
    MirrorsExhaustedError,
    NetworkError,
    NotFoundError,
    ProxyError,
    StallError,
    TLSError,
    TransferError,
)
from asynchub._transport.errors import translate_os_error
from tests.conftest import FAST_RETRY, mirror_config
from tests.mirror import Fault, MirrorServer

pytestmark = pytest.mark.timeout(60)

#: Words that must never reach a person: library reprs and internals.
REPRS = ("Client", "ConnectionKey", "aiohttp", "Errno", "OSError(", "gaierror", "SSLError(")
#: A generous bound: behaviour, not a benchmark (the target is about 1 s).
DEAD_NETWORK_BOUND = 5.0


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


def _clean(message: str) -> None:
    for word in REPRS:
        assert word not in message, f"{word!r} in {message!r}"


def _default_retry_config(base_url: str, cache: Path, **overrides: object) -> HubConfig:
    """The mirror config of the tests, but with the default retry policy and timeouts."""
    config = mirror_config(base_url, cache, **overrides)  # type: ignore[arg-type]
    return config.replace(retry=RetryPolicy(), connect_timeout=HubConfig().connect_timeout)


# -- the translation itself (usable by any transport) ------------------------------------
def test_translation_of_os_errors() -> None:
    url = "https://models.example:8443/m.onnx"
    refused = translate_os_error(ConnectionRefusedError(errno.ECONNREFUSED, "refused"), url=url)
    assert isinstance(refused, ConnectError) and isinstance(refused, NetworkError)
    assert str(refused).startswith("could not connect to models.example:8443 (connection refused)")

    dns = translate_os_error(socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
                             url=url)  # fmt: skip
    assert isinstance(dns, HostNotFoundError)
    assert str(dns).startswith("models.example does not exist (DNS lookup failed)")

    again = translate_os_error(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), url=url)
    assert isinstance(again, HostNotFoundError) and "could not look up models.example" in str(again)

    timeout = translate_os_error(TimeoutError(), url=url, connect_timeout=30.0)
    assert isinstance(timeout, ConnectTimeoutError)
    assert str(timeout).startswith("connecting to models.example:8443 timed out after 30 s")

    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate"
    tls = translate_os_error(cert, url=url)
    assert isinstance(tls, TLSError)
    assert "certificate of models.example:8443 could not be verified (self-signed" in str(tls)
    assert "ASYNCHUB_CA_BUNDLE" in str(tls)

    unreachable = translate_os_error(OSError(errno.ENETUNREACH, "Network is unreachable"), url=url)
    assert isinstance(unreachable, ConnectError) and "network is unreachable" in str(unreachable)

    proxy = "http://alice:s3cret@proxy.example:3128"
    via = translate_os_error(ConnectionRefusedError(errno.ECONNREFUSED, "x"), url=url, proxy=proxy)
    assert isinstance(via, ProxyError)
    assert "could not connect to the proxy http://alice:***@proxy.example:3128" in str(via)
    for error in (refused, dns, again, timeout, tls, unreachable, via):
        _clean(str(error))
        assert isinstance(error, TransferError) and error.url == url
    assert "s3cret" not in str(via)


# -- end to end ---------------------------------------------------------------------------
async def test_refused_connection_for_the_manifest(tmp_path: Path) -> None:
    port = _dead_port()
    config = _default_retry_config(f"http://127.0.0.1:{port}", tmp_path / "c")
    started = time.monotonic()
    async with _hub(config) as hub:
        with pytest.raises(ConnectError) as info:
            await hub.list_models()
    took = time.monotonic() - started
    message = str(info.value)
    assert f"could not connect to 127.0.0.1:{port} (connection refused)" in message
    assert "manifest of onnx/models:main" in message
    assert "--offline" in message and "proxy" in message and "ASYNCHUB_MANIFEST_URL" in message
    assert "not found" not in message.lower()
    _clean(message)
    assert took < DEAD_NETWORK_BOUND, f"a refused connection took {took:.1f} s to report"


async def test_refused_connection_for_a_file(mirror: MirrorServer, tmp_path: Path) -> None:
    port = _dead_port()
    config = _default_retry_config(mirror.url, tmp_path / "c").replace(
        file_urls=(
            f"http://127.0.0.1:{port}/{{owner}}/{{repo}}/{{ref}}/{{path}}",
            f"http://127.0.0.1:{port}/second/{{path}}",
        )
    )
    started = time.monotonic()
    async with _hub(config) as hub:
        with pytest.raises(MirrorsExhaustedError) as info:
            await hub.download("TinyNet")
    took = time.monotonic() - started
    message = str(info.value)
    assert f"could not connect to 127.0.0.1:{port} (connection refused)" in message
    assert "ASYNCHUB_FILE_URLS" in message
    assert all(isinstance(error, ConnectError) for _, error in info.value.errors)
    _clean(message)
    assert took < DEAD_NETWORK_BOUND, f"two dead mirrors took {took:.1f} s to report"


async def test_a_host_name_that_cannot_exist(tmp_path: Path) -> None:
    """A label longer than 63 characters fails before any lookup (no packet leaves)."""
    host = "a" * 64 + ".invalid"
    config = _default_retry_config(f"http://{host}", tmp_path / "c")
    started = time.monotonic()
    async with _hub(config) as hub:
        with pytest.raises(HostNotFoundError) as info:
            await hub.list_models()
    took = time.monotonic() - started
    message = str(info.value)
    assert f"{host} is not a valid host name" in message
    assert "manifest of onnx/models:main" in message
    _clean(message)
    assert "UnicodeError" not in message and "idna" not in message
    assert took < DEAD_NETWORK_BOUND


@pytest.mark.parametrize(
    ("base", "words"),
    [
        ("http://127.0.0.1:99999", "invalid URL"),
        ("http://127.0.0.1:abc", "invalid URL"),
        ("http://[::1", "is not a valid URL"),
    ],
)
async def test_a_malformed_url_is_an_error_not_a_traceback(
    base: str, words: str, tmp_path: Path
) -> None:
    config = _default_retry_config(base, tmp_path / "c")
    async with _hub(config) as hub:
        with pytest.raises(HubError) as info:
            await hub.list_models()
    assert words in str(info.value)
    assert base in str(info.value)


async def test_tls_failure_is_not_retried(mirror_root: Path, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_ctx)
    async with MirrorServer(mirror_root, ssl_context=server_ctx) as tls_mirror:
        config = _default_retry_config(tls_mirror.url, tmp_path / "c")
        started = time.monotonic()
        async with _hub(config) as hub:
            with pytest.raises(TLSError) as info:
                await hub.list_models()
        took = time.monotonic() - started
    message = str(info.value)
    assert f"certificate of 127.0.0.1:{tls_mirror.port} could not be verified" in message
    assert "ASYNCHUB_CA_BUNDLE" in message
    _clean(message)
    assert took < DEAD_NETWORK_BOUND


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts connections, reads what comes, never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in held:
            writer.transport.abort()
        await server.wait_closed()


async def test_a_server_that_never_answers(silent_server: int, tmp_path: Path) -> None:
    config = mirror_config(f"http://127.0.0.1:{silent_server}", tmp_path / "c",
                           stall_timeout=0.3, retry=FAST_RETRY)  # fmt: skip
    started = time.monotonic()
    async with _hub(config) as hub:
        with pytest.raises(StallError) as info:
            await hub.list_models()
    took = time.monotonic() - started
    message = str(info.value)
    # the transport's read timeout or the engine's watchdog, whichever sees it first
    assert re.search(rf"127\.0\.0\.1:{silent_server} sent no bytes for 0\.\d s", message)
    assert "manifest of onnx/models:main" in message
    _clean(message)
    assert took < 4 * 0.3 + 2.0  # 1 try + 3 retries of 0.3 s each, tiny waits


@pytest.fixture
def dropping_port() -> Iterator[int]:
    """A port whose SYNs are dropped: a listener whose accept queue is full (never accepted),
    as a firewall that drops packets looks to a client."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    held: list[socket.socket] = []
    try:
        for _ in range(16):  # bounded: fill the queue until a connect times out
            probe = socket.socket()
            probe.settimeout(0.2)
            held.append(probe)
            try:
                probe.connect(("127.0.0.1", port))
            except (TimeoutError, OSError):
                break
        else:
            pytest.skip("the kernel accepted every connection: cannot simulate dropped SYNs")
        yield port
    finally:
        for probe in held:
            probe.close()
        server.close()


async def test_a_network_that_drops_packets(dropping_port: int, tmp_path: Path) -> None:
    config = _default_retry_config(f"http://127.0.0.1:{dropping_port}", tmp_path / "c")
    config = config.replace(connect_timeout=0.3)
    started = time.monotonic()
    async with _hub(config) as hub:
        with pytest.raises(ConnectTimeoutError) as info:
            await hub.list_models()
    took = time.monotonic() - started
    message = str(info.value)
    assert f"connecting to 127.0.0.1:{dropping_port} timed out after 0.3 s" in message
    assert "proxy" in message and "--offline" in message
    _clean(message)
    # 3 tries (connect_attempts=2 retries) of 0.3 s, waits of at most 0.25 + 0.5 s
    assert 0.9 <= took < 0.9 + 0.75 + 2.0, took


async def test_manifest_404_says_it_does_not_exist(mirror: MirrorServer, tmp_path: Path) -> None:
    config = _default_retry_config(mirror.url, tmp_path / "c")
    async with _hub(config) as hub:
        with pytest.raises(ManifestNotFoundError) as info:
            await hub.list_models(repo="someone/nothing")
    message = str(info.value)
    assert "does not exist" in message and "HTTP 404" in message
    assert "someone/nothing" in message and "ASYNCHUB_MANIFEST_URL" in message
    assert isinstance(info.value, AssertionError)  # onnx.hub raised AssertionError here
    assert isinstance(info.value.__cause__, NotFoundError)
    _clean(message)


async def test_file_404_on_every_mirror(mirror: MirrorServer, tmp_path: Path) -> None:
    config = _default_retry_config(mirror.url, tmp_path / "c").replace(
        file_urls=(mirror.url + "/nowhere/{path}",)
    )
    async with _hub(config) as hub:
        with pytest.raises(MirrorsExhaustedError) as info:
            await hub.download("TinyNet")
    message = str(info.value)
    assert "does not exist (HTTP 404)" in message and "ASYNCHUB_FILE_URLS" in message
    [(_, error)] = info.value.errors
    assert isinstance(error, NotFoundError) and isinstance(error, HTTPStatusError)
    assert error.status == 404
    _clean(message)


async def test_retries_and_failover_are_logged_at_info(
    mirror: MirrorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asynchub")
    mirror.add_fault(Fault("status", path="*ONNX_HUB_MANIFEST.json", status=503, times=2))
    config = mirror_config(mirror.url, tmp_path / "c").replace(
        file_urls=(mirror.url + "/nowhere/{path}", mirror.url + "/{owner}/{repo}/{ref}/{path}")
    )
    async with _hub(config) as hub:
        await hub.download("TinyNet")
    infos = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    retries = [m for m in infos if "503" in m and "retry" in m]
    waves = [r for r in caplog.records if getattr(r, "asynchub_retry_wave", False)]
    assert [r.getMessage() for r in waves] == retries
    assert len(retries) == 2, infos
    assert "retry 1/3" in retries[0] and "retry 2/3" in retries[1]
    failover = [m for m in infos if "trying the next mirror" in m]
    assert failover and "does not exist" in failover[0], infos
    assert len(mirror.requests_for("*ONNX_HUB_MANIFEST.json")) == 3


async def test_many_connections_failing_together_make_one_wave(
    mirror: MirrorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asynchub")
    fault = mirror.add_fault(
        Fault("status", path="*tinynet-13.onnx", status=503, only_start_above=0, times=6)
    )
    config = mirror_config(mirror.url, tmp_path / "c", max_connections=8)
    async with _hub(config) as hub:
        await hub.download("TinyNet")
    assert fault.hits == 6
    retries = [r for r in caplog.records if "503" in r.getMessage() and "retry" in r.getMessage()]
    assert len(retries) == 6, [r.getMessage() for r in retries]
    shown = [r for r in retries if r.levelno == logging.INFO]
    assert 1 <= len(shown) < len(retries), [(r.levelname, r.getMessage()) for r in retries]
    assert all(getattr(r, "asynchub_retry_wave", None) is (r.levelno == logging.INFO)
               for r in retries)  # fmt: skip
