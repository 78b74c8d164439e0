"""Waiting for a file's inter-process lock from async code (the rules are
:mod:`asynchub._cache.locks`'s; this is the polling loop around them).

The lock is tried in a worker thread every 20 ms, growing to 0.5 s: a blocking acquire would
pin a thread and could not be cancelled. Between two tries the waiter's judgement
(:class:`~asynchub._cache.locks.LockWait`) logs the holder and decides whether to go on
without the lock; a cancelled waiter only stops waiting, a cancelled holder still releases.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread

from .._cache.layout import lock_path
from .._cache.locks import CacheLock, LockWait
from .._config import HubConfig

__all__ = ["LOCK_POLL_FIRST", "LOCK_POLL_MAX", "file_lock", "new_lock"]

log = logging.getLogger("asynchub")

LOCK_POLL_FIRST = 0.02
LOCK_POLL_MAX = 0.5


def new_lock(config: HubConfig, dest: Path) -> CacheLock:
    """The lock of ``dest`` (not taken yet)."""
    return CacheLock(lock_path(dest), host=config.host_id, lease=config.lock_lease)


@contextlib.asynccontextmanager
async def file_lock(
    config: HubConfig, name: str, dest: Path, *, lock: CacheLock | None = None
) -> AsyncIterator[bool]:
    """Hold the lock of ``dest``; yields whether we hold it. A waiter whose holder is gone,
    stopped or not renewing its lease, or that waited ``config.lock_timeout``, goes on
    without it (yields False); so does everyone with ``config.use_locks`` off. ``lock`` is
    ``dest``'s lock if the caller made it already, maybe taken (one worker-thread call that
    looks at the cache and takes a free lock saves a hop per file); it is released on the
    way out either way."""
    if not config.use_locks:
        yield False
        return
    lock = lock or new_lock(config, dest)
    try:
        wait = LockWait(lock, name=name, timeout=config.lock_timeout)
        delay = LOCK_POLL_FIRST
        while not lock.held and not await anyio.to_thread.run_sync(lock.try_acquire):
            reason = await anyio.to_thread.run_sync(wait.verdict)
            if reason is not None and await anyio.to_thread.run_sync(lock.try_acquire):
                break  # a holder that died has released it meanwhile
            if reason is not None:
                log.warning(
                    "%s: not waiting any longer for %s: %s; downloading it in parallel (the"
                    " verified atomic rename keeps the cache right)",
                    name, lock.path, reason,
                )  # fmt: skip
                yield False
                return
            await anyio.sleep(delay)
            delay = min(delay * 1.5, LOCK_POLL_MAX)
        yield True
    finally:
        if lock.held:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lock.release)
