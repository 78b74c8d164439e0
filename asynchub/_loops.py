"""Event loops: the one asynchub makes for itself, and state that belongs to one loop.

**Which loop asynchub makes** (:func:`loop_factory`): the sync façade's loop thread and the
command line run on their own loop, and take it from uvloop where it is installed (a
dependency on Linux and macOS with CPython; ``HubConfig.event_loop`` or
``ASYNCHUB_EVENT_LOOP`` choose: ``auto``, ``asyncio`` or ``uvloop``). uvloop runs the
event loop itself (polling, callbacks, the socket reads of :mod:`._transport.connection`) in
C, where asyncio's selector loop runs it in Python: measured on 2 cores, 1 GiB from a loopback
mirror capped at 25 MB/s per connection took 1.45-1.66 s and 1.96-2.2 CPU-s against
1.52-1.74 s and 2.07-2.25 CPU-s (four runs each, interleaved), and the 60-model prefetch
2.03-2.36 s and 2.3-2.7 CPU-s against 2.17-2.29 s and 2.6-2.82 CPU-s; without a cap, equal.
The async API runs on the caller's loop, whatever it is; asynchub needs nothing of a loop
beyond asyncio's interface (it is tested on both). uvloop is not used while standard input,
output or error is closed (libuv aborts the process when it closes a socket that took one of
those numbers); asyncio's loop runs then.

**State per loop** (:class:`PerLoop`): asyncio primitives (events, limiters, sessions,
sockets) must only be used on the loop that made them, and a hub may be used from several
loops over its life (a second ``asyncio.run``, the sync façade's thread, a notebook's loop).
:class:`PerLoop` is the one way asynchub keeps such state: ``get()`` returns the value of the
running loop, made by ``factory`` the first time that loop asks; a loop that is
garbage-collected takes its value with it (weak keys), so nothing of a finished loop is ever
reused or kept alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from ._descriptors import DEFAULT as DEFAULT_DESCRIPTORS
from ._descriptors import reserve
from ._exceptions import ConfigError

__all__ = ["PerLoop", "loop_factory"]

T = TypeVar("T")

log = logging.getLogger("asynchub")


def loop_factory(kind: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes asynchub's own event loop (see the module docstring): uvloop's for
    ``"auto"`` where it is installed and for ``"uvloop"``, asyncio's otherwise, and asyncio's
    whenever standard input, output or error is closed (see :func:`_stdio_open`). Making the
    loop first makes room in the process's descriptor table (:mod:`asynchub._descriptors`),
    while the loop's thread has not started."""
    make = _choose(kind)

    def new_loop() -> asyncio.AbstractEventLoop:
        reserve(DEFAULT_DESCRIPTORS)
        return make()

    return new_loop


def _choose(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The constructor of the loop ``kind`` asks for (see :func:`loop_factory`)."""
    if kind == "asyncio":
        return asyncio.new_event_loop
    if not _stdio_open():
        if kind == "uvloop":
            log.warning(
                "asynchub: standard input, output or error is closed, where uvloop aborts the "
                "process; using asyncio's event loop"
            )
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise ConfigError(
                "event_loop='uvloop' asks for uvloop, which is not installed here; "
                "install it (pip install uvloop) or use 'auto' or 'asyncio'"
            ) from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _stdio_open() -> bool:
    """Whether file descriptors 0, 1 and 2 are all open. When one is closed (a service started
    with ``stdin`` closed, ``subprocess.run(..., stdin=subprocess.DEVNULL)`` is fine), the
    next socket takes its number, and libuv, under uvloop, aborts the whole process when it
    closes a descriptor numbered 2 or less (``uv__close: Assertion `fd > STDERR_FILENO'``)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return False
    return True


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
