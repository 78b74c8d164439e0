"""Tests of the test mirror itself (``tests/mirror.py``): normal HTTP behaviour.

Fault kinds are tested in ``tests/test_mirror_faults.py``. Where aiohttp's client would hide a
detail (framing, close-delimited bodies), the tests speak raw HTTP over ``asyncio`` streams.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.mirror import Fault, MirrorServer, can_bind, tls_contexts
from tests.mirror_http import HASHED_ETAG_LIMIT

pytestmark = pytest.mark.timeout(20)

DATA = random.Random(7).randbytes(300_000)


class Raw:
    """A raw HTTP/1.1 answer: status, lower-cased headers, every byte until the server closed."""

    def __init__(self, data: bytes) -> None:
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }


async def raw_request(
    m: MirrorServer, path: str, headers: dict[str, str] | None = None, *, method: str = "GET",
    host: str = "127.0.0.1",
) -> Raw:  # fmt: skip
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection(host, m.port)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{m.port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        try:
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        writer.close()
        return Raw(b"".join(chunks))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    (site / "models").mkdir(parents=True)
    (site / "models" / "a.bin").write_bytes(DATA)
    (site / "small.txt").write_bytes(b"hello world\n")
    (tmp_path / "secret.txt").write_bytes(b"outside the root\n")
    return site


@pytest.fixture
async def mirror(root: Path) -> AsyncIterator[MirrorServer]:
    async with MirrorServer(root) as m:
        yield m


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(auto_decompress=False, timeout=timeout) as s:
        yield s


async def get(
    s: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    async with s.get(url, headers=hdrs, allow_redirects=False) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


async def test_get_serves_file_with_validators(
    mirror: MirrorServer, session: aiohttp.ClientSession
) -> None:
    status, headers, body = await get(session, mirror.url + "/models/a.bin")
    assert (status, body) == (200, DATA)
    assert headers["ETag"].startswith('"sha256-') and headers["ETag"].endswith('"')
    assert headers["Content-Length"] == str(len(DATA))
    assert headers["Accept-Ranges"] == "bytes" and "GMT" in headers["Last-Modified"]
    [rec] = mirror.requests
    assert (rec.method, rec.path, rec.host, rec.range, rec.fault, rec.status) == (
        "GET", "/models/a.bin", "127.0.0.1", None, None, 200,
    )  # fmt: skip
    assert mirror.served_bytes("*.bin") == len(DATA) and mirror.served_bytes("*.txt") == 0


async def test_head_has_length_but_no_body(mirror: MirrorServer) -> None:
    raw = await raw_request(mirror, "/models/a.bin", method="HEAD")
    assert raw.status == 200 and raw.headers["content-length"] == str(len(DATA))
    assert raw.body == b"" and mirror.served_bytes() == 0


@pytest.mark.parametrize(
    ("spec", "start", "end", "logged"),
    [
        ("bytes=0-99", 0, 99, (0, 99)),
        ("bytes=1000-", 1000, len(DATA) - 1, (1000, None)),
        ("bytes=-500", len(DATA) - 500, len(DATA) - 1, (-500, None)),
        ("bytes=7-7", 7, 7, (7, 7)),
        (f"bytes={len(DATA) - 10}-{len(DATA) + 100}", len(DATA) - 10, len(DATA) - 1, None),
        (f"bytes=-{len(DATA) * 2}", 0, len(DATA) - 1, (-len(DATA) * 2, None)),
    ],
)
async def test_single_range_forms(
    mirror: MirrorServer, session: aiohttp.ClientSession, spec: str, start: int, end: int,
    logged: tuple[int, int | None] | None,
) -> None:  # fmt: skip
    status, headers, body = await get(session, mirror.url + "/models/a.bin", Range=spec)
    assert status == 206 and body == DATA[start : end + 1]
    assert headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert headers["Content-Length"] == str(end - start + 1)
    if logged is not None:
        assert mirror.requests[0].range == logged
    assert mirror.served_bytes() == end - start + 1


@pytest.mark.parametrize(
    "spec", [f"bytes={len(DATA)}-", "bytes=-0", f"bytes={len(DATA) + 5}-9999999"]
)
async def test_unsatisfiable_range_is_416(
    mirror: MirrorServer, session: aiohttp.ClientSession, spec: str
) -> None:
    status, headers, _ = await get(session, mirror.url + "/models/a.bin", Range=spec)
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("spec", ["bytes=abc", "items=0-1", "bytes=5-2", "bytes=0-1,5-9"])
async def test_unparseable_or_multi_range_gives_full_body(
    mirror: MirrorServer, session: aiohttp.ClientSession, spec: str
) -> None:
    status, headers, body = await get(session, mirror.url + "/models/a.bin", Range=spec)
    assert status == 200 and body == DATA and "Content-Range" not in headers


async def test_conditional_requests(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    url = mirror.url + "/models/a.bin"
    _, headers, _ = await get(session, url)
    etag, lm = headers["ETag"], headers["Last-Modified"]
    assert (await get(session, url, Range="bytes=0-9", If_Range=etag))[0] == 206
    assert (await get(session, url, Range="bytes=0-9", If_Range=lm))[0] == 206
    status, _, body = await get(session, url, Range="bytes=0-9", If_Range='"other"')
    assert (status, body) == (200, DATA)
    assert (await get(session, url, Range="bytes=0-9", If_Range="W/" + etag))[0] == 200
    assert (await get(session, url, If_None_Match=etag))[:3:2] == (304, b"")
    assert (await get(session, url, If_None_Match=f'"x", W/{etag}'))[0] == 304
    assert (await get(session, url, If_None_Match='"x"'))[0] == 200
    assert (await get(session, url, If_Match='"x"'))[0] == 412
    assert (await get(session, url, If_Match=etag))[0] == 200
    assert (await get(session, url, If_Match="*"))[0] == 200


async def test_set_file_changes_content_and_etag(
    mirror: MirrorServer, session: aiohttp.ClientSession
) -> None:
    url = mirror.url + "/models/a.bin"
    _, headers, _ = await get(session, url)
    mirror.set_file("models/a.bin", b"new content")
    status, new_headers, body = await get(session, url, Range="bytes=0-2", If_Range=headers["ETag"])
    assert (status, body) == (200, b"new content")
    assert new_headers["ETag"] != headers["ETag"]
    mirror.set_file("/models/b.bin", b"created")
    assert (await get(session, mirror.url + "/models/b.bin"))[2] == b"created"
    with pytest.raises(ValueError, match="outside"):
        mirror.set_file("../escape.bin", b"x")


async def test_missing_method_and_escape_are_refused(mirror: MirrorServer, root: Path) -> None:
    (root / "link.txt").symlink_to(root.parent / "secret.txt")
    for path in ["/nope.bin", "/../secret.txt", "/%2e%2e/secret.txt", "/link.txt", "/models"]:
        raw = await raw_request(mirror, path)
        assert raw.status == 404, path
        assert b"outside the root" not in raw.body
    assert (await raw_request(mirror, "/small.txt", method="POST")).status == 405


async def test_headers_are_recorded(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    await get(session, mirror.url + "/small.txt?x=1", Authorization="Bearer t", Cookie="c=1")
    rec = mirror.requests[-1]
    assert rec.headers["Authorization"] == "Bearer t" and rec.headers["Cookie"] == "c=1"
    assert rec.query == "x=1" and rec.path == "/small.txt"
    await raw_request(mirror, "/small.txt", {"x-custom-thing": "v"})
    assert mirror.requests[-1].headers["X-Custom-Thing"] == "v"


async def test_big_file_gets_metadata_etag_and_streams(
    root: Path, session: aiohttp.ClientSession
) -> None:
    big = root / "big.bin"
    with big.open("wb") as f:
        f.truncate(HASHED_ETAG_LIMIT + 1024)  # sparse: nothing is written to disk
        f.seek(HASHED_ETAG_LIMIT + 1000)
        f.write(b"tail")
    async with MirrorServer(root) as m:
        status, headers, body = await get(session, m.url + "/big.bin", Range="bytes=-24")
        assert status == 206 and body == b"tail" + bytes(20)
        assert headers["ETag"].startswith('"meta-')


async def test_second_host_on_same_port(root: Path, session: aiohttp.ClientSession) -> None:
    if not can_bind("127.0.0.2"):
        pytest.skip("127.0.0.2 cannot be bound on this machine")
    async with MirrorServer(root, hosts=("127.0.0.1", "127.0.0.2")) as m:
        assert m.url_for("127.0.0.2") == f"http://127.0.0.2:{m.port}"
        assert (await get(session, m.url_for("127.0.0.2") + "/small.txt"))[2] == b"hello world\n"
        assert (await get(session, m.url + "/small.txt"))[0] == 200
        assert [r.host for r in m.requests] == ["127.0.0.2", "127.0.0.1"]


async def test_signed_redirect_expires(root: Path, session: aiohttp.ClientSession) -> None:
    host = "127.0.0.2" if can_bind("127.0.0.2") else "127.0.0.1"
    async with MirrorServer(root, hosts=tuple(dict.fromkeys(("127.0.0.1", host)))) as m:
        m.add_signed_redirect("/models/a.bin", host, ttl_requests=2)
        status, headers, _ = await get(session, m.url + "/models/a.bin", Authorization="Bearer t")
        assert status == 302
        location = headers["Location"]
        assert location.startswith(f"http://{host}:{m.port}/signed/")
        assert location.endswith("/models/a.bin")
        assert (await get(session, location, Range="bytes=0-9"))[2] == DATA[:10]
        assert (await get(session, location))[2] == DATA
        assert (await get(session, location))[0] == 403
        again = (await get(session, m.url + "/models/a.bin"))[1]["Location"]
        assert again != location and (await get(session, again))[0] == 200
        tampered = location.replace("/models/a.bin", "/small.txt")
        assert (await get(session, tampered))[0] == 403
        async with session.get(m.url + "/models/a.bin", headers={"Authorization": "Bearer t"}) as r:
            assert r.status == 200 and await r.read() == DATA
        signed = [r for r in m.requests if r.path.startswith("/signed/")]
        assert signed[-1].host == host
        assert m.requests[0].headers["Authorization"] == "Bearer t"


async def test_tls_with_trustme(root: Path) -> None:
    pytest.importorskip("trustme")
    server_ctx, client_ctx = tls_contexts()
    async with (
        MirrorServer(root, ssl_context=server_ctx) as m,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
    ):
        assert m.url.startswith("https://127.0.0.1:")
        async with s.get(
            m.url + "/models/a.bin", ssl=client_ctx, headers={"Range": "bytes=5-9"}
        ) as r:
            assert r.status == 206 and await r.read() == DATA[5:10]
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await s.get(m.url + "/small.txt", ssl=ssl.create_default_context())


async def test_latency_and_rate_limit(root: Path, session: aiohttp.ClientSession) -> None:
    async with MirrorServer(root, latency=0.2) as m:
        t0 = time.monotonic()
        assert (await get(session, m.url + "/small.txt"))[0] == 200
        assert time.monotonic() - t0 >= 0.2
    async with MirrorServer(root, rate_limit=200_000) as m:
        t0 = time.monotonic()
        assert (await get(session, m.url + "/models/a.bin", Range="bytes=0-99999"))[2] == DATA[
            :100_000
        ]
        assert time.monotonic() - t0 >= 0.4  # 100 kB at 200 kB/s


async def test_stop_does_not_wait_for_slow_answers(
    root: Path, session: aiohttp.ClientSession
) -> None:
    m = MirrorServer(root)
    await m.start()
    m.add_fault(Fault("drip", rate=1000))  # 300 kB would take 5 minutes
    resp = await session.get(m.url + "/models/a.bin")
    await resp.content.readexactly(10)
    t0 = time.monotonic()
    await m.stop()
    assert time.monotonic() - t0 < 3
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    resp.release()


def test_thread_mode_serves_sync_clients(root: Path) -> None:
    with MirrorServer(root).running() as m:
        with urllib.request.urlopen(m.url + "/small.txt", timeout=10) as r:
            assert r.read() == b"hello world\n"
        req = urllib.request.Request(m.url + "/models/a.bin", headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 206 and r.read() == DATA[10:20]
        m.add_fault(Fault("status", status=500))
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(m.url + "/small.txt", timeout=10)
        info.value.close()
        assert info.value.code == 500 and len(m.requests) == 3
    with pytest.raises(OSError):
        urllib.request.urlopen(m.url + "/small.txt", timeout=5)


async def test_wait_for_requests(root: Path, session: aiohttp.ClientSession) -> None:
    for threaded in (False, True):
        m = MirrorServer(root)
        if threaded:
            m.start_in_thread()
        else:
            await m.start()
        try:
            m.add_fault(Fault("stall", path="*.txt"))
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(get(session, m.url + "/small.txt"))
                [rec] = await m.wait_for_requests(1, "*.txt", timeout=5)
                assert rec.fault == "stall"
                task.cancel()
            with pytest.raises(TimeoutError):
                await m.wait_for_requests(2, timeout=0.05)
        finally:
            if threaded:
                m.stop_thread()
            else:
                await m.stop()


async def test_stop_with_idle_keepalive_connection_is_quick(root: Path) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        m = MirrorServer(root)
        await m.start()
        async with s.get(m.url + "/small.txt") as r:
            assert await r.read() == b"hello world\n"
        t0 = time.monotonic()
        await m.stop()
        assert time.monotonic() - t0 < 0.5
