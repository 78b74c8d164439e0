"""Retrying: the one retry loop every request of asynchub uses, under an immutable policy.

:class:`RetryPolicy` (in :mod:`.policy`, re-exported here) is a value (exponential backoff with
full jitter, a cap, Retry-After); randomness is injectable (``rand``) so tests are
deterministic. :class:`Retrier` is the loop's
state: documents (manifests, cards), ranged chunks and whole-file streams all count their
failed tries, decide what is retryable, honour ``Retry-After`` and sleep through the
*injected* sleep function here, so tests never wait for real and a fix to the rules applies
everywhere at once. :func:`retry_call` wraps the common "try until it works or the budget is
spent" shape; the ranged download drives a :class:`Retrier` itself because a range that made
progress resumes from its last byte.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from .._exceptions import (
    HTTPStatusError,
    HubError,
    NetworkError,
    NotFoundError,
    ProtocolError,
    ProxyError,
    RedirectError,
    TLSError,
    TransferError,
)
from .policy import RetryPolicy, parse_retry_after

__all__ = [
    "RETRYABLE_STATUSES",
    "Retrier",
    "RetryNow",
    "RetryPolicy",
    "RetryWave",
    "RetryableStatus",
    "WrongMirror",
    "is_connect_failure",
    "is_permanent",
    "parse_retry_after",
    "retry_call",
    "retryable",
    "status_failure",
]

log = logging.getLogger("asynchub")
T = TypeVar("T")

#: Statuses worth another try: request timeout, too many requests, and server errors.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class WrongMirror(ProtocolError):
    """The mirror serves a file of another size: try the next mirror."""


class RetryNow(TransferError):
    """Retry at once (a signed URL expired and the original URL is resolved again)."""


class RetryableStatus(HTTPStatusError):
    """A status worth another try (408, 425, 429, 5xx), with the server's Retry-After."""

    def __init__(self, message: str, *, url: str, status: int, retry_after: float | None):
        super().__init__(message, url=url, status=status)
        self.retry_after = retry_after


def is_permanent(exc: BaseException) -> bool:
    """A network failure another try cannot fix: TLS verification, a proxy that refuses the
    credentials (407) or the destination (403)."""
    if isinstance(exc, TLSError):
        return True
    return isinstance(exc, ProxyError) and exc.status in (403, 407)


def is_connect_failure(exc: BaseException) -> bool:
    """The server (or the proxy) could not be reached at all: retried on the policy's short
    connect budget (``connect_attempts``, ``connect_backoff``)."""
    return isinstance(exc, NetworkError) and not is_permanent(exc)


def retryable(exc: BaseException) -> bool:
    """Whether a failed request is worth another try on the same server."""
    if isinstance(exc, RetryableStatus):
        return True
    if isinstance(exc, (HTTPStatusError, WrongMirror, RedirectError)) or is_permanent(exc):
        return False
    return isinstance(exc, TransferError)


def status_failure(status: int, headers: Mapping[str, str], url: str, what: str) -> HTTPStatusError:
    """The error for an unusable HTTP status: :class:`RetryableStatus` (with Retry-After) for
    the statuses worth another try, :class:`NotFoundError` for 404 and 410, a plain
    :class:`HTTPStatusError` for the others."""
    if status in (404, 410):
        return NotFoundError(
            f"{what}: {url} does not exist (HTTP {status})", url=url, status=status
        )
    message = f"{what}: {url} answered HTTP {status}"
    if status in RETRYABLE_STATUSES:
        after = parse_retry_after(headers.get("Retry-After"), now=time.time())
        return RetryableStatus(message, url=url, status=status, retry_after=after)
    return HTTPStatusError(message, url=url, status=status)


#: Retries of one file within this many seconds are one "wave": one INFO line.
RETRY_WAVE = 1.0


class RetryWave:
    """Shared by the retriers of one file: says whether a retry starts a new wave (a retry
    number not seen yet, or the first retry after :data:`RETRY_WAVE` quiet seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = -float("inf")
        self._attempt = 0

    def starts(self, attempt: int) -> bool:
        now = self._clock()
        if attempt > self._attempt or now - self._last >= RETRY_WAVE:
            self._last, self._attempt = now, attempt
            return True
        return False


class Retrier:
    """The retry budget of one request stream (a document, a range, a whole-file stream).

    Call :meth:`failed` with each failure: it re-raises what is not retryable or when the
    budget is spent (``policy.attempts``; ``policy.connect_attempts`` for a failure to connect,
    which also waits less), otherwise reports the retry (the ``notify`` callback, e.g. a
    progress event, and a log line) and sleeps ``policy.delay`` (honouring ``Retry-After``)
    through the injected ``sleep``. :meth:`progressed` gives the budget back after a try that
    moved the download forward.

    Log lines: one INFO line per retry *wave*. Retriers that share a ``wave`` (the ranges of
    one file) log the first retry within :data:`RETRY_WAVE` seconds at INFO and the others of
    that burst at DEBUG, so forty connections failing together make one visible line. Each
    record carries ``record.asynchub_retry_wave`` (``True`` on the first line of a wave), so a
    front end (the CLI) can show wave lines as warnings without turning on all INFO logging.

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
        wave: RetryWave | None = None,
        *,
        meaningful: int = 0,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._name = name
        self._notify = notify
        self._wave = wave if wave is not None else RetryWave()
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
        connect = is_connect_failure(exc)
        limit = self.policy.limit(connect=connect)
        if not retryable(exc) or self.attempt >= limit:
            raise exc
        wait = 0.0
        if not isinstance(exc, RetryNow):
            after = exc.retry_after if isinstance(exc, RetryableStatus) else None
            wait = self.policy.delay(self.attempt, after, connect=connect)
        self.attempt += 1
        message = f"{exc} (retry {self.attempt}/{limit} in {wait:.2f} s)"
        wave = self._wave.starts(self.attempt)
        log.log(
            logging.INFO if wave else logging.DEBUG,
            "%s: %s",
            self._name,
            message,
            extra={"asynchub_retry_wave": wave},
        )
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
