"""A tiny read-only static HTTP server that serves a directory as a hub mirror.

The demo command, the tests and the benchmarks serve a generated zoo (see
:mod:`asynchub._demo.zoo`) from 127.0.0.1 with it. It is the standard library only
(``http.server.ThreadingHTTPServer`` on a daemon thread), so it runs wherever asynchub runs and
shares nothing with the client under test.

Choices:

* HTTP/1.1 with keep-alive (one handler thread per connection), ``GET`` and ``HEAD`` only.
* Validators: a strong ``ETag`` made of the file's size and ``mtime_ns``, and
  ``Last-Modified``. ``If-None-Match`` (weak comparison, ``*`` allowed) and, without it,
  ``If-Modified-Since`` answer ``304``.
* Ranges: one ``bytes=a-b`` / ``a-`` / ``-n`` range gives ``206`` with ``Content-Range``; an
  unsatisfiable one gives ``416`` with ``Content-Range: bytes */size``; several ranges give the
  whole file with ``200`` (RFC 9110 lets a server ignore ``Range``); a malformed header is
  ignored. ``If-Range`` with a different ETag or date gives the whole file with ``200``.
* Safety: the URL path is percent-decoded and split; any ``..``, empty-after-decoding
  separator trick, NUL or backslash, or a path that resolves outside ``root`` (symlinks
  included) is a ``404``, as are directories and missing files.
* Speed: without a rate limit, bodies go out with ``socket.sendfile`` (zero-copy where the OS
  has it). ``rate_limit`` (bytes/s) paces each connection in 64 KiB blocks; ``latency``
  (seconds) delays every response. Both exist for demos and benchmarks.
* Quiet: nothing is written to stderr; requests are logged at DEBUG on the ``asynchub``
  logger and a client hanging up mid-body is not an error.
* ``stop()`` stops accepting, closes open connections and joins the serving thread.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import logging
import os
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

__all__ = ["StaticMirror"]

logger = logging.getLogger("asynchub")

_PACE_BLOCK = 64 * 1024
_SOCKET_TIMEOUT = 60.0  # a silent client frees its thread after this many seconds
_TYPES = {
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


def _etag(stat: os.stat_result) -> str:
    return f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'


def _parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """``(first, last)`` for one satisfiable range, ``False`` if unsatisfiable, ``None`` to
    ignore the header (malformed, or several ranges)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text + last_text).isdigit():
        return None
    if not first_text:  # suffix: the last n bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        return False
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "asynchub-static/1"
    sys_version = ""
    timeout = _SOCKET_TIMEOUT
    mirror: StaticMirror  # set on the subclass made by StaticMirror.start()

    def setup(self) -> None:
        super().setup()
        self.mirror._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.mirror._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("static mirror: " + format, *args)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _resolve(self) -> Path | None:
        raw_path = urllib.parse.urlsplit(self.path).path
        decoded = urllib.parse.unquote(raw_path, errors="strict")
        if "\0" in decoded or "\\" in decoded:
            return None
        parts = [part for part in decoded.split("/") if part]
        if any(part in (".", "..") for part in parts):
            return None
        root = self.mirror.root
        try:
            candidate = root.joinpath(*parts).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return None
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate

    def _serve(self, *, body: bool) -> None:
        self.mirror._count()
        if self.mirror.latency > 0:
            time.sleep(self.mirror.latency)
        try:
            path = self._resolve()
        except UnicodeDecodeError:
            path = None
        if path is None:
            self.send_error(404, "Not Found")
            return
        try:
            stream = path.open("rb")
        except OSError:
            self.send_error(404, "Not Found")
            return
        with stream:
            self._send_file(stream, os.fstat(stream.fileno()), path.suffix, body=body)

    def _not_modified(self, etag: str, mtime: float) -> bool:
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
            return "*" in tags or etag in tags
        since = self.headers.get("If-Modified-Since")
        if since:
            try:
                parsed = email.utils.parsedate_to_datetime(since).timestamp()
            except (TypeError, ValueError):
                return False
            return int(mtime) <= parsed
        return False

    def _range_applies(self, etag: str, last_modified: str) -> bool:
        if_range = self.headers.get("If-Range")
        if if_range is None:
            return True
        if_range = if_range.strip()
        if if_range.startswith(('"', "W/")):
            return if_range == etag  # strong comparison; weak tags never match
        return if_range == last_modified

    def _send_file(
        self, stream: BinaryIO, stat: os.stat_result, suffix: str, *, body: bool
    ) -> None:
        size = stat.st_size
        etag = _etag(stat)
        last_modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        common = {"ETag": etag, "Last-Modified": last_modified, "Accept-Ranges": "bytes"}
        if self._not_modified(etag, stat.st_mtime):
            self._start(304, common)
            return
        first, last, status = 0, size - 1, 200
        range_header = self.headers.get("Range")
        if range_header is not None and self._range_applies(etag, last_modified):
            parsed = _parse_range(range_header, size)
            if parsed is False:
                self._start(
                    416, {**common, "Content-Range": f"bytes */{size}", "Content-Length": "0"}
                )
                return
            if isinstance(parsed, tuple):
                first, last, status = parsed[0], parsed[1], 206
        length = max(0, last - first + 1)
        headers = {
            **common,
            "Content-Type": _TYPES.get(suffix, "application/octet-stream"),
            "Content-Length": str(length),
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        self._start(status, headers)
        if body and length:
            try:
                self._send_body(stream, first, length)
            except (ConnectionError, TimeoutError, OSError):
                self.close_connection = True

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_body(self, stream: BinaryIO, offset: int, length: int) -> None:
        rate = self.mirror.rate_limit
        if not rate:
            self.connection.sendfile(stream, offset, length)
            return
        stream.seek(offset)
        started = time.monotonic()
        sent = 0
        while sent < length:
            block = stream.read(min(_PACE_BLOCK, length - sent))
            if not block:
                raise ConnectionError("file shrank while being served")
            self.wfile.write(block)
            sent += len(block)
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)  # pacing, not synchronisation


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 overflows when a prefetch opens many connections at
    # once, and the extra clients then wait a full SYN retransmit (~1 s).
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("static mirror: error serving %s", client_address, exc_info=True)


class StaticMirror:
    """Serve ``root`` read-only over HTTP on ``host:port`` (port 0 picks a free one).

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``url`` is
    ``http://host:port`` once started; ``request_count`` counts requests served (including
    errors and ``HEAD``). ``rate_limit`` caps each connection at that many bytes per second;
    ``latency`` delays each response by that many seconds.
    """

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rate_limit: int | None = None,
        latency: float = 0.0,
    ) -> None:
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError(f"rate_limit must be a positive number of bytes/s, got {rate_limit}")
        if latency < 0:
            raise ValueError(f"latency must be >= 0 seconds, got {latency}")
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"mirror root {self.root} is not a directory; create it first")
        self.host = host
        self.port = port
        self.rate_limit = rate_limit
        self.latency = latency
        self.url = ""
        self._lock = threading.Lock()
        self._requests = 0
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._requests

    def _count(self) -> None:
        with self._lock:
            self._requests += 1

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def start(self) -> None:
        """Bind and start serving on a daemon thread; sets ``url`` and ``port``."""
        if self._server is not None:
            raise RuntimeError("this StaticMirror is already started")
        handler = type("_BoundHandler", (_Handler,), {"mirror": self})
        server = _Server((self.host, self.port), handler)
        self._server = server
        self.port = int(server.server_address[1])
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"static-mirror-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close open connections, join the serving thread. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> StaticMirror:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
