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
* **Splicing** (:mod:`.splicing`): on Linux over plain HTTP, the caller may ask for the rest
  of a sized body to be moved through pipes, never into this process
  (:meth:`StreamResponse.splice`).
* **A body waits for its caller.** Once the head is parsed, a connection reads nothing more
  until the caller asks for the body (:meth:`StreamResponse.iter_pieces`, ``read``) or
  splices it: the bytes wait in the kernel, and only what came in the same read as the head
  (at most :data:`~.connection.HEAD_LIMIT`) is in memory. Reading on meanwhile filled both
  buffers of a connection before the engine could ask for a splice: from a loopback mirror,
  ~470 MiB of a 1 GiB download (about 165 ranges) went through memory instead of pipes, and
  the download used 1.51 CPU-s in the median against 1.43 now (five runs each). The stall
  clock starts when the caller asks.
* **Buffers per connection.** Each connection owns up to :data:`BUFFERS` buffers of
  ``buffer_size`` bytes (1 MiB by default; private anonymous maps, see
  :data:`~.connection.Buffer`). A full buffer (or the end of the body, or a partial
  one older than ``flush_interval``) goes to the caller; when every buffer is with the caller,
  the connection stops reading (``pause_reading``) until one is released: memory stays bounded
  and a slow disk slows the sender through TCP.
* **Spare buffers.** A connection that closes (a range cut short, an error) leaves its buffers
  to the transport's :class:`~.connection.Spare` list (at most :data:`SPARE`), and the next
  connection starts with them instead of fresh memory. A connection back in the keep-alive
  pool keeps its own: it is reused within moments (handing them over at every request
  tripled the fresh buffers of a 512 MiB download in 2 MiB ranges, and its CPU).
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
  http nor from a public host to a local one (:mod:`asynchub._hosts`), dropping credentials
  when the origin changes; the caller reuses the final URL.
* **Credentials** in the URL (``user:pass@``) become a Basic ``Authorization`` header; cookies
  a server sets go back to that host only (a minimal jar); both are dropped when a redirect
  changes the origin.
* **Timeouts.** Connecting is bounded by ``connect_timeout``; while waiting for the head or the
  body, ``stall_timeout`` seconds without a byte raise :class:`StallError`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from urllib.parse import unquote, urljoin, urlsplit

import anyio.to_thread
import h11

from .._config import HubConfig
from .._exceptions import ProtocolError, RedirectError, StallError, TransferError
from .._hosts import refuse_public_to_private
from .base import MAX_REDIRECTS, REDIRECT_STATUSES, parse_content_length, require_identity
from .connection import BUFFERS, HEAD_LIMIT, Connection, Headers, Piece, Spare
from .errors import describe_os_error, host_port, translate_os_error
from .splicing import PipePiece
from .tls import verifying_context

__all__ = ["BUFFERS", "NeedsProxy", "Piece", "StreamResponse", "StreamTransport"]


log = logging.getLogger("asynchub")

USER_AGENT = "asynchub/0.1"
BUFFER_SIZE = 1024 * 1024
#: Spare buffers kept for new connections (8 MiB): enough for the few connections opened at
#: once when ranges are cut short, little beside what the live connections hold.
SPARE = 4 * BUFFERS
MAX_INFORMATIONAL = 16
_SENSITIVE = ("authorization", "cookie", "proxy-authorization")


class NeedsProxy(Exception):
    """A redirect led to a URL that a proxy must carry (see :mod:`.auto`); raised before
    anything was handed to the caller."""


