"""What the engine checks in an answer's headers (``Content-Range``, the strong ``ETag``), and
which of a task group's failures to report."""

from __future__ import annotations

import re
import sys

import anyio

from .._exceptions import HubError, ProtocolError
from .._transport.base import Response
from .retry import retryable

__all__ = ["Restart", "Unranged", "collapse_group", "parse_content_range", "strong_etag"]

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


class Restart(Exception):
    """The file changed on the server: start it again from scratch."""


class Unranged(Exception):
    """A file of unknown size whose server gives no size for a range (a ``200`` without
    ``Content-Length``, or a ``416``): it must be fetched as one plain stream."""


#: ``bytes <first>-<last>/<total>`` in ASCII digits (``re.ASCII``: ``[0-9]``, never ``\\d``); a huge
#: total still parses, so the size checks can say what is wrong with it.
_CONTENT_RANGE = re.compile(r"(?i:bytes)[ ]+([0-9]{1,20})-([0-9]{1,20})/([0-9]{1,40})", re.ASCII)


def parse_content_range(value: str | None, url: str) -> tuple[int, int, int]:
    """``bytes a-b/n`` → ``(a, b, n)``; :class:`ProtocolError` for anything else. Only ASCII
    digits count: ``"²".isdigit()`` is true but ``int("²")`` fails, and ``int("١٢")`` reads
    digits HTTP does not allow."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        raise ProtocolError(f"{url} sent an unusable Content-Range {value!r:.80}", url=url)
    first, last, total = match.groups()
    start, end = int(first), int(last)
    if end < start:
        raise ProtocolError(f"{url} sent an empty Content-Range {value!r:.80}", url=url)
    return start, end, int(total)


def strong_etag(response: Response) -> str | None:
    etag = response.headers.get("ETag")
    if etag is None or etag.strip().startswith("W/"):
        return None
    return etag.strip()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def collapse_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception of a task group's failure that matters most."""
    leaves = _leaves(group)
    cancelled = anyio.get_cancelled_exc_class()

    def rank(exc: BaseException) -> int:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return 0
        if isinstance(exc, Restart):
            return 1
        if isinstance(exc, HubError):
            return 3 if retryable(exc) else 2
        return 5 if isinstance(exc, cancelled) else 4

    return min(leaves, key=rank)
