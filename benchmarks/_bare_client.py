"""The least a Python client can do to fetch one file over N connections: a reference for what
this machine and mirror allow, not a tool anyone would use.

Usage: ``python _bare_client.py URL OUT CONNECTIONS``

One blocking thread per connection, each asking once for its own contiguous slice of the file
(``Range``), reading the body with ``recv_into`` into one 1 MiB buffer and writing it with
``os.pwritev``. No verification, no retries, no redirects, no TLS, no piece scheduling: every
byte is copied twice (socket to buffer, buffer to page cache) and nothing else is done with it.
The threads release the GIL in every system call, so this is what the kernel, the mirror and
the copies cost. The last stdout line is ``{"seconds": ...}``, from the first request to the
last byte written (the in-process time of the other drivers).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

PIECE = 1024 * 1024


def _head(sock: socket.socket) -> tuple[str, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise EOFError("the mirror closed the connection before the headers ended")
        data += more
    head, rest = data.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def ask(sock: socket.socket, host: str, path: str, first: int, last: int) -> tuple[str, bytes]:
    """Ask ``sock`` for bytes ``[first, last]``; the head of the 206 answer, and the body
    bytes that came with it."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes={first}-{last}\r\n"
                 "\r\n".encode())
    head, rest = _head(sock)
    if " 206 " not in head.split("\r\n", 1)[0]:
        raise RuntimeError(f"expected 206 Partial Content, got {head.splitlines()[0]!r}")
    return head, rest


def _size(host: str, port: int, path: str) -> int:
    with socket.create_connection((host, port)) as sock:
        head, _ = ask(sock, host, path, 0, 0)
    for line in head.split("\r\n"):
        if line.lower().startswith("content-range:"):
            return int(line.rsplit("/", 1)[1])
    raise RuntimeError("no Content-Range in the answer")


def read_body(sock: socket.socket, fd: int, start: int, end: int, rest: bytes,
              buffer: bytearray) -> None:
    """Write the body (``rest`` came with the head) at ``start`` of ``fd``, up to ``end``,
    through ``buffer`` (``PIECE`` bytes)."""
    offset = start
    if rest:
        os.pwrite(fd, rest, offset)
        offset += len(rest)
    view = memoryview(buffer)
    while offset < end:
        want = min(PIECE, end - offset)
        got = 0
        while got < want:
            n = sock.recv_into(view[got:want])
            if not n:
                raise EOFError(f"the mirror closed the connection at byte {offset + got}")
            got += n
        os.pwritev(fd, [view[:got]], offset)
        offset += got


def _fetch(host: str, port: int, path: str, fd: int, start: int, end: int) -> None:
    with socket.create_connection((host, port)) as sock:
        _, rest = ask(sock, host, path, start, end - 1)
        read_body(sock, fd, start, end, rest, bytearray(PIECE))


def main(url: str, out: str, connections: int) -> int:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    start = time.perf_counter()
    size = _size(host, port, path)
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    errors: list[BaseException] = []

    def run(first: int, end: int) -> None:
        try:
            _fetch(host, port, path, fd, first, end)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        os.ftruncate(fd, size)
        step = -(-size // max(1, connections))
        threads = [threading.Thread(target=run, args=(first, min(size, first + step)))
                   for first in range(0, size, step)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        os.close(fd)
    return outcome("bare client", errors, start, size)


def outcome(name: str, errors: list[BaseException], start: float, size: int) -> int:
    """Report the first error (exit status 1), or the timing line (0)."""
    if errors:
        print(f"{name} failed: {errors[0]}", file=sys.stderr)
        return 1
    print(json.dumps({"seconds": time.perf_counter() - start, "bytes": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
