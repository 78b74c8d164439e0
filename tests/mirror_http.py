"""Helpers of the test mirror: Range parsing, validators, conditional requests, body pieces,
socket binding and TLS contexts.

Kept apart from the server in ``tests/mirror.py`` so the HTTP rules can be read on their own.
Choices:

- Only the ``bytes`` unit is understood. A Range header that does not parse is ignored (the
  request is answered 200 with the full body), as RFC 9110 section 14.2 allows.
- Several ranges in one header are parsed, but the server answers them with the full body unless
  the ``multipart`` fault is active (a server may ignore a Range header).
- ETags are strong. Files up to ``HASHED_ETAG_LIMIT`` bytes get ``"sha256-<16 hex>"`` from their
  content, bigger files get ``"meta-<size>-<mtime_ns>-<inode>"`` so a 1 GB file is never hashed
  on a request. A per-file generation (bumped by ``set_file`` and the ``change_etag`` fault) is
  appended as ``-g<n>`` so the ETag changes even when the bytes do not.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import hashlib
import os
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

HASHED_ETAG_LIMIT = 32 * 1024 * 1024
BLOCK = 256 * 1024
MULTIPART_BOUNDARY = "mirror-byteranges-boundary"

# A range as written by the client: (first, last) for "a-b" / "a-" (last None), or
# (None, n) for the suffix form "-n".
RangeSpec = tuple[int | None, int | None]
# A piece of a response body: literal bytes, or (offset, length) of the served file.
Segment = bytes | tuple[int, int]


def parse_range_header(value: str | None) -> list[RangeSpec] | None:
    """Parse ``Range: bytes=...``; None when absent or syntactically invalid."""
    if value is None:
        return None
    unit, sep, rest = value.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs: list[RangeSpec] = []
    for part in rest.split(","):
        first, dash, last = part.strip().partition("-")
        if not dash:
            return None
        first, last = first.strip(), last.strip()
        if first == "":
            if not last.isdigit():
                return None
            specs.append((None, int(last)))
            continue
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        a, b = int(first), (int(last) if last else None)
        if b is not None and b < a:
            return None
        specs.append((a, b))
    return specs or None


def resolve_ranges(specs: list[RangeSpec], size: int) -> list[tuple[int, int]]:
    """Satisfiable ranges as (start, length) against a representation of ``size`` bytes."""
    out: list[tuple[int, int]] = []
    for first, last in specs:
        if first is None:
            n = last or 0
            if n == 0 or size == 0:
                continue
            start = max(0, size - n)
            out.append((start, size - start))
        elif first < size:
            end = size - 1 if last is None else min(last, size - 1)
            out.append((first, end - first + 1))
    return out


def log_range(specs: list[RangeSpec] | None) -> tuple[int, int | None] | None:
    """The first range as recorded in the request log: suffix ``-n`` becomes ``(-n, None)``."""
    if not specs:
        return None
    first, last = specs[0]
    if first is None:
        return (-(last or 0), None)
    return (first, last)


def content_range(start: int, length: int, total: int) -> str:
    return f"bytes {start}-{start + length - 1}/{total}"


@dataclass(frozen=True)
class Validators:
    etag: str
    last_modified: str


def compute_etag_base(fd: int, st: os.stat_result) -> str:
    """Content hash for small files, metadata tag for big ones (blocking: run in a thread)."""
    if st.st_size > HASHED_ETAG_LIMIT:
        return f"meta-{st.st_size}-{st.st_mtime_ns}-{st.st_ino}"
    h = hashlib.sha256()
    offset = 0
    while offset < st.st_size:
        block = os.pread(fd, BLOCK, offset)
        if not block:
            break
        h.update(block)
        offset += len(block)
    return f"sha256-{h.hexdigest()[:16]}"


def make_validators(base: str, generation: int, mtime: float) -> Validators:
    tag = base if generation == 0 else f"{base}-g{generation}"
    last_modified = email.utils.formatdate(int(mtime) + generation, usegmt=True)
    return Validators(etag=f'"{tag}"', last_modified=last_modified)


def _etag_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def if_match_fails(value: str | None, etag: str) -> bool:
    """True when ``If-Match`` is present and no listed tag strongly equals ``etag``."""
    if value is None:
        return False
    tags = _etag_list(value)
    return "*" not in tags and etag not in tags


def if_none_match_hits(value: str | None, etag: str) -> bool:
    """True when ``If-None-Match`` matches (weak comparison) -> answer 304."""
    if value is None:
        return False
    tags = [t.removeprefix("W/") for t in _etag_list(value)]
    return "*" in tags or etag in tags


def if_range_allows(value: str | None, v: Validators) -> bool:
    """True when the Range may be honoured: no If-Range, or it equals the current validator.

    An entity tag must match strongly (a weak ``W/`` tag never does); a date must equal
    ``Last-Modified`` exactly.
    """
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value == v.etag
    try:
        asked = email.utils.parsedate_to_datetime(value)
        current = email.utils.parsedate_to_datetime(v.last_modified)
    except (TypeError, ValueError):
        return False
    return asked == current


def multipart_layout(parts: list[tuple[int, int]], total: int, content_type: str) -> list[Segment]:
    """Body segments of a ``multipart/byteranges`` answer: literal bytes or file slices."""
    segments: list[Segment] = []
    for start, length in parts:
        head = (
            f"--{MULTIPART_BOUNDARY}\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: {content_range(start, length, total)}\r\n\r\n"
        )
        segments.append(head.encode())
        segments.append((start, length))
        segments.append(b"\r\n")
    segments.append(f"--{MULTIPART_BOUNDARY}--\r\n".encode())
    return segments


def can_bind(host: str) -> bool:
    """True when a TCP socket can be bound on ``host`` (e.g. 127.0.0.2 on this machine)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


def tls_contexts(
    hosts: Sequence[str] = ("127.0.0.1", "127.0.0.2", "localhost"),
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) SSL contexts from a throw-away ``trustme`` CA valid for ``hosts``."""
    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return server, client


REASONS = {200: "OK", 206: "Partial Content", 304: "Not Modified", 412: "Precondition Failed",
            416: "Range Not Satisfiable"}  # fmt: skip


async def iter_segments(fd: int, segments: list[Segment], block: int) -> AsyncIterator[bytes]:
    for seg in segments:
        if isinstance(seg, bytes):
            for i in range(0, len(seg), block):
                yield seg[i : i + block]
            continue
        offset, remaining = seg
        while remaining > 0:
            data = await asyncio.to_thread(os.pread, fd, min(block, remaining), offset)
            if not data:
                return  # the file shrank under us: send what there is
            yield data
            offset += len(data)
            remaining -= len(data)


def read_all(fd: int, segments: list[Segment]) -> bytes:
    out = bytearray()
    for seg in segments:
        out += seg if isinstance(seg, bytes) else os.pread(fd, seg[1], seg[0])
    return bytes(out)


def bind_same_port(hosts: Sequence[str]) -> tuple[list[socket.socket], int]:
    """Bind one listening socket per host, all on the same free port (bounded retries)."""
    last: OSError | None = None
    for _ in range(50):
        socks: list[socket.socket] = []
        port = 0
        try:
            for host in hosts:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                port = sock.getsockname()[1]
            return socks, port
        except OSError as exc:
            for sock in socks:
                sock.close()
            last = exc
            if exc.errno != errno.EADDRINUSE:
                raise  # e.g. the host is not a local address: retrying will not help
    raise OSError(f"no common free port for {list(hosts)}") from last