class StreamResponse:
    """One answer: ``status``, ``headers``, the final ``url``; its body as :class:`Piece` s."""

    def __init__(self, conn: Connection, head: h11.Response, url: str, config: HubConfig) -> None:
        self._conn = conn
        self._config = config
        self.status: int = head.status_code
        headers = Headers(list(head.headers))
        self.headers: Mapping[str, str] = headers
        self.set_cookies = headers.set_cookies
        self.url = url
        self.flush_interval = 0.1

    @property
    def lendable(self) -> int:
        return BUFFERS

    @property
    def received(self) -> int:
        return self._conn.received

    @property
    def content_length(self) -> int | None:
        return parse_content_length(self.headers.get("Content-Length"), self.url)

    def splice(self) -> bool:
        """Move the rest of the body through pipes where possible (see :mod:`.splicing`)."""
        return self._conn.start_splicing()

    async def iter_pieces(self) -> AsyncIterator[Piece | PipePiece]:
        """The body as filled buffers; release each one when its bytes are written."""
        conn = self._conn
        stall = self._config.stall_timeout
        while True:
            try:
                piece = await conn.next_piece(stall, self.flush_interval)
            except (OSError, ssl.SSLError) as exc:
                raise TransferError(
                    f"the body from {self.url} was cut short ({describe_os_error(exc)})",
                    url=self.url,
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
                spliced = piece.spliced
                view = piece.view if spliced is None else memoryview(spliced.read())
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
                spliced = piece.spliced
                view = piece.view if spliced is None else memoryview(spliced.read())
                if len(out) + len(view) > limit:
                    raise ProtocolError(
                        f"{self.url} sent more than the {limit} bytes allowed", url=self.url
                    )
                out += view
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

    def __init__(
        self,
        config: HubConfig,
        *,
        buffer_size: int = BUFFER_SIZE,
        needs_proxy: Callable[[str], bool] | None = None,
    ) -> None:
        self._config = config
        self._needs_proxy = needs_proxy
        self.buffer_size = buffer_size
        self.spare = Spare(buffer_size, SPARE)
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard: AsyncGenerator[None, None] | None = None
        self._cookies: dict[str, dict[str, str]] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = verifying_context(self._config.ca_bundle)
        return self._ssl

    async def _connect(self, origin: tuple[str, str, int], url: str) -> Connection:
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
        conn = Connection(origin, self.buffer_size, self.spare)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn, host, port, ssl=context, server_hostname=host if context else None
                ),
                self._config.connect_timeout,
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, UnicodeError) as exc:
            # the same words as every transport (refused, DNS, TLS, timeout: _transport/errors)
            timeout = TimeoutError() if isinstance(exc, asyncio.TimeoutError) else exc
            raise translate_os_error(
                timeout, url=url, connect_timeout=self._config.connect_timeout
            ) from exc
        return conn

    def _release(self, conn: Connection) -> None:
        if conn.reusable and conn.body_done and not conn.closed:
            conn._mode = "idle"
            self._idle.setdefault(conn.origin, []).append(conn)
        else:
            conn.close()

    async def _send(
        self, url: str, headers: list[tuple[str, str]]
    ) -> tuple[Connection, h11.Response]:
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
                words = describe_os_error(exc)
                raise TransferError(
                    f"the connection to {host_port(url)[1]} failed ({words}) ({url})", url=url
                ) from exc
            except StallError:
                conn.close()
                raise StallError(
                    f"{host_port(url)[1]} sent no bytes for {self._config.stall_timeout:g} s: "
                    f"the server or the network is stalled ({url})",
                    url=url,
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
            await refuse_public_to_private(self._config.private_host, current, target)
            if new != old:
                send = [(k, v) for k, v in send if k.lower() not in _SENSITIVE]
            if self._needs_proxy is not None and self._needs_proxy(target):
                raise NeedsProxy(target)
            log.debug("redirect %s -> %s", current, target)
            current = target
        try:
            require_identity(response.headers, response.url)
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
    def _close_pool(pool: dict[tuple[str, str, int], list[Connection]]) -> None:
        for conns in pool.values():
            for conn in conns:
                with contextlib.suppress(RuntimeError):  # its loop is already closed
                    conn.close()
        pool.clear()

    @classmethod
    async def _close_at_loop_end(
        cls, pool: dict[tuple[str, str, int], list[Connection]]
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
