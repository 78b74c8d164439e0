"""Body bytes moved from a plain-HTTP socket into the file through the kernel (Linux
``splice``), never copied into this process.

A :class:`~.connection.Connection` asked to splice its body (``BufferedResponse.splice``)
stops reading through its transport and moves the bytes from the socket into a pipe of its
own (:class:`Pipe`, one per :class:`PipePiece`, two per connection like its buffers); the
engine then moves them from the pipe into the partial file at their offset
(:meth:`PipePiece.write_to`, in a worker thread).

Choices:

* **Why.** Reading into a buffer and writing it out copies every byte twice (socket to
  memory, memory to the page cache). ``splice`` from a socket into a pipe only moves page
  references, and from the pipe into the file copies once. In a 1 GiB download from a
  loopback mirror on 8 connections, receiving and writing took 0.81-0.93 CPU-s through
  buffers and 0.69-0.77 CPU-s through pipes (three runs each, no hashing). The bytes are not
  in memory then, so the hash reads them back from the page cache: worth it where that
  read-back copies nothing (through memory maps), or where the bytes arrive ahead of the
  hash anyway (a file on several connections); not where a read-back copies and the bytes
  arrive in order (they are hashed from the buffers). The engine decides (see
  ``SPLICE_WIDTH`` in :mod:`asynchub._engine.ranged`).
* **Where.** Linux only (``os.splice``), plain HTTP only (TLS bytes must be decrypted in
  memory), bodies with a ``Content-Length`` of at least :data:`MIN_SPLICE`, and only where a
  pipe can hold a whole piece (``F_SETPIPE_SZ`` to the buffer size: an unprivileged user past
  ``/proc/sys/fs/pipe-user-pages-soft`` gets less, and then the connection keeps its
  buffers; so does every other case).
* **How the loop reads.** The transport stops reading (``pause_reading``) and the event loop
  watches a duplicate of the socket's descriptor (the transport keeps its own registered):
  each time it is readable, one non-blocking ``splice`` moves what arrived, up to the room in
  the pipe and the rest of the body. When the body is complete the duplicate is closed and
  the transport reads again (the next answer's head on a kept-alive connection).
* A file system that refuses a splice into its files (``EINVAL``, ``ENOSYS``,
  ``EOPNOTSUPP``) gets that piece's bytes read out of the pipe and written with ``pwrite``.
* A pipe handed back still holding bytes (an answer cut short, a piece not written) is
  closed rather than reused: its bytes must never reach another piece.
* **Read out without waiting.** Every byte of a piece is in its pipe before the piece is
  handed over, so moving it out never needs to wait: the read end is non-blocking and the
  splice out asks not to wait (``SPLICE_F_NONBLOCK``). A pipe found short (its count and its
  contents disagree) is a :class:`~asynchub.TransferError`, so that range is fetched again,
  instead of a worker thread waiting forever on a pipe whose writer is still open. Only a
  bookkeeping error can cause that (a piece written by two batches at once, say, which
  hangs a blocking splice); this makes such an error cost a retry, and the hash still
  checks every byte, rather than a download that never ends.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from typing import TYPE_CHECKING

from .._exceptions import TransferError

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["AVAILABLE", "MIN_SPLICE", "Pipe", "PipeHead", "PipePiece", "splice_in"]

#: ``os.splice`` exists (Linux, Python 3.10+).
AVAILABLE = sys.platform == "linux" and hasattr(os, "splice")
#: Bodies shorter than this stay in memory buffers (a pipe pair costs three system calls).
MIN_SPLICE = 1024 * 1024
_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_IN_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_OUT_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 2)
#: What ``splice`` into a file answers on a file system that does not support it.
_NO_SPLICE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class Pipe:
    """A pipe that holds ``size`` bytes (both ends close-on-exec)."""

    __slots__ = ("read_fd", "write_fd")

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd

    @classmethod
    def open(cls, size: int) -> Pipe | None:
        """A new pipe of ``size`` bytes, or None if the system refuses one that large."""
        try:
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        except OSError:
            return None
        pipe = cls(read_fd, write_fd)
        try:
            os.set_blocking(read_fd, False)  # read out only what is there (see PipePiece)
            if fcntl.fcntl(write_fd, _SETPIPE_SZ, size) >= size:
                return pipe
        except OSError:
            pass
        pipe.close()
        return None

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1


def splice_in(sock_fd: int, pipe: Pipe, nbytes: int) -> int:
    """Move up to ``nbytes`` that arrived on ``sock_fd`` into ``pipe`` without waiting; the
    count moved (0: the peer closed). Raises ``BlockingIOError`` if nothing can move now."""
    return os.splice(sock_fd, pipe.write_fd, nbytes, flags=_IN_FLAGS)


class PipePiece:
    """A piece whose bytes are in a :class:`Pipe` (``filled`` of them); see
    :class:`~.base.Piece` and :class:`~.base.Spliced`. Its pipe goes back to the connection
    with :meth:`release`."""

    __slots__ = ("_conn", "filled", "pending", "pipe")

    def __init__(self, conn: Connection, pipe: Pipe) -> None:
        self._conn = conn
        self.pipe = pipe
        self.filled = 0  # bytes moved into the pipe for this piece
        self.pending = 0  # of those, not yet moved out (``write_to`` or ``read``)

    @property
    def view(self) -> memoryview:
        return memoryview(b"")

    @property
    def spliced(self) -> PipePiece:
        return self

    def __len__(self) -> int:
        return self.filled

    def write_to(self, fd: int, offset: int) -> None:
        """Move every byte of the pipe into ``fd`` at ``offset`` (blocking; worker thread).
        A file system that cannot take a splice gets the bytes through memory instead."""
        self.write_first(self.pending, fd, offset)

    def write_first(self, count: int, fd: int, offset: int) -> None:
        """Move the next ``count`` bytes of the pipe into ``fd`` at ``offset`` (see
        :meth:`write_to`)."""
        left = min(count, self.pending)
        while left:
            try:
                moved = os.splice(self.pipe.read_fd, fd, left, offset_dst=offset, flags=_OUT_FLAGS)
            except BlockingIOError:
                raise _short(self.pending) from None
            except OSError as exc:
                if exc.errno not in _NO_SPLICE:
                    raise
                data = memoryview(self.read_first(left))
                while data:
                    written = os.pwrite(fd, data, offset)
                    data, offset = data[written:], offset + written
                return
            if moved <= 0:  # its writer closed: the same bookkeeping error as above
                raise _short(self.pending)
            self.pending -= moved
            left -= moved
            offset += moved

    def read(self) -> bytes:
        """The bytes of the pipe, read out."""
        return self.read_first(self.pending)

    def read_first(self, count: int) -> bytes:
        """The next ``count`` bytes of the pipe, read out."""
        chunks = []
        left = min(count, self.pending)
        while left:
            try:
                data = os.read(self.pipe.read_fd, left)
            except BlockingIOError:
                raise _short(self.pending) from None
            if not data:
                raise _short(self.pending)
            chunks.append(data)
            self.pending -= len(data)
            left -= len(data)
        return b"".join(chunks)

    def head(self, count: int) -> PipeHead:
        """The first ``count`` bytes (see :class:`~.base.Spliced`): the rest stays in the
        pipe, which is closed, not reused, when the piece is released."""
        return PipeHead(self, min(count, self.pending))

    def release(self) -> None:
        self._conn.give_back_pipe(self)


class PipeHead:
    """The first bytes of a :class:`PipePiece` (:meth:`PipePiece.head`): a range cut by a
    split keeps them spliced instead of reading the whole pipe into memory to slice it."""

    __slots__ = ("_count", "_piece")

    def __init__(self, piece: PipePiece, count: int) -> None:
        self._piece = piece
        self._count = count

    def __len__(self) -> int:
        return self._count

    def write_to(self, fd: int, offset: int) -> None:
        self._piece.write_first(self._count, fd, offset)

    def read(self) -> bytes:
        return self._piece.read_first(self._count)

    def head(self, count: int) -> PipeHead:
        return PipeHead(self._piece, min(count, self._count))


def _short(pending: int) -> TransferError:
    """A pipe that holds fewer bytes than were moved into it: an error the download retries
    (that range again, from its last written byte), never a wait for bytes that cannot come."""
    return TransferError(
        f"a receive pipe held fewer bytes than it was given ({pending} missing); "
        "the range is fetched again"
    )
