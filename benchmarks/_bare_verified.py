"""The least a Python client can do to fetch one file over N connections *and verify it*: a
reference for what the in-process targets ask of a verified download on this machine, not a
tool anyone would use.

Usage: ``python _bare_verified.py URL OUT CONNECTIONS SHA256``

The file is cut into :data:`PER_CONNECTION` (8) equal pieces per connection (a multiple of
64 KiB, at least 1 MiB: 16 MiB for 1 GiB over 8 connections), handed out in file order to
``CONNECTIONS`` blocking threads, each with one keep-alive connection, so the connections
finish together behind a per-connection cap and the prefix grows steadily; a body is read with
``recv_into`` into one 1 MiB buffer per thread and written with ``os.pwritev``. One more
thread hashes the contiguous finished prefix with SHA-256 while it grows, through read-only
maps of the file (no copy), so the hash runs during the download and only the last pieces
are left for after it. No retries, no redirects, no TLS, no resume state, no stall watchdog,
no adaptive width, no checks beyond the status line and the final digest. The last stdout
line is ``{"seconds": ...}``, from the first request to the digest compared (the in-process
time of the other drivers); the exit status is 1 if the digest differs.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

from _bare_client import PIECE, _size, ask, outcome, read_body

PER_CONNECTION = 8
ALIGN = 64 * 1024  # a piece starts a hash window: a multiple of the page size
WINDOW = 64 * 1024 * 1024  # the most of the file mapped at once


def piece_size(size: int, connections: int) -> int:
    """The length of every piece but the last (see the module docstring)."""
    even = -(-size // (max(1, connections) * PER_CONNECTION))
    return max(PIECE, -(-even // ALIGN) * ALIGN)


class _Body:
    """One keep-alive connection that asks for ranges one after the other."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.sock = socket.create_connection((host, port))
        self.host, self.path = host, path
        self.buffer = bytearray(PIECE)

    def fetch(self, fd: int, start: int, end: int) -> None:
        """Write bytes ``[start, end)`` of the file at their offset."""
        _, rest = ask(self.sock, self.host, self.path, start, end - 1)
        read_body(self.sock, fd, start, end, rest, self.buffer)


class _Prefix:
    """Which chunks are written; how far the contiguous finished prefix reaches."""

    def __init__(self, size: int, piece: int) -> None:
        self.size = size
        self.piece = piece
        self.done = [False] * (-(-size // piece))
        self.reach = 0
        self.failed = False
        self.moved = threading.Condition()

    def finish(self, index: int) -> None:
        with self.moved:
            self.done[index] = True
            first = self.reach // self.piece
            while first < len(self.done) and self.done[first]:
                first += 1
            self.reach = min(self.size, first * self.piece)
            self.moved.notify_all()

    def fail(self) -> None:
        with self.moved:
            self.failed = True
            self.moved.notify_all()

    def hash_all(self, fd: int) -> str:
        """SHA-256 of the file, hashing each part of the prefix as soon as it is written."""
        digest = hashlib.sha256()
        at = 0
        while at < self.size:
            with self.moved:
                while self.reach <= at and not self.failed:
                    self.moved.wait()
                if self.failed:
                    return ""
                reach = self.reach
            while at < reach:  # in windows, so the maps do not hold the whole file at once
                length = min(reach - at, WINDOW)
                with mmap.mmap(fd, length, offset=at, access=mmap.ACCESS_READ) as window:
                    digest.update(window)
                at += length
        return digest.hexdigest()


def main(url: str, out: str, connections: int, sha256: str) -> int:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    start = time.perf_counter()
    size = _size(host, port, path)
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    piece = piece_size(size, connections)
    prefix = _Prefix(size, piece)
    order = iter(range(len(prefix.done)))
    take = threading.Lock()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            body = _Body(host, port, path)
            while True:
                with take:
                    index = next(order, None)
                if index is None or errors:
                    break
                body.fetch(fd, index * piece, min(size, (index + 1) * piece))
                prefix.finish(index)
            body.sock.close()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            prefix.fail()

    try:
        os.posix_fallocate(fd, 0, size)
        threads = [threading.Thread(target=run) for _ in range(max(1, connections))]
        for thread in threads:
            thread.start()
        digest = prefix.hash_all(fd)
        for thread in threads:
            thread.join()
    finally:
        os.close(fd)
    if not errors and digest != sha256:
        errors.append(ValueError(f"SHA-256 {digest}, expected {sha256}"))
    return outcome("bare verified client", errors, start, size)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
