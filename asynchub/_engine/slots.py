"""Connection slots per host, taken before a request is timed by the watchdog.

With ``max_connections_per_host`` below ``max_connections``, the workers of a file queue for a
connection to its one host. If that wait happened inside the transport (its own per-host
limit), the stall/slow-rate watchdog would time it as a request that sends nothing: a 64 MiB
download once failed with "0 B/s over 30 s" while bytes flowed steadily on the connections
that had one. So the engine takes one of ``max_connections_per_host`` slots of the URL's
origin (scheme, host, port) first, and only then starts the watched request; the
transport's own limit never makes a watched request wait.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio

__all__ = ["HostSlots"]


class HostSlots:
    """One ``anyio.CapacityLimiter(per_host)`` per origin, created on first use (per loop:
    the engine keeps one :class:`HostSlots` per event loop)."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._slots: dict[tuple[str, str, int | None], anyio.CapacityLimiter] = {}

    def __call__(self, url: str) -> anyio.CapacityLimiter:
        parts = urlsplit(url)
        key = (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = anyio.CapacityLimiter(self.per_host)
        return slot
