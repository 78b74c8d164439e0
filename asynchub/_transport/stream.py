"""HTTP/1.1 receive path that reads bodies straight into reusable buffers.

A :class:`StreamTransport` speaks HTTP/1.1 over asyncio connections whose protocol is an
``asyncio.BufferedProtocol``: the kernel copies each body byte once, into a buffer that the
caller then writes (``os.pwritev``) and hashes without another copy, and hands back with
:meth:`Piece.release`.

Choices:

* **h11 for the head, the body by hand.** h11 (a well-kept, strict, sans-I/O HTTP/1.1 parser)
  serialises the request and parses the status line and headers (it refuses bad header names
  or values, duplicate Content-Lengths that disagree, and so on). A body with a
  ``Content-Length`` (every range answer of a file server) is then read by this module into the
  buffers: h11 would copy each byte into its receive buffer and again into a ``Data`` event.
  Chunked bodies (rare from file servers) keep going through h11, with its copies.
* **Buffers per connection.** Each connection owns up to :data:`BUFFERS` buffers of
  ``buffer_size`` bytes (1 MiB by default). A full buffer (or the end of the body, or a partial
  one older than ``flush_interval``) goes to the caller; when every buffer is with the caller,
  the connection stops reading (``pause_reading``) until one is released: memory stays bounded
  and a slow disk slows the sender through TCP.
* **Partial buffers by time.** A slow connection still delivers what it has every
  ``flush_interval`` (0.1 s): progress, the stall watchdog and the resume state see its bytes
  without waiting for a full MiB.
* **Keep-alive.** A connection whose body was read to its end (no ``Connection: close``, HTTP/1.1,
  nothing extra sent) goes back to an idle pool per origin. A reused connection that fails
  before a byte of the answer is replaced by a fresh one once (the server closed an idle
  connection).
* **TLS** is asyncio's SSL transport (which also fills the protocol's buffers) with a verifying
  context: the system trust store, plus ``ca_bundle`` when set.
* **Redirects** are followed here, at most :data:`MAX_REDIRECTS` hops, never from https down to
  http, dropping credentials when the origin changes; the caller reuses the final URL.
* **Credentials** in the URL (``user:pass@``) become a Basic ``Authorization`` header; cookies
  a server sets go back to that host only (a minimal jar); both are dropped when a redirect
  changes the origin.
* **Timeouts.** Connecting is bounded by ``connect_timeout``; while waiting for the head or the
  body, ``stall_timeout`` seconds without a byte raise :class:`StallError`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from urllib.parse import unquote, urljoin, urlsplit

import anyio.to_thread
import h11

from .._config import HubConfig
from .._exceptions import ProtocolError, RedirectError, StallError, TLSError, TransferError
from .base import MAX_REDIRECTS, REDIRECT_STATUSES, parse_content_length

__all__ = ["BUFFERS", "Piece", "StreamResponse", "StreamTransport"]


log = logging.getLogger("asynchub")

USER_AGENT = "asynchub/0.1"
BUFFER_SIZE = 1024 * 1024
BUFFERS = 3
HEAD_LIMIT = 64 * 1024
MAX_INFORMATIONAL = 16
_SENSITIVE = ("authorization", "cookie", "proxy-authorization")


class Piece:
    """A filled buffer: ``view`` holds the bytes; :meth:`release` returns it to its connection
    (once; the view must not be used after)."""

    __slots__ = ("_conn", "_data", "filled", "view")

    def __init__(self, conn: _Connection, size: int) -> None:
        self._conn = conn
        self._data = bytearray(size)
        self.filled = 0
        self.view = memoryview(self._data)[:0]

    def release(self) -> None:
        self._conn.give_back(self)


class _Headers(Mapping[str, str]):
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


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: the head through h11, a sized body into :class:`Piece` s."""

    def __init__(self, origin: tuple[str, str, int], buffer_size: int) -> None:
        self.origin = origin
        self.buffer_size = buffer_size
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
        self._ready: collections.deque[Piece] = collections.deque()
        self._head: h11.Response | None = None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.last_byte = time.monotonic()
        self.reusable = False
        self.answered = False

    # ---------------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._mode == "body" and self._remaining is None and exc is None:
            self._push_current()
            self._mode = "done"
        elif self._mode in ("head", "body", "chunked") and self._error is None:
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
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        self.last_byte = time.monotonic()
        self.answered = True
        if self._mode == "body":
            piece = self._current
            assert piece is not None
            piece.filled += nbytes
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
        self.reusable = event.http_version == b"1.1" and headers.get(
            b"connection", b""
        ).lower() != b"close"
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
        elif self._current is None and not self._free and self._pieces >= BUFFERS:
            self._pause()  # every buffer is still with the caller
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
        if self.transport is not None:
            self.transport.close()
        self._wake()

    # ---------------------------------------------------------------- buffers
    def _take_free(self) -> Piece:
        if self._free:
            return self._free.pop()
        self._pieces += 1  # grows past BUFFERS only if a transport reads once more
        return Piece(self, self.buffer_size)

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
        self._free.append(piece)
        self._wake()
        if self._paused and not self.closed and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
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
        self.last_byte = time.monotonic()
        self.transport.write(request)

    async def head(self, stall: float) -> h11.Response:
        while self._head is None:
            if self._error is not None:
                raise self._error
            await self._wait(min(stall, 1.0))
            if self._head is None and time.monotonic() - self.last_byte > stall:
                raise StallError(f"no answer within {stall:g} s")
        return self._head

    async def next_piece(self, stall: float, flush: float) -> Piece | None:
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._error is not None:
                raise self._error
            if self._mode == "done":
                return None
            await self._wait(flush)
            if self._ready:
                continue
            piece = self._current
            if piece is not None and piece.filled and self._mode == "body":
                self._push_current()  # a slow connection: hand over what it has
                continue
            if time.monotonic() - self.last_byte > stall:
                raise StallError(f"no bytes within {stall:g} s")

    @property
    def body_done(self) -> bool:
        return self._mode == "done" and not self._ready

    def close(self) -> None:
        self.reusable = False
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        for piece in self._ready:
            piece.filled = 0
        self._ready.clear()


