"""Tests of the fault switches of the test mirror (``tests/mirror.py``).

Each kind is checked to do what it says on the wire and to stop after ``times`` requests.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.mirror import FAULT_KINDS, Fault, MirrorServer
from tests.test_mirror_fixture import DATA, get, raw_request

pytestmark = pytest.mark.timeout(20)
N = len(DATA)
URL_PATH = "/models/a.bin"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    (site / "models").mkdir(parents=True)
    (site / "models" / "a.bin").write_bytes(DATA)
    (site / "small.txt").write_bytes(b"hello world\n")
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


async def assert_healthy(m: MirrorServer, s: aiohttp.ClientSession) -> None:
    """The fault has expired: a plain and a ranged request are answered normally."""
    status, _, body = await get(s, m.url + URL_PATH)
    assert (status, body) == (200, DATA)
    status, headers, body = await get(s, m.url + URL_PATH, Range="bytes=100-199")
    assert (status, body, headers["Content-Range"]) == (206, DATA[100:200], f"bytes 100-199/{N}")
    assert m.requests[-1].fault is None


@pytest.mark.parametrize("kind", ["drop", "short_close"])
async def test_drop_closes_after_some_bytes(
    mirror: MirrorServer, session: aiohttp.ClientSession, kind: str
) -> None:
    fault = mirror.add_fault(Fault(kind, after_bytes=1234))
    raw = await raw_request(mirror, URL_PATH)
    assert raw.status == 200 and raw.headers["content-length"] == str(N)
    assert raw.body == DATA[:1234]
    assert fault.hits == 1 and fault.exhausted and mirror.requests[-1].fault == kind
    assert mirror.served_bytes() == 1234
    await assert_healthy(mirror, session)


async def test_drop_is_seen_by_aiohttp_as_payload_error(
    mirror: MirrorServer, session: aiohttp.ClientSession
) -> None:
    mirror.add_fault(Fault("drop", after_bytes=10, only_ranged=True))
    assert (await get(session, mirror.url + URL_PATH))[0] == 200  # not ranged: untouched
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(session, mirror.url + URL_PATH, Range="bytes=1000-")


async def test_reset_aborts_connection(
    mirror: MirrorServer, session: aiohttp.ClientSession
) -> None:
    mirror.add_fault(Fault("reset", after_bytes=0))
    with pytest.raises(aiohttp.ClientError):
        await get(session, mirror.url + URL_PATH)
    await assert_healthy(mirror, session)


async def test_stall_sends_prefix_then_nothing(
    mirror: MirrorServer, session: aiohttp.ClientSession
) -> None:
    mirror.add_fault(Fault("stall", after_bytes=500))
    async with session.get(mirror.url + URL_PATH) as resp:
        assert await resp.content.readexactly(500) == DATA[:500]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resp.content.read(1), 0.3)
    assert mirror.requests[-1].body_bytes == 500
    await assert_healthy(mirror, session)


async def test_drip_paces_the_body(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    mirror.add_fault(Fault("drip", rate=20_000))
    t0 = time.monotonic()
    status, _, body = await get(session, mirror.url + URL_PATH, Range="bytes=0-7999")
    assert (status, body) == (206, DATA[:8000])
    assert time.monotonic() - t0 >= 0.3  # 8 kB at 20 kB/s
    assert mirror.requests[-1].fault == "drip"


async def test_ignore_range(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    mirror.add_fault(Fault("ignore_range"))
    assert (await get(session, mirror.url + URL_PATH))[0] == 200  # does not consume it
    status, headers, body = await get(session, mirror.url + URL_PATH, Range="bytes=10-19")
    assert (status, body) == (200, DATA) and "Content-Range" not in headers
    await assert_healthy(mirror, session)


@pytest.mark.parametrize(
    ("kind", "spec", "announced", "body"),
    [
        ("wrong_range", "bytes=10-19", f"bytes 11-20/{N}", DATA[10:20]),
        ("wrong_range", f"bytes={N - 10}-", f"bytes {N - 11}-{N - 2}/{N}", DATA[-10:]),
        ("wrong_total", "bytes=10-19", f"bytes 10-19/{N + 1}", DATA[10:20]),
        ("bad_range_syntax", "bytes=10-19", "bytes abc", DATA[10:20]),
    ],
    ids=["wrong_range", "wrong_range_at_end", "wrong_total", "bad_range_syntax"],
)
async def test_bad_content_range(
    mirror: MirrorServer, session: aiohttp.ClientSession, kind: str, spec: str, announced: str,
    body: bytes,
) -> None:  # fmt: skip
    mirror.add_fault(Fault(kind))
    status, headers, got = await get(session, mirror.url + URL_PATH, Range=spec)
    assert (status, headers["Content-Range"], got) == (206, announced, body)
    assert headers["Content-Length"] == str(len(body))
    await assert_healthy(mirror, session)


async def test_multipart(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    mirror.add_fault(Fault("multipart", times=2))
    status, headers, body = await get(session, mirror.url + URL_PATH, Range="bytes=0-9")
    assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    assert f"Content-Range: bytes 0-9/{N}\r\n\r\n".encode() + DATA[:10] in body
    assert int(headers["Content-Length"]) == len(body)
    status, _, body = await get(session, mirror.url + URL_PATH, Range="bytes=0-1,100-101")
    assert status == 206 and DATA[100:102] in body and body.count(b"Content-Range") == 2
    await assert_healthy(mirror, session)


async def test_short(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    mirror.add_fault(Fault("short", after_bytes=100, times=2))
    status, headers, body = await get(session, mirror.url + URL_PATH, Range="bytes=1000-2999")
    assert (status, headers["Content-Range"], body) == (
        206,
        f"bytes 1000-2999/{N}",
        DATA[1000:1100],
    )
    assert headers["Content-Length"] == "100"
    status, headers, body = await get(session, mirror.url + URL_PATH)
    assert (status, headers["Content-Length"], body) == (200, "100", DATA[:100])
    await assert_healthy(mirror, session)


async def test_long_body(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    mirror.add_fault(Fault("long_body", after_bytes=50))
    raw = await raw_request(mirror, "/small.txt", {"Range": "bytes=0-4"})
    assert raw.status == 206 and raw.headers["content-length"] == "5"
    assert raw.body == b"hello" + b"X" * 50
    assert mirror.served_bytes() == 55
    await assert_healthy(mirror, session)


@pytest.mark.parametrize(("after", "expected"), [(700, DATA[:700]), (0, DATA)], ids=["cut", "full"])
async def test_close_delimited(
    mirror: MirrorServer, session: aiohttp.ClientSession, after: int, expected: bytes
) -> None:
    mirror.add_fault(Fault("close_delimited", after_bytes=after))
    raw = await raw_request(mirror, URL_PATH)
    assert raw.status == 200 and raw.body == expected
    assert "content-length" not in raw.headers and "transfer-encoding" not in raw.headers
    assert raw.headers["connection"] == "close"
    mirror.add_fault(Fault("close_delimited", after_bytes=after))
    assert (await get(session, mirror.url + URL_PATH))[2] == expected
    await assert_healthy(mirror, session)


async def test_status_with_retry_after(
    mirror: MirrorServer, session: aiohttp.ClientSession
) -> None:
    mirror.add_fault(Fault("status", status=429, retry_after="3", times=2))
    for _ in range(2):
        status, headers, _ = await get(session, mirror.url + URL_PATH)
        assert (status, headers["Retry-After"]) == (429, "3")
    await assert_healthy(mirror, session)
    forever = mirror.add_fault(Fault("status", path="*.txt", times=None))
    for _ in range(3):
        assert (await get(session, mirror.url + "/small.txt"))[0] == 503
    assert forever.hits == 3 and not forever.exhausted
    mirror.add_fault(Fault("status", status=416))
    status, headers, _ = await get(session, mirror.url + URL_PATH, Range="bytes=0-1")
    assert (status, headers["Content-Range"]) == (416, f"bytes */{N}")
    mirror.clear_faults()
    assert (await get(session, mirror.url + "/small.txt"))[0] == 200


async def test_redirect(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    mirror.add_fault(Fault("redirect", path="/old/*", location="/small.txt", times=None))
    status, headers, _ = await get(session, mirror.url + "/old/x.bin")
    assert (status, headers["Location"]) == (302, "/small.txt")
    async with session.get(mirror.url + "/old/y.bin") as r:
        assert await r.read() == b"hello world\n"
    mirror.add_fault(Fault("redirect", path="/loop", location=mirror.url + "/loop", times=None))
    with pytest.raises(aiohttp.TooManyRedirects):
        await session.get(mirror.url + "/loop", max_redirects=5)
    for location in ("file:///etc/passwd", "data:,x", mirror.url_for("127.0.0.2") + "/small.txt"):
        mirror.add_fault(Fault("redirect", location=location))
        assert (await get(session, mirror.url + "/small.txt"))[1]["Location"] == location
    with pytest.raises(ValueError, match="location"):
        mirror.add_fault(Fault("redirect"))


async def test_corrupt_flips_one_byte(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    mirror.add_fault(Fault("corrupt", after_bytes=5, times=2))
    _, _, body = await get(session, mirror.url + URL_PATH, Range="bytes=1000-1999")
    assert body[5] == DATA[1005] ^ 0xFF and body[:5] + body[6:] == DATA[1000:1005] + DATA[1006:2000]
    _, _, body = await get(session, mirror.url + URL_PATH)
    assert len(body) == N and [i for i in range(N) if body[i] != DATA[i]] == [5]
    await assert_healthy(mirror, session)


async def test_gzip(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    mirror.add_fault(Fault("gzip", times=2))
    status, headers, body = await get(session, mirror.url + URL_PATH)
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == DATA and headers["Content-Length"] == str(len(body))
    status, headers, body = await get(session, mirror.url + URL_PATH, Range="bytes=0-99")
    assert status == 206 and gzip.decompress(body) == DATA[:100]
    await assert_healthy(mirror, session)


async def test_change_etag(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    etag = (await get(session, mirror.url + URL_PATH))[1]["ETag"]
    mirror.add_fault(Fault("change_etag"))
    status, headers, body = await get(
        session, mirror.url + URL_PATH, Range="bytes=0-9", If_Range=etag
    )
    assert (status, body) == (200, DATA) and headers["ETag"] != etag
    etag2 = headers["ETag"]
    assert (await get(session, mirror.url + URL_PATH, If_Match=etag2))[0] == 200
    mirror.add_fault(Fault("change_etag", data=b"replaced upstream"))
    status, headers, body = await get(session, mirror.url + URL_PATH, If_Match=etag2)
    assert status == 412 and headers["ETag"] not in (etag, etag2)
    assert (await get(session, mirror.url + URL_PATH))[2] == b"replaced upstream"


async def test_expire(mirror: MirrorServer, session: aiohttp.ClientSession) -> None:
    mirror.add_fault(Fault("expire", path="/signed/*", times=None))
    mirror.add_fault(Fault("expire", path="/small.txt", status=410))
    assert (await get(session, mirror.url + "/signed/abc/small.txt"))[0] == 403
    assert (await get(session, mirror.url + "/small.txt"))[0] == 410
    assert (await get(session, mirror.url + "/small.txt"))[0] == 200


async def test_only_start_above_and_globs(
    mirror: MirrorServer, session: aiohttp.ClientSession
) -> None:
    fault = mirror.add_fault(
        Fault("status", path="models/*.bin", only_start_above=1000, times=None)
    )
    assert (await get(session, mirror.url + URL_PATH, Range="bytes=0-10"))[0] == 206
    assert (await get(session, mirror.url + URL_PATH, Range="bytes=1000-"))[0] == 206
    assert (await get(session, mirror.url + URL_PATH, Range="bytes=1001-"))[0] == 503
    assert (await get(session, mirror.url + URL_PATH, Range="bytes=-10"))[0] == 503
    assert (await get(session, mirror.url + URL_PATH))[0] == 200
    assert (await get(session, mirror.url + "/small.txt", Range="bytes=5-"))[0] == 206
    assert fault.hits == 2


async def test_faults_apply_in_order_one_per_request(
    mirror: MirrorServer, session: aiohttp.ClientSession
) -> None:
    first = mirror.add_fault(Fault("status", status=500))
    second = mirror.add_fault(Fault("status", status=502))
    statuses = [(await get(session, mirror.url + URL_PATH))[0] for _ in range(3)]
    assert statuses == [500, 502, 200] and first.hits == second.hits == 1
    assert [r.fault for r in mirror.requests] == ["status", "status", None]


def test_unknown_fault_kind_is_refused(tmp_path: Path) -> None:
    m = MirrorServer(tmp_path)
    with pytest.raises(ValueError, match="unknown fault kind"):
        m.add_fault(Fault("explode"))
    with pytest.raises(ValueError, match="rate"):
        m.add_fault(Fault("drip"))
    assert "drop" in FAULT_KINDS and "expire" in FAULT_KINDS
