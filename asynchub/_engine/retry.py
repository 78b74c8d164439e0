"""Retrying: an immutable policy and the one retry loop every request of asynchub uses.

:class:`RetryPolicy` is a value (exponential backoff with full jitter, a cap, Retry-After);
randomness is injectable (``rand``) so tests are deterministic. :class:`Retrier` is the loop's
state: documents (manifests, cards), ranged chunks and whole-file streams all count their
failed tries, decide what is retryable, honour ``Retry-After`` and sleep through the
*injected* sleep function here, so tests never wait for real and a fix to the rules applies
everywhere at once. :func:`retry_call` wraps the common "try until it works or the budget is
spent" shape; the ranged download drives a :class:`Retrier` itself because a range that made
progress resumes from its last byte.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timezone
from typing import TypeVar

from .._exceptions import (
    HTTPStatusError,
    HubError,
    ProtocolError,
    RedirectError,
    TLSError,
    TransferError,
)

__all__ = [
    "RETRYABLE_STATUSES",
    "Retrier",
    "RetryNow",
    "RetryPolicy",
    "RetryableStatus",
    "WrongMirror",
    "parse_retry_after",
    "retry_call",
    "retryable",
    "status_failure",
]

log = logging.getLogger("asynchub")
T = TypeVar("T")

#: Statuses worth another try: request timeout, too many requests, and server errors.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a failing request.

    ``attempts`` counts tries after the first; the budget is given back once tries made real
    progress (see :class:`Retrier`), not whenever a byte flowed. Waits are ``uniform(0, min(cap,
    base * 2**n))`` (full jitter); a server's ``Retry-After`` is honoured up to
    ``max_retry_after`` seconds.
    """

    attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_retry_after: float = 120.0
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.backoff_cap, self.backoff_base * float(1 << min(attempt, 30)))
        return self.rand() * ceiling


class WrongMirror(ProtocolError):
    """The mirror serves a file of another size: try the next mirror."""


class RetryNow(TransferError):
    """Retry at once (a signed URL expired and the original URL is resolved again)."""


class RetryableStatus(HTTPStatusError):
    """A status worth another try (408, 425, 429, 5xx), with the server's Retry-After."""

    def __init__(self, message: str, *, url: str, status: int, retry_after: float | None):
        super().__init__(message, url=url, status=status)
        self.retry_after = retry_after


def retryable(exc: BaseException) -> bool:
    """Whether a failed request is worth another try on the same server."""
    if isinstance(exc, RetryableStatus):
        return True
    if isinstance(exc, (HTTPStatusError, WrongMirror, RedirectError, TLSError)):
        return False
    return isinstance(exc, TransferError)


def status_failure(
    status: int, headers: Mapping[str, str], url: str, what: str
) -> HTTPStatusError:
    """The error for an unusable HTTP status: :class:`RetryableStatus` (with Retry-After) for
    the statuses worth another try, a plain :class:`HTTPStatusError` for the others."""
    message = f"{what}: {url} answered HTTP {status}"
    if status in RETRYABLE_STATUSES:
        after = parse_retry_after(headers.get("Retry-After"), now=time.time())
        return RetryableStatus(message, url=url, status=status, retry_after=after)
    return HTTPStatusError(message, url=url, status=status)


class Retrier:
    """The retry budget of one request stream (a document, a range, a whole-file stream).

    Call :meth:`failed` with each failure: it re-raises what is not retryable or when
    ``policy.attempts`` tries were spent, otherwise reports the retry (log at INFO and the
    ``notify`` callback, e.g. a progress event) and sleeps ``policy.delay`` (honouring
    ``Retry-After``) through the injected ``sleep``. :meth:`progressed` gives the budget back
    once tries moved the download forward by a meaningful amount.

    **Progress-aware budget.** ``meaningful`` is how many bytes the tries since the budget was
    last given back must add up to before it is given back again (``0``: any byte). A mirror
    that resets every connection after ~100 bytes then spends its budget as fast as one that
    sends nothing, and the caller moves on to the next mirror, instead of crawling through a
    file 100 bytes per connection (~312 B/s, an hour for 1 MB) while the budget resets on
    every byte.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]],
        name: str,
        notify: Callable[[str], None] | None = None,
        *,
        meaningful: int = 0,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._name = name
        self._notify = notify
        self.meaningful = meaningful
        self.attempt = 0
        self._progress = 0

    def progressed(self, nbytes: int | None = None) -> None:
        """A try moved the download forward by ``nbytes`` (``None``: by a meaningful amount);
        the budget starts again once the bytes since the last reset reach ``meaningful``."""
        self._progress += self.meaningful if nbytes is None else nbytes
        if self._progress >= self.meaningful:
            self.attempt = 0
            self._progress = 0

    async def failed(self, exc: HubError) -> None:
        """Wait before the next try, or raise ``exc`` (see the class docstring)."""
        if not retryable(exc) or self.attempt >= self.policy.attempts:
            raise exc
        wait = 0.0
        if not isinstance(exc, RetryNow):
            after = exc.retry_after if isinstance(exc, RetryableStatus) else None
            wait = self.policy.delay(self.attempt, after)
        self.attempt += 1
        message = f"{exc} (retry {self.attempt}/{self.policy.attempts} in {wait:.2f} s)"
        log.info("%s: %s", self._name, message)
        if self._notify is not None:
            self._notify(message)
        if wait > 0:
            await self._sleep(wait)


async def retry_call(call: Callable[[], Awaitable[T]], retrier: Retrier) -> T:
    """``await call()`` until it succeeds; each :class:`HubError` goes to ``retrier``."""
    while True:
        try:
            return await call()
        except HubError as exc:
            await retrier.failed(exc)
