"""Splicing: a plain-HTTP body moved from the socket into the file through pipes (Linux). The
bytes that reach the file are the server's, a kept-alive connection reads its next answer
after a spliced one, a body cut short is an error with nothing left open, TLS never splices,
and the engine splices the bodies of a new file on a local file system (read back through
maps), and of a resumed one only the ranges of a file on several connections, and still
verifies it."""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import importlib.util
import os
import ssl
import termios
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme

from asynchub._cache.layout import partials_for
from asynchub._config import HubConfig
from asynchub._engine.engine import Engine
from asynchub._engine.pieces import trim as _trim
from asynchub._exceptions import ConfigError, StallError, TransferError
from asynchub._loops import loop_factory
from asynchub._transport.connection import HEAD_LIMIT, HEAD_READ
from asynchub._transport.splicing import AVAILABLE, MIN_SPLICE
from asynchub._transport.stream import StreamTransport
from tests.mirror import Fault, MirrorServer
from tests.test_transfer import KIB, MIB, Blob, fast_config, job_for, put

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not AVAILABLE, reason="splice is Linux only"),
]


def _pipes() -> int:
    """Pipes open in this process."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{name}").startswith("pipe:")
    return count


def wide_config(cache: Path, **overrides: Any) -> HubConfig:
    """Eight connections on 2 MiB ranges: a file the engine splices."""
    return fast_config(
        cache, chunk_size=2 * MIB, min_split_size=2 * MIB, max_connections=8,
        max_connections_per_host=8, state_interval=4 * MIB, **overrides,
    )  # fmt: skip


async def engine_fetch(base: str, blob: Blob, cache: Path, config: HubConfig) -> tuple[Path, int]:
    """``blob`` fetched from the mirror at ``base`` into ``cache`` by an engine on a stream
    transport: its path, and the bytes that went through pipes."""
    transport = StreamTransport(config)
    try:
        with anyio.fail_after(60):
            path = await Engine(config, transport).fetch(job_for(f"{base}/{blob.rel}", blob, cache))
    finally:
        await transport.aclose()
    return path, transport.spare.spliced


async def _splice_range(
    transport: StreamTransport, url: str, start: int, end: int, out: int
) -> tuple[bool, int, object]:
    """Fetch bytes ``start..end-1`` into the file ``out`` at their offset, splicing; (whether
    it spliced, how many pieces came spliced, the connection)."""
    spliced = 0
    async with transport.request(url, headers={"Range": f"bytes={start}-{end - 1}"}) as response:
        assert response.status == 206
        conn = response._conn
        did = response.splice()
        at = start
        async for piece in response.iter_pieces():
            try:
                kept = piece.spliced
                if kept is None:
                    os.pwrite(out, piece.view, at)
                    at += len(piece.view)
                else:
                    spliced += 1
                    size = len(kept)
                    await anyio.to_thread.run_sync(kept.write_to, out, at)
                    at += size
            finally:
                piece.release()
        assert at == end
    return did, spliced, conn


async def test_a_spliced_body_reaches_the_file_intact_and_the_connection_lives_on(
    server: MirrorServer, tmp_path: Path
) -> None:
    blob = put(tmp_path / "root", "big.bin", 9 * MIB + 123)
    url = f"{server.url}/big.bin"
    transport = StreamTransport(fast_config(tmp_path / "cache"))
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with anyio.fail_after(30):
            first = await _splice_range(transport, url, 0, 5 * MIB, fd)
            second = await _splice_range(transport, url, 5 * MIB, blob.size, fd)
    finally:
        os.close(fd)
        await transport.aclose()
    assert (tmp_path / "out").read_bytes() == blob.data
    assert first[0] and second[0] and first[1] >= 2 and second[1] >= 2
    assert transport.spare.spliced >= 8 * MIB  # nearly all of it went through pipes
    assert len(server.requests) == 2
    assert second[2] is first[2]  # the same connection, kept alive after a spliced body


async def test_a_file_that_refuses_a_splice_gets_the_bytes_through_memory(
    server: MirrorServer, tmp_path: Path
) -> None:
    """Linux refuses ``splice`` into a file opened for appending (``EINVAL``), as some file
    systems refuse it for every file: the piece's bytes are then read out of the pipe and
    written with ``pwrite``, and the file still gets every byte (appended in order here)."""
    blob = put(tmp_path / "root", "big.bin", 5 * MIB)
    transport = StreamTransport(fast_config(tmp_path / "cache"))
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with anyio.fail_after(30):
            url = f"{server.url}/big.bin"
            did, spliced, _ = await _splice_range(transport, url, 0, blob.size, fd)
    finally:
        os.close(fd)
        await transport.aclose()
    assert did and spliced >= 2
    assert (tmp_path / "out").read_bytes() == blob.data


async def test_a_small_body_is_not_spliced(server: MirrorServer, tmp_path: Path) -> None:
    put(tmp_path / "root", "small.bin", MIN_SPLICE // 2)
    transport = StreamTransport(fast_config(tmp_path / "cache"))
    try:
        with anyio.fail_after(10):
            async with transport.request(f"{server.url}/small.bin") as response:
                assert not response.splice()
                assert len(await response.read(MIN_SPLICE)) == MIN_SPLICE // 2
    finally:
        await transport.aclose()
    assert transport.spare.spliced == 0


async def test_a_body_cut_short_while_spliced_is_an_error_and_leaves_no_pipe(
    server: MirrorServer, tmp_path: Path
) -> None:
    put(tmp_path / "root", "cut.bin", 8 * MIB)
    server.add_fault(Fault("drop", path="cut.bin", after_bytes=3 * MIB))
    transport = StreamTransport(fast_config(tmp_path / "cache"))
    before = _pipes()
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with anyio.fail_after(20), pytest.raises(TransferError, match="cut short"):
            await _splice_range(transport, f"{server.url}/cut.bin", 0, 8 * MIB, fd)
    finally:
        os.close(fd)
        await transport.aclose()
    assert transport.spare.spliced > 0  # it was splicing when the server closed
    assert _pipes() == before


async def test_a_body_that_stalls_while_spliced_is_a_stall_error_and_leaves_no_pipe(
    server: MirrorServer, tmp_path: Path
) -> None:
    put(tmp_path / "root", "stall.bin", 8 * MIB)
    server.add_fault(Fault("stall", path="stall.bin", after_bytes=3 * MIB))
    transport = StreamTransport(fast_config(tmp_path / "cache", stall_timeout=0.5))
    before = _pipes()
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with anyio.fail_after(20), pytest.raises(StallError):
            await _splice_range(transport, f"{server.url}/stall.bin", 0, 8 * MIB, fd)
    finally:
        os.close(fd)
        await transport.aclose()
    assert transport.spare.spliced > 0
    assert _pipes() == before


async def test_tls_is_never_spliced(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    (tmp_path / "root").mkdir()
    blob = put(tmp_path / "root", "big.bin", 4 * MIB)
    transport = StreamTransport(fast_config(tmp_path / "cache", ca_bundle=pem))
    got = bytearray()
    async with MirrorServer(tmp_path / "root", ssl_context=server_ctx) as srv:
        try:
            with anyio.fail_after(20):
                async with transport.request(f"{srv.url}/big.bin") as response:
                    assert not response.splice()
                    async for piece in response.iter_pieces():
                        assert piece.spliced is None
                        got += piece.view
                        piece.release()
        finally:
            await transport.aclose()
    assert bytes(got) == blob.data


async def test_the_engine_splices_a_file_on_several_connections(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    blob = put(root, "model.onnx", 24 * MIB, seed=7)
    config = wide_config(tmp_path / "cache")
    before = _pipes()
    async with MirrorServer(root) as srv:
        path, spliced = await engine_fetch(srv.url, blob, tmp_path / "cache", config)
    assert path.read_bytes() == blob.data
    assert spliced >= 4 * MIB
    assert _pipes() == before


async def test_splicing_can_be_turned_off(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    blob = put(root, "model.onnx", 24 * MIB, seed=12)
    config = wide_config(tmp_path / "cache", splice=False)
    async with MirrorServer(root) as srv:
        path, spliced = await engine_fetch(srv.url, blob, tmp_path / "cache", config)
    assert path.read_bytes() == blob.data
    assert spliced == 0
    env = {"ASYNCHUB_CACHE_DIR": str(tmp_path), "ASYNCHUB_SPLICE": "0"}
    assert HubConfig.from_env(env).splice is False
    assert HubConfig.from_env({**env, "ASYNCHUB_SPLICE": "yes"}).splice is True
    with pytest.raises(ConfigError, match="ASYNCHUB_SPLICE"):
        HubConfig.from_env({**env, "ASYNCHUB_SPLICE": "sometimes"})


def one_connection(cache: Path) -> HubConfig:
    return fast_config(
        cache, chunk_size=2 * MIB, min_split_size=2 * MIB, max_connections=1,
        max_connections_per_host=1, state_interval=256 * KIB,
    )  # fmt: skip


async def test_a_new_file_on_one_connection_is_spliced_and_read_back_through_maps(
    tmp_path: Path,
) -> None:
    """The hash reads a new partial on a local file system back through maps, so even bytes
    that arrive in order are spliced (one copy instead of two)."""
    root = tmp_path / "mirror"
    blob = put(root, "model.onnx", 8 * MIB, seed=8)
    async with MirrorServer(root) as srv:
        path, spliced = await engine_fetch(srv.url, blob, tmp_path / "cache", one_connection(
            tmp_path / "cache"))  # fmt: skip
    assert path.read_bytes() == blob.data
    assert spliced >= blob.size - HEAD_LIMIT  # all but what arrived with the headers


async def test_a_resumed_file_on_one_connection_stays_in_memory_for_the_hash(
    tmp_path: Path,
) -> None:
    """The bytes of an earlier run may have to come from the disk, where a failed read through
    a map would kill the process: a resumed partial is read back with ``preadv``, and the
    bytes of its one connection, in order, are hashed from the receive buffers."""
    root = tmp_path / "mirror"
    cache = tmp_path / "cache"
    blob = put(root, "model.onnx", 8 * MIB, seed=18)
    config = one_connection(cache)
    async with MirrorServer(root, rate_limit=4 * MIB) as srv:
        job = job_for(f"{srv.url}/{blob.rel}", blob, cache)
        halfway = anyio.Event()
        moved = [0]

        def watch(event: Any) -> None:
            if event.kind == "transfer":
                moved[0] += event.nbytes
                if moved[0] >= 3 * MIB:
                    halfway.set()

        transport = StreamTransport(config)
        try:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    group.start_soon(Engine(config, transport, progress=watch).fetch, job)
                    await halfway.wait()
                    group.cancel_scope.cancel()
        finally:
            await transport.aclose()
        assert not job.dest.exists() and list(partials_for(job.dest))  # left to resume
        srv.rate_limit = None
        path, spliced = await engine_fetch(srv.url, blob, cache, config)
    assert path.read_bytes() == blob.data
    assert spliced == 0


async def test_a_spliced_range_split_by_another_connection_is_written_once(
    tmp_path: Path,
) -> None:
    """One answer drips while the others are fast: an idle connection takes the second part
    of its range, and the dripping one stops at the split point. The bytes it had spliced
    past that point are dropped with their pipe, the file verifies, and no pipe is
    left open."""
    root = tmp_path / "mirror"
    blob = put(root, "slow/model.onnx", 16 * MIB, seed=3)
    config = fast_config(
        tmp_path / "cache", chunk_size=4 * MIB, min_split_size=4 * MIB, state_interval=4 * MIB
    )
    before = _pipes()
    async with MirrorServer(root) as srv:
        srv.rate_limit = 16 * MIB
        drip = srv.add_fault(
            Fault("drip", path="*slow/model.onnx", rate=512 * KIB, only_start_above=4 * MIB - 1)
        )
        path, spliced = await engine_fetch(srv.url, blob, tmp_path / "cache", config)
        requests = srv.requests_for("*slow/model.onnx")
    assert path.read_bytes() == blob.data and drip.hits == 1
    dripped = next(r for r in requests if r.fault == "drip")
    assert dripped.range is not None and dripped.range[1] is not None
    first, last = dripped.range
    assert any(r.range is not None and first < r.range[0] <= last for r in requests)
    assert spliced > 0
    assert _pipes() == before


class _Held:
    """Bytes standing in for a pipe (the ``Spliced`` protocol), to test the cut alone."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    def __len__(self) -> int:
        return len(self.data)

    def write_to(self, fd: int, offset: int) -> None:
        os.pwrite(fd, self.data, offset)

    def read(self) -> bytes:
        self.reads += 1
        return self.data

    def head(self, count: int) -> _Held:
        return _Held(self.data[:count])


