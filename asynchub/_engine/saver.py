"""When the resume state of one download is written (see :mod:`.ranged` for what a kill may
cost, which this bounds).

A :class:`StateSaver` is told of every write (:meth:`StateSaver.wrote`) and saves the state
(a :class:`~asynchub._engine.resume.ResumeState` from ``snapshot()``) in the background:

* when ``interval`` bytes were written since the last save, or when :data:`STATE_PERIOD`
  (0.25 s) has passed since it; a write that comes earlier schedules a save at the end of the
  period, so the state catches up within the period even when every connection stops
  writing (a stalled range, the last bytes of a file);
* the first period starts at the first write, not when the download was set up: what a kill
  costs is transfer, and a file of a prefetch that waited for a connection token was saved
  at its first write, then every period: 133-159 saves for the 60 files of the benchmark's
  prefetch, 100-105 now (most of its files are done within a period of their first byte);
* never for a complete file (it is verified and published next; if that is interrupted, the
  engine saves the complete state on the way out), and not per finished range
  (a prefetch of many small files would write a state file per request);
* in a worker thread, without a connection ever waiting for it; saves coalesce (a save
  asked while one runs is one more round, with the newer state).

The period is real time by default (what a kill costs is real transfer), not the engine's
injectable clock, which paces retries and the watchdog.

A failed save is logged and otherwise ignored: the state is an optimisation (a lost one costs
a re-download of the bytes it would have kept, never wrong bytes: the SHA-256 checks them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from .resume import ResumeState, save_state

__all__ = ["STATE_PERIOD", "StateSaver"]

log = logging.getLogger("asynchub")

#: Seconds between resume-state saves (and the longest a connection holds unwritten bytes).
STATE_PERIOD = 0.25


class StateSaver:
    """Saves ``snapshot()`` to ``partial``'s state file (see the module docstring). Background
    saves run in :attr:`group` while it is set (the download's task group)."""

    def __init__(
        self,
        partial: Path,
        snapshot: Callable[[], ResumeState],
        *,
        complete: Callable[[], bool],
        interval: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        threads: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.partial = partial
        self._snapshot = snapshot
        self._complete = complete
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        self._threads = threads
        self.group: anyio.abc.TaskGroup | None = None
        self._saving = False
        self._dirty = False
        self._queued = False  # a background save is started and has not begun
        self._later = False  # a save is scheduled for the end of the period
        self._unsaved = 0  # bytes written since the last save started
        self._saved_at: float | None = None  # the last save's start (or the first write's)

    async def save(self) -> None:
        """Write the state now; concurrent calls coalesce into at most one more write."""
        self._dirty = True
        if self._saving:
            return
        self._saving = True
        try:
            while self._dirty:
                self._dirty = False
                self._unsaved = 0
                self._saved_at = self._clock()
                await anyio.to_thread.run_sync(
                    save_state, self.partial, self._snapshot(), limiter=self._threads
                )
        except OSError as exc:
            log.debug("could not save the resume state of %s: %s", self.partial, exc)
        finally:
            self._saving = False

    def wrote(self, nbytes: int) -> None:
        """``nbytes`` more were written into the partial file."""
        self._unsaved += nbytes
        now = self._clock()
        if self._saved_at is None:
            self._saved_at = now
        if self._unsaved >= self._interval or now - self._saved_at >= STATE_PERIOD:
            self._soon()
        elif not self._later and self.group is not None:
            self._later = True
            self.group.start_soon(self._when_due)

    def stopped(self) -> None:
        """The download's task group is gone: no background save is pending any more."""
        self.group = None
        self._queued = False

    def _soon(self) -> None:
        if self._complete():
            return
        if self._saving:
            self._dirty = True
        elif not self._queued and self.group is not None:
            self._queued = True
            self._unsaved = 0
            self._saved_at = self._clock()
            self.group.start_soon(self._background)

    async def _background(self) -> None:
        self._queued = False
        await self.save()

    async def _when_due(self) -> None:
        try:
            saved_at = self._saved_at
            assert saved_at is not None  # set by the write that scheduled this
            await self._sleep(max(0.0, saved_at + STATE_PERIOD - self._clock()))
        finally:
            self._later = False
        if self._unsaved > 0:
            self._soon()
