"""State that belongs to one event loop.

asyncio primitives (events, limiters, sessions, sockets) must only be used on the loop that
made them, and a hub may be used from several loops over its life (a second ``asyncio.run``,
the sync façade's thread, a notebook's loop). :class:`PerLoop` is the one way asynchub keeps
such state: ``get()`` returns the value of the running loop, made by ``factory`` the first
time that loop asks; a loop that is garbage-collected takes its value with it (weak keys), so
nothing of a finished loop is ever reused or kept alive.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One value per running event loop (see the module docstring)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        """The running loop's value (made now if it has none)."""
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            value = self._values[loop] = self._factory()
        return value

    def peek(self) -> T | None:
        """The running loop's value, or ``None``; never makes one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return self._values.get(loop)

    def clear(self) -> None:
        """Forget every loop's value (the next ``get`` makes a new one)."""
        self._values.clear()