class StreamResponse:
    """One answer: ``status``, ``headers``, the final ``url``; its body as :class:`Piece` s."""

    def __init__(
        self, conn: _Connection, head: h11.Response, url: str, config: HubConfig
    ) -> None:
        self._conn = conn
        self._config = config
        self.status: int = head.status_code
        headers = _Headers(list(head.headers))
        self.headers: Mapping[str, str] = headers
        self.set_cookies = headers.set_cookies
        self.url = url
        self.flush_interval = 0.1

    @property
    def content_length(self) -> int | None:
        return parse_content_length(self.headers.get("Content-Length"), self.url)

    async def iter_pieces(self) -> AsyncIterator[Piece]:
        """The body as filled buffers; release each one when its bytes are written."""
        conn = self._conn
        stall = self._config.stall_timeout
        while True:
            try:
                piece = await conn.next_piece(stall, self.flush_interval)
            except (OSError, ssl.SSLError) as exc:
                raise TransferError(
                    f"the body from {self.url} was cut short: {exc!r}", url=self.url
                ) from exc
            except StallError as exc:
                raise StallError(f"{self.url}: {exc}", url=self.url) from None
            except ProtocolError as exc:
                raise ProtocolError(f"{self.url}: {exc}", url=self.url) from None
            if piece is None:
                return
            yield piece

    async def iter_chunks(self, size: int) -> AsyncIterator[bytes]:
        """The body as ``bytes`` of at most ``size`` (copies; for documents and small files)."""
        async for piece in self.iter_pieces():
            try:
                view = piece.view
                for start in range(0, len(view), size):
                    yield bytes(view[start : start + size])
            finally:
                piece.release()

    async def read(self, limit: int) -> bytes:
        declared = self.content_length
        if declared is not None and declared > limit:
            raise ProtocolError(
                f"{self.url} announced {declared} bytes, more than the {limit} allowed",
                url=self.url,
            )
        out = bytearray()
        async for piece in self.iter_pieces():
            try:
                if len(out) + len(piece.view) > limit:
                    raise ProtocolError(
                        f"{self.url} sent more than the {limit} bytes allowed", url=self.url
                    )
                out += piece.view
            finally:
                piece.release()
        return bytes(out)

    def close(self) -> None:
        self._conn.close()