def _joined(chunks: list[Any]) -> bytes:
    return b"".join(bytes(c) if not isinstance(c, _Held) else c.data for c in chunks)


def test_a_cut_keeps_only_the_range_and_reads_no_pipe_cut_at_its_end() -> None:
    memory = memoryview(bytearray(b"abcdefgh"))
    whole, split, dropped = _Held(b"ijklmnop"), _Held(b"qrstuvwx"), _Held(b"yz012345")
    kept = _trim([memory, whole, split, dropped], 100, first=102, end=120)
    assert _joined(kept) == b"cdefgh" + b"ijklmnop" + b"qrst"
    assert kept[1] is whole and whole.reads == 0  # kept whole: still spliced
    assert isinstance(kept[2], _Held) and split.reads == 0  # its head, still spliced
    assert dropped.reads == 0
    assert isinstance(kept[0], memoryview) and kept[0].obj is memory.obj  # no copy
    front = _Held(b"ABCDEFGH")  # cut at its start: the bytes before it are read out
    assert _joined(_trim([front], 100, first=103, end=106)) == b"DEF" and front.reads == 1


def test_the_head_of_a_pipe_is_written_alone_and_the_rest_stays(tmp_path: Path) -> None:
    from asynchub._transport.splicing import Pipe, PipePiece

    pipe = Pipe.open(MIB)
    assert pipe is not None
    piece = PipePiece(None, pipe)  # type: ignore[arg-type]  # never released here
    data = os.urandom(100_000)
    os.write(pipe.write_fd, data)
    piece.filled = piece.pending = len(data)
    head = piece.head(60_000)
    assert len(head) == 60_000 and len(head.head(70_000)) == 60_000
    with open(tmp_path / "out", "wb") as out:
        out.write(bytes(10))
        head.write_to(out.fileno(), 10)
    assert (tmp_path / "out").read_bytes() == bytes(10) + data[:60_000]
    assert piece.pending == 40_000  # left in the pipe: the piece is not reused
    assert piece.head(1_000).read() == data[60_000:61_000]
    assert piece.read() == data[61_000:] and piece.pending == 0
    pipe.close()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_splicing_works_on_each_event_loop(kind: str, tmp_path: Path) -> None:
    """The transport pauses itself and the loop watches a duplicate of the socket: the same
    on asyncio's loop and on uvloop's (the sync API and the command line run on uvloop)."""
    if kind == "uvloop" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed here")
    root = tmp_path / "mirror"
    blob = put(root, "model.onnx", 24 * MIB, seed=11)
    config = wide_config(tmp_path / "cache")
    with MirrorServer(root).running() as srv:
        loop = loop_factory(kind)()
        try:
            path, spliced = loop.run_until_complete(
                engine_fetch(srv.url, blob, tmp_path / "cache", config)
            )
        finally:
            loop.close()
    assert type(loop).__module__.split(".")[0] == kind
    assert path.read_bytes() == blob.data
    assert spliced >= 4 * MIB


