"""A local HTTP(S) mirror with fault switches, used by every network test of asynchub.

``MirrorServer(root)`` serves the files under ``root`` (URL path == path relative to root) from
an ``aiohttp.web`` low-level server on 127.0.0.1, on one port shared by every host in ``hosts``
(so ``127.0.0.2`` at the same port acts as "another host"). Behaviour and choices:

- GET and HEAD only (405 otherwise). Content is read from disk on each request, in 256 KiB
  blocks in a worker thread, so a 1 GB file is never held in memory.
- Strong ETag and Last-Modified (rules in ``tests/mirror_http.py``); single ``Range`` forms
  ``a-b``, ``a-``, ``-n`` give 206 with an exact Content-Range; unsatisfiable gives 416 with
  ``Content-Range: bytes */N``; several ranges give 200 with the full body; ``If-Range``,
  ``If-None-Match`` (304) and ``If-Match`` (412) are honoured.
- ``latency`` seconds are waited before every response; ``rate_limit`` paces every response body
  (bytes/s) with ``asyncio.sleep`` inside the server, which simulates a slow link.
- Faults (``add_fault``) are checked in the order they were added; the first one that matches a
  request is applied to it, and each applies to ``times`` requests (None = forever). The request
  log (``requests``) says which fault kind was applied to each request.
- The handler is cancelled when the client disconnects; ``stop()`` aborts every connection still
  being answered, so a stalled or dripping answer never holds the server up.
- ``start_in_thread``/``running()`` run the server on its own event loop in a daemon thread, for
  sync tests and subprocess clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import secrets
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.http import StreamWriter

from tests.mirror_http import (
    BLOCK,
    MULTIPART_BOUNDARY,
    REASONS,
    RangeSpec,
    Segment,
    bind_same_port,
    can_bind,
    compute_etag_base,
    content_range,
    if_match_fails,
    if_none_match_hits,
    if_range_allows,
    iter_segments,
    log_range,
    make_validators,
    multipart_layout,
    parse_range_header,
    read_all,
    resolve_ranges,
    tls_contexts,
)
from tests.mirror_model import FAULT_KINDS, RANGE_ONLY_KINDS, Fault, Request, glob_match

__all__ = ["FAULT_KINDS", "Fault", "MirrorServer", "Request", "can_bind", "tls_contexts"]

_SIGNED_PREFIX = "/signed/"


def _title(name: str) -> str:
    return "-".join(p.capitalize() for p in name.split("-"))


@dataclass
class _Plan:
    status: int
    headers: dict[str, str]
    segments: list[Segment] = field(default_factory=list)

    @property
    def length(self) -> int:
        return sum(len(s) if isinstance(s, bytes) else s[1] for s in self.segments)


class MirrorServer:
    """Serve ``root`` over HTTP(S) on 127.0.0.1 (and more loopback hosts) with fault switches."""

    def __init__(
        self,
        root: Path,
        *,
        hosts: Sequence[str] = ("127.0.0.1",),
        latency: float = 0.0,
        rate_limit: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not hosts:
            raise ValueError("MirrorServer needs at least one host to listen on")
        self.root = Path(root)
        self._root_resolved = self.root.resolve()
        self.hosts = tuple(hosts)
        self.latency = latency
        self.rate_limit = rate_limit
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context is not None else "http"
        self.port = 0
        self.requests: list[Request] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._generation: dict[str, int] = {}
        self._etag_cache: dict[tuple[int, int, int, int], str] = {}
        self._signed_src: dict[str, tuple[str, int]] = {}
        self._tokens: dict[str, list[Any]] = {}  # token -> [rel, remaining]
        self._waiters: list[tuple[int, str, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._runner: web.ServerRunner | None = None
        self._active: set[asyncio.Transport] = set()
        #: Requests being answered right now, and the most at any moment (one per connection).
        self.in_flight = 0
        self.peak_in_flight = 0
        self._stopping = asyncio.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---------------------------------------------------------------- public API
    @property
    def url(self) -> str:
        return self.url_for(self.hosts[0])

    def url_for(self, host: str) -> str:
        return f"{self.scheme}://{host}:{self.port}"

    def add_fault(self, fault: Fault) -> Fault:
        if fault.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r}; known: {sorted(FAULT_KINDS)}")
        if fault.kind == "redirect" and not fault.location:
            raise ValueError("a 'redirect' fault needs location=")
        if fault.kind == "drip" and not fault.rate:
            raise ValueError("a 'drip' fault needs rate= (bytes/s, > 0)")
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def requests_for(self, path_glob: str = "*") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if glob_match(r.path, path_glob)]

    def served_bytes(self, path_glob: str = "*") -> int:
        """Body bytes written to connections for request paths matching ``path_glob``."""
        return sum(r.body_bytes for r in self.requests_for(path_glob))

    async def wait_for_requests(
        self, count: int, path_glob: str = "*", *, timeout: float = 10.0
    ) -> list[Request]:
        """Wait (event driven, any thread's loop) until ``count`` matching requests arrived."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiter = (count, path_glob, loop, fut)
        with self._lock:
            self._waiters.append(waiter)
        self._notify()
        try:
            async with asyncio.timeout(timeout):
                await fut
        finally:
            with self._lock:
                self._waiters.remove(waiter)
        return self.requests_for(path_glob)

    def set_file(self, rel: str, data: bytes) -> None:
        """Atomically replace (or create) ``root/rel``; its ETag and Last-Modified change."""
        rel = rel.lstrip("/")
        target = (self.root / rel).resolve()
        if not target.is_relative_to(self._root_resolved):
            raise ValueError(f"{rel!r} is outside the mirror root")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        self._bump(rel)

    def add_signed_redirect(self, src: str, target_host: str, ttl_requests: int) -> None:
        """GET ``src`` -> 302 to ``<scheme>://<target_host>:PORT/signed/<token>/<src path>``.

        The signed URL serves the file for ``ttl_requests`` requests, then answers 403; every
        request to ``src`` mints a new token.
        """
        with self._lock:
            self._signed_src[src.lstrip("/")] = (target_host, ttl_requests)

    async def start(self) -> None:
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        socks, self.port = bind_same_port(self.hosts)
        for sock in socks:
            site = web.SockSite(self._runner, sock, ssl_context=self.ssl_context)
            await site.start()

    async def stop(self) -> None:
        self._stopping.set()
        for transport in list(self._active):
            transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MirrorServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the starting thread
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="mirror-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("mirror server did not start within 30 s")
        if errors:
            raise errors[0]

    def stop_thread(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop = self._thread = None

    @contextlib.contextmanager
    def running(self) -> Iterator[MirrorServer]:
        self.start_in_thread()
        try:
            yield self
        finally:
            self.stop_thread()

    # ---------------------------------------------------------------- internals
    def _notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for count, glob, loop, fut in waiters:
            if len(self.requests_for(glob)) >= count:
                loop.call_soon_threadsafe(_resolve, fut)

    def _bump(self, rel: str) -> None:
        with self._lock:
            self._generation[rel] = self._generation.get(rel, 0) + 1

    def _locate(self, rel: str) -> Path | None:
        if not rel or "\x00" in rel:
            return None
        try:
            candidate = (self.root / rel).resolve()
        except (OSError, RuntimeError):
            return None
        if not candidate.is_relative_to(self._root_resolved) or not candidate.is_file():
            return None
        return candidate

    def _take_fault(
        self, path: str, specs: list[RangeSpec] | None, size: int | None
    ) -> Fault | None:
        start: int | None = None
        if specs:
            first, last = specs[0]
            if first is not None:
                start = first
            elif size is not None:
                start = max(0, size - (last or 0))
        with self._lock:
            for f in self._faults:
                if f.exhausted or (f.path is not None and not glob_match(path, f.path)):
                    continue
                if (f.only_ranged or f.kind in RANGE_ONLY_KINDS) and specs is None:
                    continue
                if f.only_start_above is not None and (
                    start is None or start <= f.only_start_above
                ):
                    continue
                f.hits += 1
                return f
        return None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        headers: dict[str, str] = {}
        for k, v in request.headers.items():
            key = _title(k)
            headers[key] = f"{headers[key]}, {v}" if key in headers else v
        specs = parse_range_header(request.headers.get("Range"))
        rec = Request(request.method, request.path, headers, log_range(specs),
                      sockname[0] if sockname else "", request.query_string)  # fmt: skip
        if transport is not None:
            self._active.add(transport)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._respond(request, rec, specs)
        except ConnectionError:
            return web.Response(status=500)  # the client is gone; nothing reaches it
        finally:
            self.in_flight -= 1
            if transport is not None:
                self._active.discard(transport)

    async def _respond(
        self, request: web.BaseRequest, rec: Request, specs: list[RangeSpec] | None
    ) -> web.StreamResponse:
        path = request.path
        token: str | None = None
        rel = path.lstrip("/")
        if path.startswith(_SIGNED_PREFIX):
            token, _, rel = path[len(_SIGNED_PREFIX) :].partition("/")
        located = self._locate(rel)
        size = located.stat().st_size if located is not None else None
        fault = self._take_fault(path, specs, size)
        kind = fault.kind if fault is not None else None
        rec.fault = kind
        with self._lock:
            self.requests.append(rec)
        self._notify()
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault is not None and kind in ("status", "expire"):
            code = fault.status or (403 if kind == "expire" else 503)
            hdrs = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            if code == 416 and size is not None:
                hdrs["Content-Range"] = f"bytes */{size}"
            return await self._send_simple(request, rec, code, f"{kind} fault\n", hdrs)
        if fault is not None and kind == "redirect":
            return await self._send_simple(
                request, rec, 302, "", {"Location": fault.location or ""}
            )
        if fault is not None and kind == "change_etag":
            if fault.data is not None:
                self.set_file(rel, fault.data)
                located = self._locate(rel)
            else:
                self._bump(rel)
        if request.method not in ("GET", "HEAD"):
            return await self._send_simple(request, rec, 405, "GET and HEAD only\n",
                                           {"Allow": "GET, HEAD"})  # fmt: skip
        redirect = self._signed_redirect(rel) if token is None else None
        if redirect is not None:
            return await self._send_simple(request, rec, 302, "", {"Location": redirect})
        if token is not None and not self._use_token(token, rel):
            return await self._send_simple(request, rec, 403, "signed URL expired\n", {})
        if located is None:
            return await self._send_simple(request, rec, 404, "not found\n", {})
        fd = os.open(located, os.O_RDONLY)
        try:
            plan = await self._plan(request, rel, fd, specs, fault)
            return await self._send(request, rec, plan, fd, fault)
        finally:
            os.close(fd)

    def _signed_redirect(self, rel: str) -> str | None:
        with self._lock:
            entry = self._signed_src.get(rel)
            if entry is None:
                return None
            host, ttl = entry
            token = secrets.token_hex(8)
            self._tokens[token] = [rel, ttl]
        return f"{self.url_for(host)}{_SIGNED_PREFIX}{token}/{rel}"

    def _use_token(self, token: str, rel: str) -> bool:
        with self._lock:
            state = self._tokens.get(token)
            if state is None or state[0] != rel or state[1] <= 0:
                return False
            state[1] -= 1
            return True

    async def _plan(
        self,
        request: web.BaseRequest,
        rel: str,
        fd: int,
        specs: list[RangeSpec] | None,
        fault: Fault | None,
    ) -> _Plan:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        base = self._etag_cache.get(key)
        if base is None:
            base = await asyncio.to_thread(compute_etag_base, fd, st)
            self._etag_cache[key] = base
        with self._lock:
            gen = self._generation.get(rel, 0)
        v = make_validators(base, gen, st.st_mtime)
        size = st.st_size
        hdrs = {"ETag": v.etag, "Last-Modified": v.last_modified, "Accept-Ranges": "bytes"}
        if if_match_fails(request.headers.get("If-Match"), v.etag):
            return _Plan(412, hdrs)
        if if_none_match_hits(request.headers.get("If-None-Match"), v.etag):
            return _Plan(304, hdrs)
        hdrs["Content-Type"] = "application/octet-stream"
        kind = fault.kind if fault is not None else None
        after = fault.after_bytes if fault is not None else 0
        ranges: list[tuple[int, int]] | None = None
        honour = kind != "ignore_range" and if_range_allows(request.headers.get("If-Range"), v)
        if specs is not None and honour:
            ranges = resolve_ranges(specs, size)
            if not ranges:
                return _Plan(416, {**hdrs, "Content-Range": f"bytes */{size}"})
            if len(specs) > 1 and kind != "multipart":
                ranges = None
        if ranges is None:
            plan = _Plan(200, hdrs, [(0, size)])
        elif kind == "multipart":
            hdrs["Content-Type"] = f"multipart/byteranges; boundary={MULTIPART_BOUNDARY}"
            plan = _Plan(206, hdrs, multipart_layout(ranges, size, "application/octet-stream"))
        else:
            start, length = ranges[0]
            hdrs["Content-Range"] = content_range(start, length, size)
            if kind == "wrong_range":
                shifted = start + 1 if start + length < size else start - 1
                hdrs["Content-Range"] = content_range(shifted, length, size)
            elif kind == "wrong_total":
                hdrs["Content-Range"] = content_range(start, length, size + 1)
            elif kind == "bad_range_syntax":
                hdrs["Content-Range"] = "bytes abc"
            plan = _Plan(206, hdrs, [(start, length)])
        if kind == "short" and plan.segments:
            first = plan.segments[0]
            if isinstance(first, tuple):
                plan.segments = [(first[0], min(after, first[1]))]
        if kind == "gzip" and plan.segments:
            raw = await asyncio.to_thread(read_all, fd, plan.segments)
            plan.segments = [await asyncio.to_thread(gzip.compress, raw)]
            plan.headers["Content-Encoding"] = "gzip"
        return plan

    async def _send_simple(
        self, request: web.BaseRequest, rec: Request, status: int, text: str, hdrs: dict[str, str]
    ) -> web.StreamResponse:
        body = text.encode()
        resp = web.StreamResponse(status=status, headers={"Content-Type": "text/plain", **hdrs})
        resp.content_length = len(body)
        rec.status = status
        await resp.prepare(request)
        if body and request.method != "HEAD":
            await resp.write(body)
            rec.body_bytes += len(body)
        return resp

    async def _send(
        self, request: web.BaseRequest, rec: Request, plan: _Plan, fd: int, fault: Fault | None
    ) -> web.StreamResponse:
        kind = fault.kind if fault is not None else None
        after = fault.after_bytes if fault is not None else 0
        rate = fault.rate if fault is not None and kind == "drip" else self.rate_limit
        head_only = request.method == "HEAD" or plan.status in (304, 412, 416)
        rec.status = plan.status
        if kind == "close_delimited":
            return await self._send_close_delimited(request, rec, plan, fd, after, rate)
        resp = web.StreamResponse(status=plan.status, headers=plan.headers)
        resp.content_length = plan.length
        await resp.prepare(request)
        if head_only:
            return resp
        limit = after if kind in ("drop", "short_close", "reset", "stall") else None
        corrupt_at = after if kind == "corrupt" else None
        await self._write_body(resp.write, rec, fd, plan.segments, limit, rate, corrupt_at)
        transport = request.transport
        if kind in ("drop", "short_close") and transport is not None:
            transport.close()  # flushes what was written, then FIN before the body is complete
        elif kind == "reset" and transport is not None:
            transport.abort()
        elif kind == "stall":
            await self._stopping.wait()  # cancelled when the client disconnects
            if transport is not None:
                transport.abort()
        elif kind == "long_body":
            extra = b"X" * (after or 1024)
            await StreamWriter(request.protocol, asyncio.get_running_loop()).write(extra)
            rec.body_bytes += len(extra)
        return resp

    async def _send_close_delimited(
        self, request: web.BaseRequest, rec: Request, plan: _Plan, fd: int, after: int,
        rate: int | None,
    ) -> web.StreamResponse:  # fmt: skip
        writer = StreamWriter(request.protocol, asyncio.get_running_loop())
        lines = [f"HTTP/1.1 {plan.status} {REASONS.get(plan.status, 'OK')}"]
        lines += [f"{k}: {v}" for k, v in plan.headers.items()]
        lines += ["Connection: close", "", ""]
        await writer.write("\r\n".join(lines).encode())
        if request.method != "HEAD":
            limit = after if after > 0 else None
            await self._write_body(writer.write, rec, fd, plan.segments, limit, rate, None)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=plan.status)  # never sent: the connection is closed

    async def _write_body(
        self,
        write: Callable[[bytes], Awaitable[None]],
        rec: Request,
        fd: int,
        segments: list[Segment],
        limit: int | None,
        rate: int | None,
        corrupt_at: int | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        block = BLOCK if not rate else max(1, min(BLOCK, rate // 20))
        sent = 0
        async for piece in iter_segments(fd, segments, block):
            if limit is not None:
                piece = piece[: max(0, limit - sent)]
                if not piece:
                    return
            if corrupt_at is not None and sent <= corrupt_at < sent + len(piece):
                buf = bytearray(piece)
                buf[corrupt_at - sent] ^= 0xFF
                piece = bytes(buf)
            await write(piece)
            sent += len(piece)
            rec.body_bytes += len(piece)
            if rate:
                delay = t0 + sent / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
