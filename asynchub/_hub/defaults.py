"""The default hubs behind the module-level functions: one registry for both.

``asynchub.load(...)`` and the other sync functions use the default :class:`~asynchub.Hub`;
``await asynchub.aload(...)`` and the other coroutines use the default
:class:`~asynchub.AsyncHub`. Both are made on first use from the environment
(``HubConfig.from_env()``), under one lock; :func:`set_default_dir` moves both to a new cache
directory (``asynchub.set_dir``), :func:`reset_defaults` closes the sync one and forgets both
(the next use builds them again, from ``config`` when given). The modules of the hubs are
imported on first use, so this module is as cheap to import as ``asynchub`` itself.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._config import HubConfig
    from .client import AsyncHub
    from .sync import Hub

__all__ = ["default_async_hub", "default_hub", "reset_defaults", "set_default_dir"]

_lock = threading.RLock()


def _new_lock_after_fork() -> None:
    # the lock may have been held by a thread that does not exist in a forked child
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)
_sync: Hub | None = None
_async: AsyncHub | None = None
_config: HubConfig | None = None


def default_hub() -> Hub:
    """The default sync :class:`~asynchub.Hub`, made on first use."""
    global _sync
    with _lock:
        if _sync is None:
            from .sync import Hub

            _sync = Hub(_config)
        return _sync


def default_async_hub() -> AsyncHub:
    """The default :class:`~asynchub.AsyncHub`, made on first use."""
    global _async
    with _lock:
        if _async is None:
            from .client import AsyncHub

            _async = AsyncHub(_config, progress=True)  # bars where a person watches
        return _async


def set_default_dir(new_dir: str | Path) -> None:
    """Point both default hubs at ``new_dir`` (``asynchub.set_dir``)."""
    with _lock:
        default_hub().set_dir(new_dir)
        default_async_hub().set_dir(new_dir)


def reset_defaults(config: HubConfig | None = None) -> None:
    """Close the default sync hub and forget both; the next use builds them from ``config``
    (or the environment). The async hub is not closed here: it may belong to a loop that is
    not running; its sessions close with their loops."""
    global _sync, _async, _config
    with _lock:
        old, _sync, _async, _config = _sync, None, None, config
    if old is not None:
        old.close()