async def _eager_server(body: bytes) -> tuple[asyncio.AbstractServer, str]:
    """A server that writes every answer's head and body in one go: the body is in the
    client's socket as soon as the head is (a fast mirror's sendfile does the same)."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n"
        b"Connection: close\r\n\r\n" % len(body)
    )

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/model.onnx"


def _unread(fd: int) -> int:
    """Bytes waiting in a socket's receive queue."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


async def _eager_fetch(tmp_path: Path) -> tuple[bytes, int, int, bytes]:
    body = os.urandom(4 * MIB + 7)
    server, url = await _eager_server(body)
    transport = StreamTransport(fast_config(tmp_path / "cache"))
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        async with server, transport.request(url) as response:
            sock = response._conn.transport.get_extra_info("socket")
            for _ in range(100_000):  # until the kernel holds body bytes, or they were read
                if response.received > HEAD_LIMIT or _unread(sock.fileno()) >= 32 * KIB:
                    break
                await asyncio.sleep(0)
            before = response.received  # what came with the head
            assert response.splice()
            at = 0
            async for piece in response.iter_pieces():
                try:
                    kept = piece.spliced
                    if kept is None:
                        at += os.pwrite(fd, piece.view, at)
                    else:
                        size = len(kept)
                        await anyio.to_thread.run_sync(kept.write_to, fd, at)
                        at += size
                finally:
                    piece.release()
        with open(fd, "rb", closefd=False) as out:
            written = out.read()
    finally:
        os.close(fd)
        await transport.aclose()
    return body, before, transport.spare.spliced, written


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_body_waits_in_the_kernel_until_the_caller_asks_for_it(
    kind: str, tmp_path: Path
) -> None:
    """Once the head is in, the transport reads no more until the caller asks for the body:
    a body the caller then splices goes through pipes from its first byte after the head's
    read (at most HEAD_READ bytes), even when the server sent it all at once."""
    if kind == "uvloop" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed here")
    loop = loop_factory(kind)()
    try:
        body, before, spliced, written = loop.run_until_complete(
            asyncio.wait_for(_eager_fetch(tmp_path), 30)
        )
    finally:
        loop.close()
    assert written == body
    assert before <= HEAD_READ  # a head is read in small bites: little body comes with it
    assert spliced >= len(body) - HEAD_READ


