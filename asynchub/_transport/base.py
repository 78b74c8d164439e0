"""What the engine needs from HTTP: the :class:`Transport` and :class:`Response` protocols.

The engine, the document fetcher and every source speak to the network only through these
two protocols, so a transport can be swapped (the aiohttp implementation in
:mod:`.aiohttp_transport` is the default) or faked in tests (an in-memory transport serves
bytes from a dict). Everything here is pure: no aiohttp, no I/O.

The contract a transport keeps:

* ``request(url, headers=...)`` is an async context manager yielding a :class:`Response`
  after redirects were followed (at most :data:`MAX_REDIRECTS`, only http(s), never https →
  http, credentials dropped when the origin changes; a refused redirect raises
  :class:`~asynchub.RedirectError`). HTTP error statuses are *returned*, not raised: the
  caller owns the retry policy.
* ``Accept-Encoding: identity`` is always sent and a body with another ``Content-Encoding``
  raises :class:`~asynchub.ProtocolError` (the bytes hashed must be the bytes stored).
* Every lower-layer failure is translated into the asynchub error tree
  (:class:`~asynchub.TransferError` and its subclasses); nothing else escapes.
* ``aclose()`` releases connections; the transport may be used again afterwards (it then
  opens new connections).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from .._exceptions import HTTPStatusError, ProtocolError

__all__ = [
    "MAX_REDIRECTS",
    "BufferedResponse",
    "Piece",
    "REDIRECT_STATUSES",
    "Response",
    "Spliced",
    "Transport",
    "parse_content_length",
    "require_identity",
    "status_error",
]

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class Response(Protocol):
    """One HTTP response: ``status``, case-insensitive ``headers``, the final ``url``."""

    status: int
    headers: Mapping[str, str]
    url: str

    @property
    def content_length(self) -> int | None:
        """``Content-Length`` as an int, ``None`` when absent (see :func:`parse_content_length`)."""
        ...

    def iter_chunks(self, size: int) -> AsyncIterator[bytes]:
        """The body in pieces of at most ``size`` bytes, as they arrive. A body shorter than
        its ``Content-Length`` raises :class:`~asynchub.TransferError`."""
        ...

    async def read(self, limit: int) -> bytes:
        """The whole body; :class:`~asynchub.ProtocolError` if it is longer than ``limit``."""
        ...

    def close(self) -> None:
        """Drop the connection (the rest of the body is abandoned)."""
        ...


class Spliced(Protocol):
    """Body bytes that are held in the kernel (a pipe), not in memory: :meth:`write_to` moves
    them into a file with no copy through this process, :meth:`read` gives them as bytes.
    Either empties it; ``len()`` is how many bytes it held."""

    def __len__(self) -> int: ...

    def write_to(self, fd: int, offset: int) -> None:
        """Write the bytes into ``fd`` at ``offset`` (blocking: a worker thread)."""
        ...

    def read(self) -> bytes:
        """The bytes, read out (the rare case where they are needed in memory)."""
        ...

    def head(self, count: int) -> Spliced:
        """The first ``count`` bytes alone: writing them leaves the rest unread, and the
        rest is dropped when the piece is released (a range cut short by a split)."""
        ...


class Piece(Protocol):
    """A filled receive buffer lent by a transport: ``view`` holds body bytes until
    :meth:`release` gives the buffer back (after which ``view`` must not be used). A piece
    whose bytes stayed in the kernel (see :meth:`BufferedResponse.splice`) has an empty
    ``view`` and its bytes in ``spliced``."""

    @property
    def view(self) -> memoryview: ...

    @property
    def spliced(self) -> Spliced | None: ...

    def release(self) -> None: ...


@runtime_checkable
class BufferedResponse(Protocol):
    """A :class:`Response` that can also lend its body as buffers, with no copy in Python:
    the engine writes and hashes a :class:`Piece` and releases it. A transport without it is
    read through :meth:`Response.iter_chunks`."""

    @property
    def lendable(self) -> int:
        """How many buffers the response lends at most at once: a caller holding that many
        must release one before another piece can arrive (else it waits for nothing)."""
        ...

    @property
    def received(self) -> int:
        """Body bytes received so far, including those in a buffer not yet lent (an exact
        measure of throughput between two pieces; the adaptive width reads it)."""
        ...

    def iter_pieces(self) -> AsyncIterator[Piece]:
        """The body as filled buffers, as they arrive; each one must be released."""
        ...

    def splice(self) -> bool:
        """Move the rest of the body through the kernel where the platform and the connection
        allow it (see :mod:`.splicing`): the pieces from then on are :class:`Spliced`. Call
        before :meth:`iter_pieces`; False (and nothing changes) where it is not possible."""
        ...


@runtime_checkable
class Transport(Protocol):
    """GET requests with redirects, identity encoding and translated errors."""

    def request(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[Response]:
        """``GET url``; the response body is read by the caller inside the context."""
        ...

    async def aclose(self) -> None:
        """Close the connections of the running event loop."""
        ...


def parse_content_length(value: str | None, url: str) -> int | None:
    """A ``Content-Length`` header as an int. Only ASCII digits count (``"²"`` passes
    ``str.isdigit`` but is no length); anything else is a :class:`ProtocolError`."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise ProtocolError(f"{url} sent an invalid Content-Length {value[:40]!r}", url=url)
    return int(text)


def require_identity(headers: Mapping[str, str], url: str) -> None:
    """Refuse a body in any ``Content-Encoding`` but identity: the SHA-256 is of the bytes as
    stored, so a compressed body could never verify (every transport asks for identity)."""
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ProtocolError(
            f"{url} sent a {encoding[:40]!r}-encoded body although identity was asked; the "
            "bytes would not match the published SHA-256",
            url=url,
        )


def status_error(response: Response, what: str) -> HTTPStatusError:
    """An :class:`HTTPStatusError` for an unusable status of ``response``."""
    return HTTPStatusError(
        f"{what}: {response.url} answered HTTP {response.status}",
        url=response.url,
        status=response.status,
    )
