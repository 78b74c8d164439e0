"""How patiently to retry: :class:`RetryPolicy`, a value (exponential backoff with full
jitter, a cap, ``Retry-After``), and :func:`parse_retry_after`. Apart from the retry loop
(:mod:`.retry`), because the configuration holds a policy and ``asynchub --help`` reads the
configuration: this module imports no logging and no event loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RetryPolicy", "parse_retry_after"]


def _random() -> float:
    """A uniform number in [0, 1) for the jitter (:mod:`random` is imported at the first
    retry: the configuration, which holds a policy, is also read by ``asynchub --help``)."""
    import random

    return random.random()


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    import email.utils  # here: an HTTP date is rare, and the module costs ~6 ms to import
    from datetime import timezone

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
    progress (see :class:`~asynchub._engine.retry.Retrier`), not whenever a byte flowed.
    Waits are ``uniform(0, min(cap, base * 2**n))`` (full jitter); a server's
    ``Retry-After`` is honoured up to ``max_retry_after`` seconds.

    A failure to *connect* (refused, unreachable, no DNS answer, connect timeout, dead proxy)
    gets a smaller, faster budget: ``connect_attempts`` retries after
    ``uniform(0, connect_backoff * 2**n)`` seconds. A dead network is then reported in about a
    second (defaults: 2 retries, waits of at most 0.25 s and 0.5 s, per URL), instead of the
    8-14 s that five exponential waits took; a blip (a server restarting) still gets its
    retries. A connect *timeout* costs ``connect_timeout`` per try on top.
    """

    attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_retry_after: float = 120.0
    connect_attempts: int = 2
    connect_backoff: float = 0.25
    rand: Callable[[], float] = field(default=_random, compare=False, repr=False)

    def limit(self, *, connect: bool = False) -> int:
        """How many retries a failure of this kind gets (``connect``: a connect failure)."""
        return min(self.connect_attempts, self.attempts) if connect else self.attempts

    def delay(
        self, attempt: int, retry_after: float | None = None, *, connect: bool = False
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        base = min(self.connect_backoff, self.backoff_base) if connect else self.backoff_base
        ceiling = min(self.backoff_cap, base * float(1 << min(attempt, 30)))
        return self.rand() * ceiling
