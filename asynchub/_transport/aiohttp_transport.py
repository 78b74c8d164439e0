"""HTTP transport: the one module of asynchub that uses aiohttp.

Every aiohttp, ``OSError`` and timeout exception is translated here into the asynchub error
tree (:class:`TransferError` and its subclasses), so the rest of the package never sees a
lower-layer exception: aiohttp's wrappers are unwrapped to the standard exception inside
(``ClientConnectorError.os_error``, the ``socket.gaierror`` behind a DNS error, the certificate
error) and :func:`._transport.errors.translate_os_error` words it, as for any transport.

Choices:

* **Sessions per event loop.** A :class:`Transport` creates its ``aiohttp.ClientSession``
  lazily, on the loop that first uses it. Used later from another loop (a second
  ``asyncio.run``, a background-thread loop), it silently drops the old session and creates a
  new one; a session is never used on a loop it does not belong to. The old session is closed
  on its own loop: an async generator parked on that loop closes it when ``asyncio.run`` (or
  ``anyio.run``) finalizes the loop's async generators, so no socket leaks.
* **Bytes as served.** ``Accept-Encoding: identity`` and ``auto_decompress=False``: the bytes we
  hash are the bytes the server stores. A ``Content-Encoding`` other than ``identity`` is a
  :class:`ProtocolError` (the SHA-256 of a compressed body would never match).
* **Redirects by hand.** At most :data:`MAX_REDIRECTS` hops, only to ``http``/``https``, never
  from ``https`` down to ``http``, never from a public host to a local one (loopback,
  link-local, private: :mod:`asynchub._hosts`); ``Authorization`` and ``Cookie`` are dropped
  when the origin (scheme, host, port) changes. A refused redirect raises
  :class:`RedirectError`.
* **Proxies.** Each request (and each redirect hop) asks :func:`.proxy.proxy_for` which proxy
  its URL goes through; aiohttp sends ``http://`` URLs to the proxy in absolute form and opens
  a ``CONNECT`` tunnel for ``https://`` ones, and takes the credentials of the proxy URL as
  ``Proxy-Authorization``. The session keeps ``trust_env=False``: the environment is read by
  ``HubConfig.from_env`` only. A proxy that cannot be reached, or that refuses (``407``,
  a ``CONNECT`` answered with an error), raises :class:`ProxyError` naming the proxy with its
  password redacted.
* **Timeouts.** ``sock_connect = config.connect_timeout`` bounds each TCP (and TLS) connect,
  ``sock_read = config.stall_timeout`` bounds the wait for any byte (headers or body). There is
  no total timeout (it would kill a legitimate multi-GB download) and no pool-wait timeout:
  waiting for a free connection is bounded by the caller's own limiter, not by a clock.
* **Connections.** One ``TCPConnector(limit=max_connections,
  limit_per_host=max_connections_per_host)`` per session. TLS is always verified; a
  ``config.ca_bundle`` is *added* to the system's trust store. Without a ``ca_bundle`` the
  connector uses aiohttp's own verified default context (system trust store, built once when
  aiohttp is imported) instead of loading the trust store a second time (~15-20 ms).
* **Imported on first request.** aiohttp, yarl and multidict are imported when the first
  session is built, not when asynchub is imported: together they cost ~100 ms of start-up,
  which a warm ``load`` (served from the cache, no request) or a CLI command that only reads
  the cache never needs. That import (and loading a ``ca_bundle``) is blocking work, so it runs
  in a worker thread: the event loop keeps serving other tasks meanwhile.
* **Read buffer.** ``read_bufsize`` is 1 MiB and :meth:`Response.iter_chunks` raises the
  stream's watermarks to the caller's chunk size, so a fast connection is read in large
  pieces (few Python-level iterations per byte) while memory per connection stays a few MiB.
* **Lengths.** A body shorter than its ``Content-Length`` raises :class:`TransferError`
  (retryable). A close-delimited body (no length, not chunked) cannot be told apart from a
  truncated one here; callers that accept it must check the size they expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, NoReturn

import anyio.to_thread

from .._config import HubConfig
from .._exceptions import (
    ProtocolError,
    ProxyError,
    RedirectError,
    StallError,
    TransferError,
)
from .._hosts import refuse_public_to_private
from .base import MAX_REDIRECTS, REDIRECT_STATUSES, parse_content_length, require_identity
from .errors import PROXY_HINT, describe_os_error, host_port, translate_os_error
from .proxy import proxy_for, redact_url
from .tls import verifying_context

__all__ = ["AiohttpResponse", "AiohttpTransport"]

log = logging.getLogger("asynchub")

READ_BUFSIZE = 1024 * 1024
USER_AGENT = "asynchub/0.1"
_SENSITIVE = ("Authorization", "Cookie", "Proxy-Authorization")

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


def _translate(
    exc: BaseException, url: str, *, proxy: str | None = None, config: HubConfig | None = None
) -> NoReturn:
    """Raise the asynchub error for a lower-layer exception met while talking to ``url``
    (through ``proxy``, when one was used)."""
    import socket

    import aiohttp

    connect_timeout = config.connect_timeout if config is not None else None
    stall = f"{config.stall_timeout:g} s" if config is not None else "the stall timeout"
    where = host_port(url)[1]
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        raise ProxyError(
            f"the proxy {redact_url(proxy or '?')} refused to reach {where} "
            f"(HTTP {exc.status} {exc.message}); {PROXY_HINT}",
            url=url,
            status=exc.status,
        ) from exc
    if isinstance(exc, UnicodeError):  # the host name failed IDNA encoding
        raise translate_os_error(exc, url=url) from exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        raise translate_os_error(exc.certificate_error, url=url) from exc
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        chain = (exc.os_error, exc.os_error.__cause__)
        found = [e for e in chain if isinstance(e, socket.gaierror)]
        lookup = found[0] if found else socket.gaierror(socket.EAI_NONAME, "lookup failed")
        raise translate_os_error(lookup, url=url, proxy=proxy) from exc
    if isinstance(exc, aiohttp.ClientConnectorError):
        raise translate_os_error(exc.os_error, url=url, proxy=proxy) from exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        raise translate_os_error(
            TimeoutError(), url=url, proxy=proxy, connect_timeout=connect_timeout
        ) from exc
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError, TimeoutError)):
        raise StallError(
            f"{where} sent no bytes for {stall}: the server or the network is stalled ({url})",
            url=url,
        ) from exc
    if isinstance(exc, aiohttp.ClientPayloadError):
        raise TransferError(f"the body from {url} was cut short", url=url) from exc
    if isinstance(exc, aiohttp.InvalidURL):
        raise RedirectError(f"invalid URL {url}", url=url) from exc
    if isinstance(exc, aiohttp.ClientResponseError):
        raise ProtocolError(f"malformed HTTP response from {url} ({exc.message})", url=url) from exc
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        raise TransferError(f"{where} closed the connection early ({url})", url=url) from exc
    if isinstance(exc, OSError):
        words = describe_os_error(exc)
        raise TransferError(f"the connection to {where} failed ({words}) ({url})", url=url) from exc
    if isinstance(exc, aiohttp.ClientError):
        raise TransferError(f"the connection to {where} failed ({url})", url=url) from exc
    raise exc


def _translated() -> tuple[type[BaseException], ...]:
    """The lower-layer exceptions :func:`_translate` handles (aiohttp is imported by then: a
    response or a session exists)."""
    import aiohttp

    return (aiohttp.ClientError, OSError, asyncio.TimeoutError, TimeoutError, UnicodeError)


class AiohttpResponse:
    """A response with translated errors: ``status``, case-insensitive ``headers`` and the final
    ``url`` after redirects."""

    def __init__(self, raw: aiohttp.ClientResponse, config: HubConfig | None = None) -> None:
        self._raw = raw
        self._config = config
        self.status: int = raw.status
        self.headers: Mapping[str, str] = raw.headers
        self.url: str = str(raw.url)

    @property
    def content_length(self) -> int | None:
        """``Content-Length`` as an int (``None`` when absent); :class:`ProtocolError` if
        malformed."""
        return parse_content_length(self.headers.get("Content-Length"), self.url)

    async def iter_chunks(self, size: int) -> AsyncIterator[bytes]:
        """The body in pieces of at most ``size`` bytes, as they arrive."""
        content = self._raw.content
        content.set_read_chunk_size(size)
        try:
            while True:
                data = await content.read(size)
                if not data:
                    if content.at_eof():
                        return
                    continue
                if len(data) <= size:
                    yield data
                else:
                    for start in range(0, len(data), size):
                        yield data[start : start + size]
        except _translated() as exc:
            _translate(exc, self.url, config=self._config)

    async def read(self, limit: int) -> bytes:
        """The whole body; :class:`ProtocolError` if it is longer than ``limit`` bytes."""
        declared = self.content_length
        if declared is not None and declared > limit:
            raise ProtocolError(
                f"{self.url} announced {declared} bytes, more than the {limit} allowed",
                url=self.url,
            )
        parts: list[bytes] = []
        total = 0
        async for data in self.iter_chunks(min(limit + 1, READ_BUFSIZE)):
            total += len(data)
            if total > limit:
                raise ProtocolError(
                    f"{self.url} sent more than the {limit} bytes allowed", url=self.url
                )
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Drop the connection (used when the body is abandoned)."""
        self._raw.close()


