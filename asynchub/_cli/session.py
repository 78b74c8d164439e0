"""The hub of one CLI command: an ``AsyncHub`` whose progress events go to the bars (when a
person is watching) and to a :class:`Watch` that turns retries into warning lines and
remembers which mirror served each file (for ``download --json``).

Retry warnings, choices: a file whose connections fail together (a mirror restarting, a
proxy dropping every connection) would otherwise print one line per connection and attempt,
so lines are grouped in *waves*: the first retry of a file prints a line; further retries of
that file print nothing until bytes flow again (a ``transfer`` event ends the wave) or
:data:`WAVE_REPEAT` seconds have passed, so a long outage still shows it is being retried.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import Any

from .._config import HubConfig
from .._progress.bars import ProgressBars, bars_enabled
from .._progress.events import ProgressEvent

__all__ = ["WAVE_REPEAT", "Session", "Watch"]

log = logging.getLogger("asynchub")

#: Seconds after which a retry wave that is still going prints another line.
WAVE_REPEAT = 10.0


class Watch:
    """A progress callback: retry waves → ``warn``; ``done`` → :attr:`mirrors`; every event
    is passed on to ``then`` (the bars) when given."""

    def __init__(
        self,
        warn: Callable[[str], None],
        then: Callable[[ProgressEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.warn = warn
        self.then = then
        self.clock = clock
        self.mirrors: dict[str, str | None] = {}
        self._waves: dict[str, float] = {}  # file name → when its wave's last line was printed

    def __call__(self, event: ProgressEvent) -> None:
        kind = event.kind
        if kind == "retry":
            now = self.clock()
            shown = self._waves.get(event.name)
            if shown is None or now - shown >= WAVE_REPEAT:
                self._waves[event.name] = now
                why = f": {event.message}" if event.message else ""
                self.warn(f"retrying {event.name}{why}")
        elif kind in ("transfer", "done", "failed", "cached"):
            self._waves.pop(event.name, None)
        if kind == "done":
            self.mirrors[event.name] = event.mirror
        if self.then is not None:
            self.then(event)


class Session:
    """``async with Session(args, config) as hub``: the hub of one command (see the module
    docstring). Bars only when stderr is a terminal or a notebook, never with ``--quiet``."""

    def __init__(self, args: argparse.Namespace, config: HubConfig) -> None:
        from .._hub.client import AsyncHub

        quiet = bool(getattr(args, "quiet", False))
        self.bars = ProgressBars() if not quiet and bars_enabled(config) else None
        self.watch = Watch(log.warning, self.bars)
        self.hub = AsyncHub(config, progress=self.watch)
        self.interrupted = False

    async def __aenter__(self) -> Any:
        return self.hub

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            await self.hub.aclose()
        finally:
            if self.bars is not None:
                self.bars.close()
