"""The HTTP transport against a real local mirror (plain and TLS)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from asynchub._exceptions import (
    ConnectError,
    ProtocolError,
    RedirectError,
    StallError,
    TLSError,
    TransferError,
)
from asynchub._transport.aiohttp_transport import AiohttpTransport as Transport
from tests.mirror import Fault, MirrorServer, can_bind
from tests.test_transfer import KIB, fast_config, put

pytestmark = pytest.mark.timeout(60)

TWO_HOSTS = can_bind("127.0.0.2")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[MirrorServer]:
    hosts = ("127.0.0.1", "127.0.0.2") if TWO_HOSTS else ("127.0.0.1",)
    srv = MirrorServer(tmp_path / "root", hosts=hosts)
    (tmp_path / "root").mkdir()
    put(tmp_path / "root", "f.bin", 300 * KIB)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def transport(tmp_path: Path) -> AsyncIterator[Transport]:
    t = Transport(fast_config(tmp_path / "cache", stall_timeout=0.5))
    try:
        yield t
    finally:
        await t.aclose()


async def test_get_reads_identity_bytes(server: MirrorServer, transport: Transport) -> None:
    data = (server.root / "f.bin").read_bytes()
    async with transport.request(f"{server.url}/f.bin", headers={"Range": "bytes=0-9"}) as r:
        assert r.status == 206 and r.headers["content-range"] == f"bytes 0-9/{len(data)}"
        assert await r.read(100) == data[:10]
    async with transport.request(f"{server.url}/f.bin") as r:
        chunks = [c async for c in r.iter_chunks(64 * KIB)]
    assert b"".join(chunks) == data and max(map(len, chunks)) <= 64 * KIB
    assert all(req.headers["Accept-Encoding"] == "identity" for req in server.requests)


async def test_statuses_are_returned(server: MirrorServer, transport: Transport) -> None:
    async with transport.request(f"{server.url}/missing") as r:
        assert r.status == 404


async def test_read_limit(server: MirrorServer, transport: Transport) -> None:
    async with transport.request(f"{server.url}/f.bin") as r:
        with pytest.raises(ProtocolError, match="more than"):
            await r.read(1000)


async def test_gzip_body_is_a_protocol_error(server: MirrorServer, transport: Transport) -> None:
    server.add_fault(Fault("gzip", path="/f.bin"))
    with pytest.raises(ProtocolError, match="gzip"):
        async with transport.request(f"{server.url}/f.bin"):
            pass


async def test_short_body_is_a_transfer_error(server: MirrorServer, transport: Transport) -> None:
    server.add_fault(Fault("drop", path="/f.bin", after_bytes=1000))
    with pytest.raises(TransferError, match="cut short"):
        async with transport.request(f"{server.url}/f.bin") as r:
            await r.read(10**6)


async def test_stall_is_a_stall_error(server: MirrorServer, transport: Transport) -> None:
    server.add_fault(Fault("stall", path="/f.bin", after_bytes=1000))
    with pytest.raises(StallError):
        async with transport.request(f"{server.url}/f.bin") as r:
            await r.read(10**6)


async def test_connection_refused(transport: Transport) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError, match=rf"could not connect to 127\.0\.0\.1:{port} \("):
        async with transport.request(f"http://127.0.0.1:{port}/x"):
            pass


@pytest.mark.skipif(not TWO_HOSTS, reason="127.0.0.2 cannot be bound here")
async def test_redirect_to_other_host_drops_credentials(
    server: MirrorServer, transport: Transport
) -> None:
    target = f"{server.url_for('127.0.0.2')}/f.bin"
    server.add_fault(Fault("redirect", path="/f.bin", location=target))
    secret = {"Authorization": "Bearer s3cret", "Cookie": "session=1", "X-Keep": "yes"}
    async with transport.request(f"{server.url}/f.bin", headers=secret) as r:
        assert r.status == 200 and r.url == target
    first, second = server.requests
    assert first.host == "127.0.0.1" and first.headers["Authorization"] == "Bearer s3cret"
    assert second.host == "127.0.0.2"
    assert "Authorization" not in second.headers and "Cookie" not in second.headers
    assert second.headers["X-Keep"] == "yes"


async def test_same_host_redirect_keeps_credentials(
    server: MirrorServer, transport: Transport
) -> None:
    (server.root / "g.bin").write_bytes(b"hello")
    server.add_fault(Fault("redirect", path="/f.bin", location="/g.bin"))
    async with transport.request(f"{server.url}/f.bin", headers={"Authorization": "Bearer t"}) as r:
        assert await r.read(10) == b"hello" and r.url == f"{server.url}/g.bin"
    assert server.requests[1].headers["Authorization"] == "Bearer t"


async def test_redirect_loop_is_refused(server: MirrorServer, transport: Transport) -> None:
    server.add_fault(Fault("redirect", path="/f.bin", location="/f.bin", times=None))
    with pytest.raises(RedirectError, match="more than 5"):
        async with transport.request(f"{server.url}/f.bin"):
            pass
    assert len(server.requests) == 6


async def test_redirect_to_other_scheme_is_refused(
    server: MirrorServer, transport: Transport
) -> None:
    server.add_fault(Fault("redirect", path="/f.bin", location="file:///etc/passwd"))
    with pytest.raises(RedirectError, match="not an http"):
        async with transport.request(f"{server.url}/f.bin"):
            pass


async def test_tls_with_ca_bundle_and_no_downgrade(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    root = tmp_path / "root"
    blob = put(root, "t.bin", 10 * KIB)
    srv = MirrorServer(root, ssl_context=server_ctx)
    await srv.start()
    plain = MirrorServer(root)
    await plain.start()
    trusted = Transport(fast_config(tmp_path / "c", ca_bundle=bundle))
    untrusted = Transport(fast_config(tmp_path / "c"))
    try:
        async with trusted.request(f"{srv.url}/t.bin") as r:
            assert srv.url.startswith("https://") and await r.read(10**6) == blob.data
        with pytest.raises(TLSError):
            async with untrusted.request(f"{srv.url}/t.bin"):
                pass
        srv.add_fault(Fault("redirect", path="/t.bin", location=f"{plain.url}/t.bin"))
        with pytest.raises(RedirectError, match="down to plain http"):
            async with trusted.request(f"{srv.url}/t.bin"):
                pass
        assert not plain.requests
    finally:
        await trusted.aclose()
        await untrusted.aclose()
        await srv.stop()
        await plain.stop()


async def test_one_transport_many_event_loops(tmp_path: Path) -> None:
    root = tmp_path / "root"
    blob = put(root, "l.bin", 50 * KIB)
    server = MirrorServer(root)
    transport = Transport(fast_config(tmp_path / "c"))

    async def get() -> bytes:
        async with transport.request(f"{server.url}/l.bin") as r:
            return await r.read(10**6)

    def in_fresh_loops() -> list[bytes]:
        got = [asyncio.run(get()) for _ in range(3)]
        asyncio.run(transport.aclose())
        return got

    with server.running():
        results = await anyio.to_thread.run_sync(in_fresh_loops)
    assert results == [blob.data] * 3