class AiohttpTransport:
    """GET requests over a per-loop ``aiohttp.ClientSession`` (see the module docstring)."""

    def __init__(self, config: HubConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard: AsyncGenerator[None, None] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._prepared = False

    def _prepare(self) -> None:
        """Blocking set-up of the first session (run in a worker thread): import aiohttp (which
        loads the system trust store) and build the TLS context."""
        import aiohttp  # noqa: F401
        import multidict  # noqa: F401
        import yarl  # noqa: F401

        self._ssl_context()
        self._prepared = True

    def _ssl_context(self) -> ssl.SSLContext | bool:
        """The connector's TLS setting: ``True`` (aiohttp's verified default context) unless a
        ``ca_bundle`` is configured, then a context trusting the system store plus the bundle."""
        if self._config.ca_bundle is None:
            return True
        if self._ssl is None:
            self._ssl = verifying_context(self._config.ca_bundle)
        return self._ssl

    def _drop_session(self) -> None:
        """Forget a session that belongs to another loop, closing its sockets on that loop."""
        session, loop = self._session, self._loop
        self._session = self._loop = None
        self._guard = None
        if session is None or loop is None or session.closed:
            return
        connector = session.connector
        session.detach()
        if connector is None:
            return
        if loop.is_running() and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(connector._close)
        else:
            connector._close()

    @staticmethod
    async def _close_at_loop_end(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
        """Parked on the session's loop; ``asyncio.run`` (and anyio) close pending async
        generators before closing the loop, which closes the session there, cleanly."""
        try:
            yield
        finally:
            if not session.closed:
                await session.close()

    async def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is not None and self._loop is loop and not self._session.closed:
            return self._session
        if not self._prepared:
            await anyio.to_thread.run_sync(self._prepare)
            if self._session is not None and self._loop is loop and not self._session.closed:
                return self._session  # built by a concurrent first request meanwhile
        self._drop_session()
        import aiohttp

        config = self._config
        connector = aiohttp.TCPConnector(
            limit=config.max_connections,
            limit_per_host=config.max_connections_per_host,
            ssl=self._ssl_context(),
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None,
            sock_connect=config.connect_timeout,
            sock_read=config.stall_timeout,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            read_bufsize=READ_BUFSIZE,
            trust_env=False,
            headers={"User-Agent": USER_AGENT},
        )
        guard = self._close_at_loop_end(session)
        await guard.__anext__()
        self._session, self._loop, self._guard = session, loop, guard
        return session

    def request(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[AiohttpResponse]:
        """``GET url`` following redirects; the response's body is read by the caller.

        HTTP error statuses are returned, not raised (the caller owns the retry policy);
        a refused redirect raises :class:`RedirectError`, a compressed body
        :class:`ProtocolError`, a network failure :class:`TransferError`.
        """
        return self._request(url, headers)

    @contextlib.asynccontextmanager
    async def _request(
        self, url: str, headers: Mapping[str, str] | None
    ) -> AsyncIterator[AiohttpResponse]:
        raw = await self._open(url, headers)
        response = AiohttpResponse(raw, self._config)
        try:
            require_identity(response.headers, response.url)
            yield response
        except BaseException:
            raw.close()
            raise
        else:
            raw.release()

    async def _open(self, url: str, headers: Mapping[str, str] | None) -> aiohttp.ClientResponse:
        session = await self._get_session()
        from multidict import CIMultiDict
        from yarl import URL

        send: CIMultiDict[str] = CIMultiDict(headers or {})
        send["Accept-Encoding"] = "identity"
        try:
            current = URL(url, encoded=True)
            current.host, current.port  # noqa: B018 - yarl parses the authority lazily
        except (ValueError, TypeError) as exc:
            raise RedirectError(f"invalid URL {url!r}: {exc}", url=url) from exc
        if current.scheme not in ("http", "https") or not current.host:
            raise RedirectError(f"{url!r} is not an http(s) URL", url=url)
        for hop in range(MAX_REDIRECTS + 1):
            proxy = proxy_for(str(current), self._config)
            try:
                raw = await session.get(current, headers=send, allow_redirects=False, proxy=proxy)
            except _translated() as exc:
                _translate(exc, str(current), proxy=proxy, config=self._config)
            if proxy is not None and raw.status == 407:
                raw.close()
                raise ProxyError(
                    f"the proxy {redact_url(proxy)} refused to carry the request for "
                    f"{current} (HTTP 407 Proxy Authentication Required); check the user "
                    f"and password in the proxy URL; {PROXY_HINT}",
                    url=str(current),
                    status=407,
                )
            if raw.status not in REDIRECT_STATUSES:
                return raw
            location = raw.headers.get("Location")
            raw.close()
            if not location:
                raise RedirectError(
                    f"{current} answered {raw.status} without a Location", url=str(current)
                )
            if hop == MAX_REDIRECTS:
                raise RedirectError(
                    f"{url} redirected more than {MAX_REDIRECTS} times", url=str(current)
                )
            try:
                target = current.join(URL(location))
                target.host, target.port  # noqa: B018 - yarl parses the authority lazily
            except (ValueError, TypeError) as exc:
                raise RedirectError(
                    f"{current} redirected to an invalid URL {location!r}", url=str(current)
                ) from exc
            if target.scheme not in ("http", "https") or not target.host:
                raise RedirectError(
                    f"{current} redirected to {location!r}, which is not an http(s) URL",
                    url=str(current),
                )
            if current.scheme == "https" and target.scheme == "http":
                raise RedirectError(
                    f"{current} redirected from https down to plain http ({target}); refused",
                    url=str(current),
                )
            await refuse_public_to_private(self._config.private_host, str(current), str(target))
            if _origin(target) != _origin(current):
                for name in _SENSITIVE:
                    send.popall(name, None)
            log.debug("redirect %s -> %s", current, target)
            current = target
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close the session of the running loop (a session of another loop is dropped)."""
        session, guard = self._session, self._guard
        if session is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._loop is loop:
            self._session = self._loop = self._guard = None
            await session.close()
            if guard is not None:
                await guard.aclose()
        else:
            self._drop_session()
