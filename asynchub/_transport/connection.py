"""One HTTP/1.1 connection of the buffered receive path (:mod:`.stream`): an asyncio
``BufferedProtocol`` that parses the status line and headers with h11 and reads a sized body
straight into reusable :class:`Piece` buffers (see :mod:`.stream` for the choices)."""

from __future__ import annotations

import asyncio
import collections
import mmap
import os
import time
from collections.abc import Iterator, Mapping
from typing import cast

import h11

from .._exceptions import ProtocolError, StallError
from .splicing import AVAILABLE as SPLICE_AVAILABLE
from .splicing import MIN_SPLICE, Pipe, PipePiece, splice_in

__all__ = [
    "BUFFERS",
    "HEAD_LIMIT",
    "HEAD_READ",
    "Buffer",
    "Connection",
    "Headers",
    "Piece",
    "Spare",
    "new_buffer",
]

BUFFERS = 2
HEAD_LIMIT = 64 * 1024
#: The most read at once while a head is awaited. A read takes whatever has arrived, and the
#: body's first bytes arrive with the head: they are copied through h11 and a buffer into
#: the file, where the rest of a spliced body never enters the process. With 64 KiB reads a
#: 512 MiB download on 40 connections took ~21 MiB that way (five copies of each byte);
#: a head (a few hundred bytes from a mirror, rarely over 2 KiB from a CDN) fits in 4 KiB,
#: and a longer one is read on, up to :data:`HEAD_LIMIT`.
HEAD_READ = 4 * 1024

#: A receive buffer: private anonymous memory of its own (``mmap``), not a ``bytearray``.
#: Python zero-fills a new ``bytearray`` before the first byte arrives and a freed one goes
#: back to the C heap; an anonymous map is filled by the kernel page by page as bytes arrive
#: and returned to the system when the last reference goes. A 60-model prefetch (~100
#: connections opened) used 2.64-2.76 CPU-s with these against 2.75-2.83 with bytearrays
#: (four runs each), at the same peak memory.
Buffer = mmap.mmap


def new_buffer(size: int) -> Buffer:
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


class Piece:
    """A filled buffer: ``view`` holds the bytes; :meth:`release` returns it to its connection
    (once; the view must not be used after)."""

    __slots__ = ("_conn", "_data", "filled", "view")

    def __init__(self, conn: Connection, data: Buffer) -> None:
        self._conn = conn
        self._data = data
        self.filled = 0
        self.view = memoryview(self._data)[:0]

    @property
    def spliced(self) -> None:
        return None

    def release(self) -> None:
        self._conn.give_back(self)


class Spare:
    """Receive buffers of closed connections, for the next connection of the same transport:
    a new buffer costs a zero-filled allocation and a page fault per 4 KiB on its first
    receive; a spare one is warm. At most ``limit`` are kept. It is also where a transport's
    connections share what splicing learned (a pipe refused) and moved (see :mod:`.splicing`)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        self._buffers: list[Buffer] = []
        self.reused = 0  # buffers handed out again (for tests and benchmarks)
        self.splice_refused = False  # a pipe of ``size`` was refused: no splicing here
        self.spliced = 0  # body bytes moved through pipes (for tests and benchmarks)

    def take(self) -> Buffer | None:
        if not self._buffers:
            return None
        self.reused += 1
        return self._buffers.pop()

    def put(self, data: Buffer) -> None:
        if len(data) == self.size and len(self._buffers) < self.limit:
            self._buffers.append(data)


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only header mapping (the first value of a repeated header)."""

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self._items: dict[str, str] = {}
        self.set_cookies: list[str] = []
        for name, value in items:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            self._items.setdefault(key, text)
            if key == "set-cookie":
                self.set_cookies.append(text)

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items


class Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: the head through h11, a sized body into :class:`Piece` s."""

    def __init__(
        self, origin: tuple[str, str, int], buffer_size: int, spare: Spare | None = None
    ) -> None:
        self.origin = origin
        self.buffer_size = buffer_size
        self._spare = spare
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.closed = False
        self._scratch = bytearray(HEAD_LIMIT)
        self._h11: h11.Connection | None = None
        self._mode = "idle"  # idle | head | body | chunked | done
        self._remaining: int | None = None  # body bytes left; None: until EOF
        self._free: list[Piece] = []
        self._pieces = 0
        self._current: Piece | None = None
        self._ready: collections.deque[Piece | PipePiece] = collections.deque()
        self._head: h11.Response | None = None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False  # every buffer is with the caller
        self._held = False  # a body waits in the kernel until the caller claims it
        self.last_byte = time.monotonic()
        self._current_since = self.last_byte  # when the buffer being filled got its first byte
        self.reusable = False
        self.answered = False
        self.received = 0  # body bytes of the current answer received so far
        # splicing (see .splicing): pipes instead of buffers for the rest of a body
        self._pipes: list[PipePiece] = []  # free
        self._pipe_count = 0
        self._filling: PipePiece | None = None
        self._splice_fd = -1  # a duplicate of the socket's descriptor, watched by the loop
        self._watching = False

    # ---------------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a socket transport (uvloop's are not subclasses of asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._end_splice(resume=False)
        if self._filling is not None and not self._filling.filled:
            self._filling.release()  # nothing arrived in it: its pipe is closed now
            self._filling = None
        self._recycle()
        if self._mode == "body" and self._remaining is None and exc is None:
            self._push_current()
            self._mode = "done"
        elif self._mode in ("head", "body", "chunked", "splice") and self._error is None:
            self._error = exc or ConnectionResetError("the server closed the connection")
        self._wake()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._mode == "body":
            piece = self._current
            if piece is None:
                piece = self._current = self._take_free()
            room = self.buffer_size - piece.filled
            if self._remaining is not None:
                room = min(room, self._remaining)
            return memoryview(piece._data)[piece.filled : piece.filled + room]
        if self._mode == "head":
            return memoryview(self._scratch)[:HEAD_READ]
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        self.last_byte = time.monotonic()
        self.answered = True
        if self._mode == "body":
            piece = self._current
            assert piece is not None
            piece.filled += nbytes
            self.received += nbytes
            if self._remaining is not None:
                self._remaining -= nbytes
            if self._remaining == 0:
                self._push_current()
                self._finish_body()
            elif piece.filled >= self.buffer_size:
                self._push_current()
                if not self._free and self._pieces >= BUFFERS:
                    self._pause()
            return
        data = bytes(self._scratch[:nbytes])
        if self._mode in ("head", "chunked"):
            self._feed(data)
        else:  # bytes while no request is out: the connection cannot be trusted again
            self.reusable = False
            if self.transport is not None:
                self.transport.close()

    def eof_received(self) -> bool | None:
        if self._h11 is not None and self._mode in ("head", "chunked"):
            self._feed(b"")
        return None

    # ---------------------------------------------------------------- parsing
    def _feed(self, data: bytes) -> None:
        conn = self._h11
        assert conn is not None
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    self._on_head(event, conn)
                    if self._mode != "chunked":
                        return
                elif isinstance(event, h11.Data):
                    self._push_bytes(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    self._push_current()
                    self._finish_body()
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    self._fail(ConnectionResetError("the server closed the connection"))
                    return
        except h11.RemoteProtocolError as exc:
            self._fail(ProtocolError(f"malformed HTTP response: {exc}"))

    def _on_head(self, event: h11.Response, conn: h11.Connection) -> None:
        self._head = event
        headers = dict((k.lower(), v) for k, v in event.headers)
        leftover, _closed = conn.trailing_data
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        self.reusable = (
            event.http_version == b"1.1" and headers.get(b"connection", b"").lower() != b"close"
        )
        if event.status_code in (204, 304) or 100 <= event.status_code < 200:
            self._remaining = 0
        elif chunked:
            self._mode = "chunked"
            self._wake()
            return
        elif b"content-length" in headers:
            self._remaining = int(headers[b"content-length"])  # h11 checked it is digits
        else:
            self._remaining = None
            self.reusable = False
        self._mode = "body"
        if leftover:
            keep = leftover if self._remaining is None else leftover[: self._remaining]
            if len(keep) < len(leftover):
                self.reusable = False
            self._push_bytes(keep)
            if self._remaining is not None:
                self._remaining -= len(keep)
        if self._remaining == 0:
            self._push_current()
            self._finish_body()
        elif self.transport is not None:
            self._held = True  # until the caller asks for it (see _claim)
            self.transport.pause_reading()
            if self._current is None and not self._free and self._pieces >= BUFFERS:
                self._paused = True  # every buffer is still with the caller
        self._wake()

    def _push_bytes(self, data: bytes) -> None:
        """Copy ``data`` into pieces (the few bytes that came with the head; chunked bodies)."""
        view = memoryview(data)
        while view:
            piece = self._current
            if piece is None:
                piece = self._current = self._take_free()
            n = min(len(view), self.buffer_size - piece.filled)
            piece._data[piece.filled : piece.filled + n] = view[:n]
            piece.filled += n
            self.received += n
            view = view[n:]
            if piece.filled >= self.buffer_size:
                self._push_current()
        if self._mode == "chunked" and not self._free and self._pieces >= BUFFERS:
            self._pause()
        self._wake()

    def _finish_body(self) -> None:
        self._mode = "done"
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self.reusable = False
        self._end_splice(resume=False)
        if self.transport is not None:
            self.transport.close()
        self._wake()

    # ---------------------------------------------------------------- buffers
    def _take_free(self) -> Piece:
        """A buffer for the bytes about to arrive (it becomes ``_current``)."""
        self._current_since = time.monotonic()
        if self._free:
            return self._free.pop()
        self._pieces += 1  # grows past BUFFERS only if a transport reads once more
        spare = self._spare
        data = spare.take() if spare is not None else None
        return Piece(self, data if data is not None else new_buffer(self.buffer_size))

    def _push_current(self) -> None:
        piece = self._current
        if piece is not None and piece.filled:
            piece.view = memoryview(piece._data)[: piece.filled]
            self._ready.append(piece)
            self._current = None
            self._wake()

    def give_back(self, piece: Piece) -> None:
        piece.filled = 0
        piece.view = memoryview(piece._data)[:0]
        if self.closed:  # the buffer outlives its connection: for the next one
            if self._spare is not None:
                self._spare.put(piece._data)
            return
        self._free.append(piece)
        self._wake()
        if self._paused and not self.closed and self.transport is not None:
            self._paused = False
            if self._mode != "splice" and not self._held:  # else: once the body is in
                self.transport.resume_reading()

    def _claim(self) -> None:
        """The caller asks for the body: the transport reads it from now on (unless every
        buffer is still with the caller). Until then its bytes wait in the kernel, so a body
        the caller splices is spliced from its first byte after the head."""
        if self._unhold() and not self._paused and not self.closed and self.transport is not None:
            self.transport.resume_reading()

    def _unhold(self) -> bool:
        """The body no longer waits for the caller (read or spliced from now on); whether it
        did. The stall clock starts now: the time the caller took is not the server's."""
        if not self._held:
            return False
        self._held = False
        self.last_byte = time.monotonic()
        return True

    # ---------------------------------------------------------------- splicing
    def start_splicing(self) -> bool:
        """Move the rest of the body through pipes (see :mod:`.splicing`); False where
        that is not possible (nothing changes then)."""
        transport = self.transport
        if (
            not SPLICE_AVAILABLE
            or self._mode != "body"
            or self._remaining is None
            or self._remaining < MIN_SPLICE
            or transport is None
            or self.closed
            or transport.is_closing()
            or transport.get_extra_info("sslcontext") is not None
            or transport.get_extra_info("ssl_object") is not None
            or (self._spare is not None and self._spare.splice_refused)
        ):
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        piece = self._take_pipe()
        if piece is None:
            if self._spare is not None and self._pipe_count == 0:
                self._spare.splice_refused = True
            return False
        self._pipes.append(piece)
        self._unhold()
        transport.pause_reading()  # the transport reads again once the body is in
        self._push_current()  # what arrived so far goes in its buffer
        self._splice_fd = os.dup(sock.fileno())
        self._mode = "splice"
        self._watch()
        return True

    def _take_pipe(self) -> PipePiece | None:
        if self._pipes:
            return self._pipes.pop()
        if self._pipe_count >= BUFFERS:
            return None
        pipe = Pipe.open(self.buffer_size)
        if pipe is None:
            return None
        self._pipe_count += 1
        return PipePiece(self, pipe)

    def _watch(self) -> None:
        if not self._watching and self._splice_fd >= 0:
            asyncio.get_running_loop().add_reader(self._splice_fd, self._splice_ready)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            asyncio.get_running_loop().remove_reader(self._splice_fd)

    def _splice_ready(self) -> None:
        """The socket is readable: move what arrived into the pipe being filled."""
        piece = self._filling
        if piece is None:
            piece = self._filling = self._take_pipe()
            if piece is None:  # every pipe is with the caller: wait (TCP slows the sender)
                self._unwatch()
                return
        remaining = self._remaining or 0
        try:
            moved = splice_in(
                self._splice_fd, piece.pipe, min(self.buffer_size - piece.filled, remaining)
            )
        except BlockingIOError:  # readable, yet nothing moves: this pipe is full
            if piece.filled:
                self._push_pipe()
            return
        except OSError as exc:
            self._fail(exc)
            return
        if moved <= 0:
            self._fail(ConnectionResetError("the server closed the connection"))
            return
        now = time.monotonic()
        self.last_byte = now
        self.answered = True
        if not piece.filled:
            self._current_since = now
        piece.filled += moved
        piece.pending += moved
        self.received += moved
        remaining -= moved
        self._remaining = remaining
        if self._spare is not None:
            self._spare.spliced += moved
        if remaining == 0:
            self._push_pipe()
            self._end_splice(resume=True)
            self._finish_body()
        elif piece.filled >= self.buffer_size:
            self._push_pipe()

    def _push_pipe(self) -> None:
        piece = self._filling
        if piece is not None and piece.filled:
            self._ready.append(piece)
            self._filling = None
            self._wake()
            if not self._pipes and self._pipe_count >= BUFFERS:
                self._unwatch()

    def _end_splice(self, *, resume: bool) -> None:
        """Stop watching the duplicate descriptor; the transport reads again if
        ``resume`` (a body read to its end on a connection that stays open)."""
        if self._splice_fd < 0:
            return
        self._unwatch()
        os.close(self._splice_fd)
        self._splice_fd = -1
        if resume and not self.closed and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def give_back_pipe(self, piece: PipePiece) -> None:
        """A pipe piece is back from the caller: reused if empty, else closed (its bytes
        must never reach another piece)."""
        if piece.pending or self.closed:
            self._drop_pipe(piece)
        else:
            piece.filled = 0
            self._pipes.append(piece)
        if self._mode == "splice" and not self.closed:
            self._watch()
        self._wake()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            if not self._held:
                self.transport.pause_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        try:
            await asyncio.wait_for(self._waiter, seconds)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiter = None

    # ---------------------------------------------------------------- caller side
    async def buffer_free(self) -> None:
        """Wait until a buffer is back from the caller (so a new body has room)."""
        while not self._free and self._pieces >= BUFFERS and not self.closed:
            await self._wait(1.0)

    def start(self, request: bytes, conn: h11.Connection) -> None:
        assert self.transport is not None
        self._h11 = conn
        self._mode = "head"
        self._head = None
        self._error = None
        self._remaining = None
        self.reusable = False
        self.answered = False
        self.received = 0
        self.last_byte = time.monotonic()
        self.transport.write(request)

    async def head(self, stall: float) -> h11.Response:
        while self._head is None:
            if self._error is not None:
                raise self._error
            quiet = time.monotonic() - self.last_byte
            if quiet >= stall:
                raise StallError(f"no answer within {stall:g} s")
            await self._wait(stall - quiet)  # wakes on data, or exactly when the stall is due
        return self._head

    async def next_piece(self, stall: float, flush: float) -> Piece | PipePiece | None:
        self._claim()
        while True:
            if self._ready:
                return self._ready.popleft()
            splicing = self._filling is not None
            piece: Piece | PipePiece | None = self._filling if splicing else self._current
            if self._error is not None:
                if piece is not None and piece.filled and self._mode in ("body", "splice"):
                    self._push_partial(splicing)  # the bytes that did arrive, before the error
                    continue
                raise self._error
            if self._mode == "done":
                return None
            now = time.monotonic()
            quiet = now - self.last_byte
            if quiet >= stall:
                raise StallError(f"no bytes within {stall:g} s")
            if piece is not None and piece.filled and self._mode in ("body", "splice"):
                age = now - self._current_since
                if age >= flush:  # a slow connection: hand over what it has
                    self._push_partial(splicing)
                    continue
                await self._wait(min(flush - age, stall - quiet))
            else:
                await self._wait(min(flush, stall - quiet))

    def _push_partial(self, splicing: bool) -> None:
        if splicing:
            self._push_pipe()
        else:
            self._push_current()

    @property
    def body_done(self) -> bool:
        return self._mode == "done" and not self._ready

    def close(self) -> None:
        self.reusable = False
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._end_splice(resume=False)
        for piece in self._ready:
            if isinstance(piece, PipePiece):
                piece.release()  # still holding bytes: closed
            else:
                piece.filled = 0
                self._free.append(piece)
        self._ready.clear()
        if self._current is not None:  # the bytes of a body cut short: not wanted
            self._current.filled = 0
            self._free.append(self._current)
            self._current = None
        if self._filling is not None:
            self._filling.release()
            self._filling = None
        self._recycle()

    def _recycle(self) -> None:
        """A closed connection's idle buffers go to the spares of its transport. It then holds
        no piece (each piece refers to its connection): nothing waits for the cycle collector,
        and the buffers not kept are returned as soon as their last piece is dropped."""
        if self._spare is not None:
            for piece in self._free:
                self._spare.put(piece._data)
        self._free.clear()
        for pipe_piece in self._pipes:
            self._drop_pipe(pipe_piece)
        self._pipes.clear()

    def _drop_pipe(self, piece: PipePiece) -> None:
        piece.pipe.close()
        self._pipe_count -= 1
