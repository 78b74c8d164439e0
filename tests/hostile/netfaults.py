"""Byte-level misbehaving HTTP servers on 127.0.0.1 for the network-fault tests.

``tests/mirror.py`` answers with correct HTTP framing and injects faults inside it; the faults
here break the framing itself, which an ``aiohttp`` server cannot be made to do: a status line
sent one byte per second, endless ``103 Early Hints``, a server that accepts and never answers,
a body dripping one byte at a time, headers with Unicode digits. :class:`RawServer` hands each
connection to a handler coroutine ``handler(request, writer)`` after reading the request head;
``connections`` and ``requests`` count what arrived (the handlers never read a body: the client
only sends ``GET``).

Every server runs on an asyncio loop: ``async with RawServer(...)`` in async tests, or
``with RawServer(...).running()`` (its own loop in a daemon thread) when the client runs in a
child process. ``stop()`` closes every connection still open, so a handler that waits forever
never holds a test up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RawRequest",
    "RawServer",
    "blob_entry",
    "card_text",
    "drip_body",
    "early_hints",
    "endless_body",
    "fixed",
    "ranged_file",
    "silent",
    "slow_headers",
]

Handler = Callable[["RawRequest", asyncio.StreamWriter], Awaitable[None]]
HEAD_LIMIT = 64 * 1024


@dataclass
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def range(self) -> tuple[int, int | None] | None:
        """The first range asked (``bytes=a-b`` or ``a-``), else None."""
        value = self.headers.get("range", "")
        unit, _, spec = value.partition("=")
        first, dash, last = spec.split(",")[0].strip().partition("-")
        if unit.strip().lower() != "bytes" or not dash or not first.isascii():
            return None
        if not first.isdigit() or (last and not (last.isascii() and last.isdigit())):
            return None
        return int(first), (int(last) if last else None)


@dataclass
class RawServer:
    """``handler`` answers every request (one request per connection)."""

    handler: Handler
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[RawRequest] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.AbstractServer | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def requests_for(self, suffix: str) -> list[RawRequest]:
        return [r for r in list(self.requests) if r.path.endswith(suffix)]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = [*lines[0].split(" "), "", "", ""][:3]
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            request = RawRequest(method, path, headers)
            self.requests.append(request)
            await self.handler(request, writer)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=HEAD_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)
        self._server = None

    async def __aenter__(self) -> RawServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[RawServer]:
        """Serve from a daemon thread's own loop (for clients in child processes)."""
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="raw-server", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("the raw server did not start within 30 s")
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(30)
            loop.close()


# --------------------------------------------------------------------------- handlers


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("utf-8")


async def _forever() -> None:
    await asyncio.Event().wait()


def fixed(status: str, headers: dict[str, str], body: bytes = b"") -> Handler:
    """One complete answer (``Content-Length`` added unless given), then the connection
    closes. Header values may hold any Unicode (sent as UTF-8)."""

    async def handle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        hdrs = {"Connection": "close", **headers}
        hdrs.setdefault("Content-Length", str(len(body)))
        writer.write(_head(status, hdrs) + (b"" if request.method == "HEAD" else body))

    return handle


def slow_headers(every: float = 1.0) -> Handler:
    """A status line and then one header byte every ``every`` seconds, forever."""

    async def handle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        await writer.drain()
        while True:
            await asyncio.sleep(every)
            writer.write(b"a")
            await writer.drain()

    return handle


def early_hints(every: float = 0.5) -> Handler:
    """``103 Early Hints`` every ``every`` seconds, forever; the final answer never comes."""

    async def handle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(every)

    return handle


def silent() -> Handler:
    """Accepts, reads the request, and never answers."""

    async def handle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        await _forever()

    return handle


def drip_body(
    body: bytes, every: float = 1.0, *, length: bool = True, status: str = "200 OK"
) -> Handler:
    """Headers at once (``Content-Length`` unless ``length=False``: then close-delimited),
    then the body one byte every ``every`` seconds (an endless ``b"x"`` stream when ``body`` is
    empty)."""

    async def handle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        headers = {"Connection": "close", "Content-Type": "application/octet-stream"}
        if length:
            headers["Content-Length"] = str(len(body))
        writer.write(_head(status, headers))
        await writer.drain()
        index = 0
        while body == b"" or index < len(body):
            await asyncio.sleep(every)
            writer.write(body[index : index + 1] if body else b"x")
            await writer.drain()
            index += 1

    return handle


def endless_body(block: int = 64 * 1024) -> Handler:
    """``200`` without ``Content-Length`` (close-delimited) and a body that never ends, sent as
    fast as the client reads it."""

    async def handle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(_head("200 OK", {"Connection": "close"}))
        piece = b"x" * block
        while True:
            writer.write(piece)
            await writer.drain()

    return handle


def ranged_file(
    data: bytes,
    *,
    content_range: Callable[[int, int, int], str] | None = None,
    extra: dict[str, str] | None = None,
) -> Handler:
    """A file server: 206 for ``Range: bytes=a-b`` (``content_range(start, end, total)`` may
    rewrite the ``Content-Range`` value), else 200 with the whole body."""

    async def handle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        headers = {"Connection": "close", "Content-Type": "application/octet-stream"}
        headers.update(extra or {})
        asked = request.range
        if asked is None:
            headers["Content-Length"] = str(len(data))
            writer.write(_head("200 OK", headers) + data)
            return
        start, last = asked
        end = len(data) - 1 if last is None else min(last, len(data) - 1)
        body = data[start : end + 1]
        value = f"bytes {start}-{end}/{len(data)}"
        if content_range is not None:
            value = content_range(start, end, len(data))
        headers["Content-Range"] = value
        headers["Content-Length"] = str(len(body))
        writer.write(_head("206 Partial Content", headers) + body)

    return handle


# --------------------------------------------------------------------------- documents


def blob_entry(
    name: str, rel: str, data: bytes, *, opset: int = 13, sized: bool = True
) -> dict[str, Any]:
    """A manifest entry for ``data`` served at ``rel`` (``model_bytes`` left out unless
    ``sized``): the engine fetches and verifies it without parsing it as a model."""
    metadata: dict[str, Any] = {"model_sha": hashlib.sha256(data).hexdigest(), "tags": ["blob"]}
    if sized:
        metadata["model_bytes"] = len(data)
    return {
        "model": name,
        "model_path": rel,
        "onnx_version": "1.14",
        "opset_version": opset,
        "metadata": metadata,
    }


def manifest_bytes(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps(entries).encode()


def card_text(asset_url: str, sha: str) -> str:
    """A minimal valid MindSpore Hub card with one asset."""
    return (
        "# test\n\n---\n\nmodel-name: test\n\nmodule-type: cv-classification\n\n"
        "train-dataset: cifar10\n\nmindspore-version: 1.10\n\n"
        f"asset:\n-\n    file-format: ckpt\n    asset-link: <{asset_url}>  \n"
        f"    asset-sha256: {sha}  \n\n"
        "license: Apache2.0\n\nsummary: a test card\n\n---\n\n## Usage\n"
    )


# --------------------------------------------------------------------------- child processes


def run_netchild(args: dict[str, Any], timeout: float = 60) -> Any:
    """Run ``tests.hostile.netchild`` with ``args``; killed (and the test failed) after
    ``timeout`` seconds."""
    import os
    import subprocess
    import sys

    from tests.hostile.helpers import ROOT, finish_child

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hostile.netchild", json.dumps(args)],
        cwd=ROOT,
        env=env,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return finish_child(proc, timeout)
