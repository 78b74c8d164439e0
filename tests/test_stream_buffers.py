"""The stream transport's receive buffers: a connection closed early (a range cut short)
leaves its buffers to the next connection, at most a few are kept, and the
bytes read through recycled buffers are the file's."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from asynchub._transport.connection import BUFFERS, Connection, Spare, new_buffer
from asynchub._transport.stream import StreamTransport
from tests.mirror import MirrorServer
from tests.test_transfer import MIB, fast_config, put

pytestmark = pytest.mark.timeout(30)


async def _read(transport: StreamTransport, url: str, start: int, end: int, *, cut: bool) -> bytes:
    """Bytes ``start..end-1`` (or only the first piece, closing the connection, if ``cut``)."""
    got = bytearray()
    async with transport.request(url, headers={"Range": f"bytes={start}-{end - 1}"}) as response:
        assert response.status == 206
        async for piece in response.iter_pieces():
            got += piece.view
            piece.release()
            if cut:
                response.close()
                break
    return bytes(got)


async def test_a_cut_connection_leaves_its_buffers_to_the_next(
    server: MirrorServer, tmp_path: Path
) -> None:
    blob = put(tmp_path / "root", "big.bin", 3 * MIB)
    url = f"{server.url}/big.bin"
    transport = StreamTransport(fast_config(tmp_path / "cache"))
    try:
        with anyio.fail_after(20):
            first = await _read(transport, url, 0, 3 * MIB, cut=True)
            assert 0 < len(first) <= MIB and blob.data.startswith(first)
            assert transport.spare.reused == 0
            rest = await _read(transport, url, len(first), 3 * MIB, cut=False)
    finally:
        await transport.aclose()
    assert first + rest == blob.data
    assert transport.spare.reused >= 1  # the second connection started with warm buffers


def test_spares_are_bounded_and_sized() -> None:
    spare = Spare(1024, limit=BUFFERS)
    for _ in range(BUFFERS + 3):
        spare.put(new_buffer(1024))
    spare.put(new_buffer(512))  # another size is never handed out
    taken = [spare.take() for _ in range(BUFFERS + 1)]
    assert [len(b) for b in taken if b is not None] == [1024] * BUFFERS
    assert taken[-1] is None


async def test_a_kept_alive_connection_keeps_its_buffers(
    server: MirrorServer, tmp_path: Path
) -> None:
    """Requests one after the other on one keep-alive connection reuse its two buffers: no
    new buffer per request."""
    blob = put(tmp_path / "root", "many.bin", 8 * MIB)
    url = f"{server.url}/many.bin"
    transport = StreamTransport(fast_config(tmp_path / "cache"))
    try:
        with anyio.fail_after(20):
            got = b"".join(
                [await _read(transport, url, i * MIB, (i + 1) * MIB, cut=False) for i in range(8)]
            )
            pooled = [c for conns in transport._idle.values() for c in conns]
            spares, reused = len(transport.spare._buffers), transport.spare.reused
    finally:
        await transport.aclose()
    assert got == blob.data
    assert len(pooled) == 1 and pooled[0]._pieces <= BUFFERS
    assert spares == 0 and reused == 0  # never handed over between requests


def test_a_closed_connection_holds_no_piece() -> None:
    """Closing mid-body leaves the connection holding no piece (each refers back to it): its
    buffers go to the spares or are freed at once, not whenever the cycle collector runs."""
    spare = Spare(1024, limit=8)
    conn = Connection(("http", "127.0.0.1", 1), 1024, spare)
    conn._mode, conn._remaining = "body", 5000  # a body under way, as after its head
    view = conn.get_buffer(-1)
    view[:100] = b"x" * 100
    conn.buffer_updated(100)  # part of a buffer received
    assert conn._current is not None
    conn.close()
    assert conn._current is None and not conn._free and not conn._ready
    assert len(spare._buffers) == 1
