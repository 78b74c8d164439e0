"""What every ranged download of an engine shares (:class:`Context`), how the stall watchdog
sees one request in flight (:class:`Active`), and the blocking write of received bytes
(:func:`pwrite_all`, run in a worker thread)."""

from __future__ import annotations

import collections
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio

from .._cache.layout import translate_oserror
from .._config import HubConfig
from .._progress.events import ProgressEvent
from .._transport.base import Transport
from .ratelimit import TokenBucket

__all__ = ["Active", "Bytes", "Context", "pwrite_all"]

Bytes = bytes | memoryview


def pwrite_all(fd: int, buffers: Sequence[Bytes], offset: int) -> None:
    """Write ``buffers`` contiguously at ``offset`` (blocking; runs in a worker thread)."""
    if len(buffers) > 256:
        buffers = [b"".join(buffers)]
    total = sum(map(len, buffers))
    try:
        done = os.pwritev(fd, buffers, offset)
        if done < total:
            rest = memoryview(b"".join(buffers))[done:]
            while rest:
                n = os.pwrite(fd, rest, offset + done)
                done += n
                rest = rest[n:]
    except OSError as exc:
        raise translate_oserror(exc, "writing a partial download") from exc


@dataclass
class Context:
    """What every download of an engine shares."""

    config: HubConfig
    transport: Transport
    limiter: anyio.CapacityLimiter
    bucket: TokenBucket | None
    sleep: Callable[[float], Awaitable[None]]
    clock: Callable[[], float]
    emit: Callable[[ProgressEvent], None]
    #: One ``max_connections_per_host`` limiter per (scheme, host, port), shared by the
    #: engine's downloads on one loop (see :meth:`host_slot`).
    host_slots: dict[tuple[str, str, int | None], anyio.CapacityLimiter] = field(
        default_factory=dict
    )

    def host_slot(self, url: str) -> anyio.CapacityLimiter:
        """The connection slots of ``url``'s host. A request takes one *before* the watchdog
        starts timing it: with ``max_connections_per_host`` below ``max_connections``, the
        workers queued for a connection to one host are waiting, not stalled (the transport's
        own per-host limit then never makes a watched request wait)."""
        parts = urlsplit(url)
        key = (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port)
        slot = self.host_slots.get(key)
        if slot is None:
            slot = self.host_slots[key] = anyio.CapacityLimiter(
                self.config.max_connections_per_host
            )
        return slot

    def notify_retry(self, name: str) -> Callable[[str], None]:
        """What a :class:`Retrier` calls on each retry of ``name``: a ``retry`` event."""
        return lambda message: self.emit(ProgressEvent("retry", name, message=message))

    @property
    def min_rate(self) -> float:
        """The watchdog's floor; never above what the bandwidth cap leaves each connection."""
        floor = float(self.config.min_rate)
        if self.config.limit_rate is not None:
            floor = min(floor, self.config.limit_rate / (2 * self.config.max_connections))
        return floor


class Active:
    """One request in flight, as the watchdog sees it."""

    def __init__(self, now: float) -> None:
        self.started = self.last = now
        self.total = 0
        self.samples: collections.deque[tuple[float, int]] = collections.deque([(now, 0)])
        self.reason: str | None = None
        self.scope: anyio.CancelScope | None = None

    def check(self, now: float, config: HubConfig, min_rate: float) -> str | None:
        if now - self.last > config.stall_timeout:
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
