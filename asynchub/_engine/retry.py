"""An immutable retry policy: exponential backoff with full jitter, a cap, and Retry-After.

The policy is a value; the engine asks it how long to wait before attempt ``n``. Randomness is
injectable (``rand``) so tests are deterministic; sleeping is done by the caller through an
injectable sleep function, so tests never wait for real.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timezone

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "parse_retry_after"]

#: Statuses worth another try: request timeout, too many requests, and server errors.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
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

    ``attempts`` counts tries after the first; the budget resets whenever bytes flow (the
    engine calls it per *stalled* stretch, not per file). Waits are ``uniform(0, min(cap,
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