def _split(url: str) -> tuple[tuple[str, str, int], str, str]:
    """``(origin, host header, request target)`` of an http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RedirectError(f"invalid URL {url!r}: {exc}", url=url) from exc
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in ("http", "https") or not host:
        raise RedirectError(f"{url!r} is not an http(s) URL", url=url)
    default = 443 if scheme == "https" else 80
    port = port or default
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == default else f"{shown}:{port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return (scheme, host, port), authority, target


class StreamTransport:
    """GET requests over pooled HTTP/1.1 connections (see the module docstring)."""

    def __init__(self, config: HubConfig, *, buffer_size: int = BUFFER_SIZE) -> None:
        self._config = config
        self.buffer_size = buffer_size
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard: AsyncGenerator[None, None] | None = None
        self._cookies: dict[str, dict[str, str]] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context()
            if self._config.ca_bundle is not None:
                try:
                    context.load_verify_locations(cafile=str(self._config.ca_bundle))
                except (OSError, ssl.SSLError) as exc:
                    raise TLSError(
                        f"cannot load the CA bundle {self._config.ca_bundle}: {exc}; "
                        "point ca_bundle (ASYNCHUB_CA_BUNDLE) at a PEM file"
                    ) from exc
            self._ssl = context
        return self._ssl

    async def _connect(self, origin: tuple[str, str, int], url: str) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # connections never cross event loops
            self._drop_pool()
            self._loop = loop
            guard = self._close_at_loop_end(self._idle)
            await guard.__anext__()
            self._guard = guard
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        scheme, host, port = origin
        context = None
        if scheme == "https":  # loading the trust store blocks: a worker thread, once
            context = self._ssl or await anyio.to_thread.run_sync(self._ssl_context)
        conn = _Connection(origin, self.buffer_size)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn, host, port, ssl=context, server_hostname=host if context else None
                ),
                self._config.connect_timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise TLSError(
                f"TLS failed for {url}: {exc.verify_message}; check the server certificate"
                " or set ca_bundle",
                url=url,
            ) from exc
        except ssl.SSLError as exc:
            raise TLSError(f"TLS failed for {url}: {exc.reason}", url=url) from exc
        except asyncio.TimeoutError as exc:
            raise TransferError(f"connecting to {url} timed out", url=url) from exc
        except OSError as exc:
            raise TransferError(f"connection to {url} failed: {exc!r}", url=url) from exc
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.reusable and conn.body_done and not conn.closed:
            conn._mode = "idle"
            self._idle.setdefault(conn.origin, []).append(conn)
        else:
            conn.close()

    async def _send(
        self, url: str, headers: list[tuple[str, str]]
    ) -> tuple[_Connection, h11.Response]:
        origin, authority, target = _split(url)
        for _fresh in range(2):
            conn = await self._connect(origin, url)
            protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_LIMIT)
            try:
                request = protocol.send(
                    h11.Request(
                        method="GET",
                        target=target,
                        headers=[("Host", authority), ("User-Agent", USER_AGENT), *headers],
                    )
                )
                request = (request or b"") + (protocol.send(h11.EndOfMessage()) or b"")
            except h11.LocalProtocolError as exc:
                conn.close()
                raise ProtocolError(f"cannot send a request to {url}: {exc}", url=url) from exc
            await conn.buffer_free()
            conn.start(request, protocol)
            try:
                return conn, await conn.head(self._config.stall_timeout)
            except (OSError, ssl.SSLError) as exc:
                conn.close()
                if conn.reused and not conn.answered:
                    continue  # the server closed an idle connection: once more, fresh
                raise TransferError(f"connection to {url} failed: {exc!r}", url=url) from exc
            except StallError:
                conn.close()
                raise StallError(
                    f"no answer from {url} within the stall timeout", url=url
                ) from None
            except ProtocolError as exc:
                conn.close()
                raise ProtocolError(f"{url}: {exc}", url=url) from None
            except BaseException:
                conn.close()
                raise
        raise TransferError(f"connection to {url} failed twice", url=url)

    def request(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[StreamResponse]:
        """``GET url`` following redirects (see the module docstring)."""
        return self._request(url, headers)

    @contextlib.asynccontextmanager
    async def _request(
        self, url: str, headers: Mapping[str, str] | None
    ) -> AsyncIterator[StreamResponse]:
        send = [(k, v) for k, v in (headers or {}).items() if k.lower() != "accept-encoding"]
        send.append(("Accept-Encoding", "identity"))
        parts = urlsplit(url)
        if parts.username is not None and not any(k.lower() == "authorization" for k, _ in send):
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            send.append(("Authorization", "Basic " + base64.b64encode(secret.encode()).decode()))
        current = url
        for hop in range(MAX_REDIRECTS + 1):
            host = _split(current)[0][1]
            jar = self._cookies.get(host)
            extra = [("Cookie", "; ".join(f"{k}={v}" for k, v in jar.items()))] if jar else []
            conn, head = await self._send(current, send + extra)
            response = StreamResponse(conn, head, current, self._config)
            self._keep_cookies(host, response.set_cookies)
            if head.status_code not in REDIRECT_STATUSES:
                break
            location = response.headers.get("Location")
            conn.close()
            if not location:
                raise RedirectError(
                    f"{current} answered {head.status_code} without a Location", url=current
                )
            if hop == MAX_REDIRECTS:
                raise RedirectError(
                    f"{url} redirected more than {MAX_REDIRECTS} times", url=current
                )
            try:
                target = urljoin(current, location.strip())
            except ValueError as exc:
                raise RedirectError(
                    f"{current} redirected to an invalid URL {location[:200]!r}", url=current
                ) from exc
            old, _, _ = _split(current)
            new, _, _ = _split(target)
            if old[0] == "https" and new[0] == "http":
                raise RedirectError(
                    f"{current} redirected from https down to plain http ({target}); refused",
                    url=current,
                )
            if new != old:
                send = [(k, v) for k, v in send if k.lower() not in _SENSITIVE]
            log.debug("redirect %s -> %s", current, target)
            current = target
        try:
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ProtocolError(
                    f"{response.url} sent a {encoding!r}-encoded body although identity was"
                    " asked; the bytes would not match the published SHA-256",
                    url=response.url,
                )
            yield response
        except BaseException:
            conn.close()
            raise
        else:
            self._release(conn)

    def _keep_cookies(self, host: str, values: list[str]) -> None:
        """A minimal cookie jar: ``name=value`` per host, sent back to that host only (never
        to another one, redirects included); ``Max-Age=0`` deletes. Attributes such as Path
        and Expires are not interpreted: a hub mirror uses cookies, if at all, for a session."""
        for value in values:
            pair, _, attributes = value.partition(";")
            name, eq, content = pair.partition("=")
            name = name.strip()
            if not eq or not name:
                continue
            jar = self._cookies.setdefault(host, {})
            if "max-age=0" in attributes.replace(" ", "").lower():
                jar.pop(name, None)
            else:
                jar[name] = content.strip()

    @staticmethod
    def _close_pool(pool: dict[tuple[str, str, int], list[_Connection]]) -> None:
        for conns in pool.values():
            for conn in conns:
                with contextlib.suppress(RuntimeError):  # its loop is already closed
                    conn.close()
        pool.clear()

    @classmethod
    async def _close_at_loop_end(
        cls, pool: dict[tuple[str, str, int], list[_Connection]]
    ) -> AsyncGenerator[None, None]:
        """Parked on the pool's loop: ``asyncio.run`` (and anyio) finalize pending async
        generators before closing the loop, which closes the idle connections there."""
        try:
            yield
        finally:
            cls._close_pool(pool)

    def _drop_pool(self) -> None:
        """Forget the idle connections of another loop, closing them on that loop."""
        pool, loop = self._idle, self._loop
        self._idle, self._guard = {}, None
        if loop is not None and loop.is_running() and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._close_pool, pool)
                return
        self._close_pool(pool)

    async def aclose(self) -> None:
        """Close the idle connections of the running loop (another loop's are dropped)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self._loop:
            self._drop_pool()
            self._loop = None
            return
        guard, self._guard = self._guard, None
        self._close_pool(self._idle)
        self._loop = None
        if guard is not None:
            await guard.aclose()