def test_a_pipe_short_of_its_count_is_an_error_not_a_wait(tmp_path: Path) -> None:
    """A piece whose pipe holds fewer bytes than its count says (its writer still open) is
    moved out without waiting: the write and the read raise a TransferError the download
    retries, in a thread that would otherwise wait forever."""
    import threading

    from asynchub._transport.splicing import Pipe, PipePiece

    pipe = Pipe.open(MIB)
    assert pipe is not None
    piece = PipePiece(None, pipe)  # type: ignore[arg-type]  # never released here
    os.write(pipe.write_fd, b"x" * 1000)
    piece.filled = piece.pending = 2000
    outcome: list[BaseException | None] = []

    def write() -> None:
        with open(tmp_path / "out", "wb") as out:
            try:
                piece.write_to(out.fileno(), 0)
                outcome.append(None)
            except BaseException as exc:  # handed to the test's thread
                outcome.append(exc)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the write waited for bytes that cannot come"
    (error,) = outcome
    assert isinstance(error, TransferError) and "fetched again" in str(error)
    assert (tmp_path / "out").read_bytes() == b"x" * 1000  # what was there went in
    assert piece.pending == 1000
    with pytest.raises(TransferError, match="1000 missing"):
        piece.read()
    pipe.close()


def test_a_pipe_short_of_its_count_with_its_writer_closed_is_the_same_error(
    tmp_path: Path,
) -> None:
    """The same bookkeeping error when the pipe's writer is closed (the pipe reads as ended,
    not empty): a TransferError the download retries, from the write and the read alike."""
    from asynchub._transport.splicing import Pipe, PipePiece

    pipe = Pipe.open(MIB)
    assert pipe is not None
    piece = PipePiece(None, pipe)  # type: ignore[arg-type]  # never released here
    os.write(pipe.write_fd, b"y" * 1000)
    os.close(pipe.write_fd)
    pipe.write_fd = -1
    piece.filled = piece.pending = 2000
    with open(tmp_path / "out", "wb") as out, pytest.raises(TransferError, match="1000 missing"):
        piece.write_to(out.fileno(), 0)
    assert (tmp_path / "out").read_bytes() == b"y" * 1000
    with pytest.raises(TransferError, match="1000 missing"):
        piece.read()
    pipe.close()
