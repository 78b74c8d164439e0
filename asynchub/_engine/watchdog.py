"""The stall and slow-rate watchdog, for every request asynchub makes.

A per-read timeout is reset by every byte, so a server that is slow but alive (a status line at
one byte per second, a body dripping one byte every two seconds, endless ``103 Early Hints``)
holds a request forever. The watchdog judges a request by what it delivers instead:

* **Stall.** No body byte for ``stall_timeout`` seconds, counted from the moment the request
  was *sent* (so the whole response head, interim ``1xx`` answers included, must arrive within
  ``stall_timeout``), or from the last body byte.
* **Slow.** Fewer than ``min_rate`` bytes/s over the last ``rate_window`` seconds.

Either cancels the request, which then fails with :class:`~asynchub.StallError` (retryable:
the caller's :class:`~asynchub._engine.retry.Retrier` decides what comes next). A request that
waits for the bandwidth cap calls :meth:`Watched.paused` so the wait does not count as slow.
``min_rate <= 0`` turns the watchdog off (tests that fake the clock), leaving the transport's
per-read timeout.

Bounds with the defaults (``stall_timeout=60``, ``rate_window=30``, ``min_rate=1024``): a
request that sends nothing useful is cut within 60 s plus one poll (7.5 s); one that drips is cut
within ``rate_window`` plus one poll, 37.5 s.

Ranged downloads watch all their connections from one task
(:class:`~asynchub._engine.ranged.FileDownload`); documents and whole-file streams watch their
one request with :func:`run_watched`. Time is measured with the injected ``clock`` and waited
with the injected ``sleep``, like every other wait of the engine.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.lowlevel

from .._config import HubConfig
from .._exceptions import StallError
from .._transport.errors import host_port

__all__ = ["Watched", "poll_interval", "run_watched"]

T = TypeVar("T")


def poll_interval(config: HubConfig) -> float:
    """How often the watchdog looks: a quarter of the shorter of its two windows."""
    return max(0.01, min(config.stall_timeout, config.rate_window) / 4)


class Watched:
    """One request in flight, as the watchdog sees it."""

    def __init__(self, now: float) -> None:
        self.started = self.last = now
        self.total = 0
        self.samples: collections.deque[tuple[float, int]] = collections.deque([(now, 0)])
        self.reason: str | None = None
        self.stalled = False  # the reason is "no bytes" (not "too slow")
        self.scope: anyio.CancelScope | None = None

    def saw(self, nbytes: int, now: float) -> None:
        """``nbytes`` body bytes arrived at ``now``."""
        self.total += nbytes
        self.last = now

    def paused(self, now: float) -> None:
        """The request waited for the bandwidth cap: the rate is measured afresh from now."""
        self.last = now
        self.samples.clear()
        self.samples.append((now, self.total))

    def check(self, now: float, config: HubConfig, min_rate: float) -> str | None:
        """Why the request should be cut (``None``: it is fine), worded to follow "HOST sent"."""
        if now - self.last > config.stall_timeout:
            self.stalled = True
            return f"no bytes for {now - self.last:.1f} s"
        self.samples.append((now, self.total))
        while len(self.samples) > 2 and self.samples[1][0] <= now - config.rate_window:
            self.samples.popleft()
        since, base = self.samples[0]
        if now - since >= config.rate_window and min_rate > 0:
            rate = (self.total - base) / (now - since)
            if rate < min_rate:
                return f"{rate:.0f} B/s over {now - since:.1f} s, below min_rate {min_rate:.0f}"
        return None

    def cut(self, now: float, config: HubConfig, min_rate: float) -> bool:
        """Cancel the request if :meth:`check` finds a reason; whether it did."""
        if self.reason is not None or self.scope is None:
            return False
        reason = self.check(now, config, min_rate)
        if reason is None:
            return False
        self.reason = reason
        self.scope.cancel()
        return True


async def run_watched(
    call: Callable[[Watched], Awaitable[T]],
    *,
    config: HubConfig,
    url: str,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
    min_rate: float | None = None,
) -> T:
    """``await call(watched)`` under the watchdog; ``call`` reports body bytes with
    ``watched.saw``. A request cut by the watchdog raises :class:`StallError`; any other
    outcome of ``call`` (result or exception) passes through unchanged."""
    rate = float(config.min_rate) if min_rate is None else min_rate
    if config.min_rate <= 0:
        return await call(Watched(clock()))
    watched = Watched(clock())
    interval = poll_interval(config)
    outcome: list[T] = []
    failure: list[BaseException] = []

    async def watch() -> None:
        while True:
            await sleep(interval)
            await anyio.lowlevel.checkpoint()  # even a fake sleep that never yields
            if watched.cut(clock(), config, rate):
                return

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        with anyio.CancelScope() as scope:
            watched.scope = scope
            try:
                outcome.append(await call(watched))
            except Exception as exc:  # re-raised below, outside the task group
                failure.append(exc)
        group.cancel_scope.cancel()
    if watched.reason is not None:
        cause = failure[0] if failure else None
        raise StallError(f"{host_port(url)[1]} sent {watched.reason} ({url})", url=url) from cause
    if failure:
        raise failure[0]
    if not outcome:  # pragma: no cover - the scope is only cancelled with a reason
        raise StallError(f"{url}: cut by the watchdog", url=url)
    return outcome[0]
