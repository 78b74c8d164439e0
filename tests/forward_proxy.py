"""A small HTTP forward proxy on 127.0.0.1 for tests: ``CONNECT`` tunnels and absolute-form
requests (``GET http://host:port/path``), recording what went through it.

``ForwardProxy()`` listens on a free loopback port (``url``); with ``ssl_context`` it speaks TLS
to its clients (an ``https://`` proxy). Behaviour and choices:

- ``CONNECT host:port`` answers ``200 Connection established`` and then relays bytes both ways
  untouched (the client speaks TLS or plain HTTP through the tunnel; the proxy never sees it).
- An absolute-form request is re-sent to its origin in origin-form with ``Connection: close``
  (one request per client connection: the proxy then relays the origin's answer until the
  origin closes, and closes the client side too). ``Proxy-Authorization`` and
  ``Proxy-Connection`` are not forwarded.
- ``credentials=("user", "secret")`` makes the proxy demand ``Proxy-Authorization: Basic``;
  a request without it (or with wrong ones) gets ``407`` with ``Proxy-Authenticate``.
- Only loopback destinations (127.0.0.0/8) are served; anything else gets ``502`` (network
  tests stay on the machine, and a name that does not resolve is a clean 502).
- ``records`` lists one :class:`ProxyRecord` per request line the proxy read, in order;
  ``stop()`` closes the listener and every connection still open.

It is written on plain ``asyncio`` streams (not aiohttp) so that what the client sends is
seen exactly as sent: the request target, the headers, the CONNECT authority.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import ssl
from dataclasses import dataclass
from types import TracebackType

__all__ = ["ForwardProxy", "ProxyRecord"]

_MAX_HEAD = 64 * 1024
_HOP_BY_HOP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}


@dataclass(frozen=True)
class ProxyRecord:
    """One request the proxy read: ``method`` (``CONNECT``, ``GET``, ...), ``target`` (the
    authority for CONNECT, the absolute URL otherwise), whether valid credentials came with
    it, and the status the proxy answered itself (``None`` when relayed)."""

    method: str
    target: str
    authorized: bool
    status: int | None


class ForwardProxy:
    """See the module docstring."""

    def __init__(
        self,
        *,
        credentials: tuple[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._credentials = credentials
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.records: list[ProxyRecord] = []
        self.port = 0

    @property
    def scheme(self) -> str:
        return "https" if self._ssl is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url_with_credentials(self, user: str, password: str) -> str:
        return f"{self.scheme}://{user}:{password}@127.0.0.1:{self.port}"

    def targets(self, method: str | None = None) -> list[str]:
        return [r.target for r in self.records if method is None or r.method == method]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ForwardProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- connection handling -------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await _read_head(reader)
            if head is None:
                return
            request_line, headers = head
            method, target, _version = request_line.split(" ", 2)
            authorized = self._authorized(headers)
            if self._credentials is not None and not authorized:
                self.records.append(ProxyRecord(method, target, False, 407))
                await _answer(
                    writer,
                    407,
                    "Proxy Authentication Required",
                    {"Proxy-Authenticate": 'Basic realm="test"'},
                )
                continue
            if method == "CONNECT":
                await self._tunnel(target, reader, writer, authorized)
                return
            await self._forward(method, target, headers, reader, writer, authorized)
            return

    def _authorized(self, headers: list[tuple[str, str]]) -> bool:
        if self._credentials is None:
            return False
        user, password = self._credentials
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return any(k.lower() == "proxy-authorization" and v.strip() == expected for k, v in headers)

    async def _open(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            return None  # names are not resolved: loopback addresses only
        try:
            return await asyncio.open_connection(host, port)
        except OSError:
            return None

    async def _tunnel(
        self,
        authority: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        authorized: bool,
    ) -> None:
        host, _, port = authority.rpartition(":")
        upstream = await self._open(host.strip("[]"), int(port or 443))
        if upstream is None:
            self.records.append(ProxyRecord("CONNECT", authority, authorized, 502))
            await _answer(writer, 502, "Bad Gateway", {})
            return
        self.records.append(ProxyRecord("CONNECT", authority, authorized, None))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await _relay(reader, writer, *upstream)

    async def _forward(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        authorized: bool,
    ) -> None:
        if not target.startswith("http://"):
            self.records.append(ProxyRecord(method, target, authorized, 400))
            await _answer(writer, 400, "Bad Request", {})
            return
        rest = target[len("http://") :]
        authority, slash, path = rest.partition("/")
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "80")
        upstream = await self._open(host.strip("[]"), int(port))
        if upstream is None:
            self.records.append(ProxyRecord(method, target, authorized, 502))
            await _answer(writer, 502, "Bad Gateway", {})
            return
        self.records.append(ProxyRecord(method, target, authorized, None))
        up_reader, up_writer = upstream
        lines = [f"{method} /{path if slash else ''} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_BY_HOP]
        lines.append("Connection: close")
        up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await up_writer.drain()
        await _relay(reader, writer, up_reader, up_writer)


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    if len(raw) > _MAX_HEAD:
        return None
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return lines[0], headers


async def _answer(
    writer: asyncio.StreamWriter, status: int, reason: str, headers: dict[str, str]
) -> None:
    body = f"{status} {reason}\n".encode()
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await src.read(256 * 1024):
            dst.write(data)
            await dst.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if dst.can_write_eof():
            dst.write_eof()


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until the origin side is done, then close both."""
    upward = asyncio.ensure_future(_pipe(reader, up_writer))
    try:
        await _pipe(up_reader, writer)
    finally:
        upward.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upward
        up_writer.transport.abort()
