"""A token bucket shared by every connection of an engine: the bandwidth cap.

Each connection calls :meth:`TokenBucket.take` with the size of what it just read. The bucket
hands out *time slots* in call order: a read of ``n`` bytes reserves ``n / rate`` seconds after
the previous reservation, and the reader sleeps until its slot ends, minus the burst allowance
(a reader may run up to ``burst`` seconds ahead of the cap). Because the reservation is made
before sleeping, concurrent readers queue up fairly and the long-run total never exceeds
``rate``; TCP flow control pushes back on the server while a reader sleeps.

Choices: ``burst`` is 0.25 s worth of bytes, so an idle link may send a short burst at full
speed (a smaller burst costs wakeups, a larger one lets 1-second averages overshoot). Time and
sleep are injected, so tests run on a fake clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` bytes/s across all callers (see the module docstring)."""

    def __init__(
        self,
        rate: int,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        burst: float = 0.25,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._burst = burst
        self._next = clock()

    async def take(self, nbytes: int) -> float:
        """Account for ``nbytes`` just transferred; sleep as long as the cap requires.
        Returns the seconds slept."""
        now = self._clock()
        self._next = max(self._next, now) + nbytes / self.rate
        delay = self._next - self._burst - now
        if delay > 0:
            await self._sleep(delay)
            return delay
        return 0.0
