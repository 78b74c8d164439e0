"""Imports that never run on the event loop thread.

asynchub imports its heavy parts on first use (see ``asynchub/__init__.py``): the async core
(the hub, the engine, anyio and its asyncio backend: ~90-120 ms here), aiohttp, the model
stack. An import is blocking work like any other: done by the first ``aload`` of a process on
the loop thread, it froze every other coroutine of the service for that long. So every entry
point of the async API first awaits :func:`import_off_loop`, which imports what is missing in
a worker thread of the running loop (its default executor) while the loop keeps serving.

Choices:

* A module counts as imported only when its import has finished (``sys.modules`` holds it and
  its ``__spec__._initializing`` flag, set by importlib while the module body runs, is off). A
  module another thread is still importing is waited for in the worker thread, where blocking
  on the import lock costs the loop nothing.
* After the first call the check is a dictionary look-up per module, so it runs at the top of
  every operation.
* The model stack (onnx, numpy) is imported by the parse itself, which runs in a worker
  thread; see :mod:`asynchub._onnx.parse`. Its import still holds the GIL for long stretches
  (``ml_dtypes``' extension: ~1 s here), so the loop waits for it whichever thread imports it:
  a service that loads models should ``import onnx`` at start-up, before it serves.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["ASYNC_CORE", "import_off_loop", "imported"]

#: What the async API needs before it touches anyio: the hub (with the engine, the transport
#: and anyio itself), anyio's asyncio backend (which anyio imports on first use), the built-in
#: sources of the registry (``_hub/registry.py``) and the ONNX Model Hub's source object.
ASYNC_CORE = (
    "asynchub._hub.client",
    "anyio._backends._asyncio",
    "asynchub._onnx.spec",
    "asynchub.mindspore._spec",
    "asynchub._onnx.source",
)


def imported(name: str) -> bool:
    """Whether ``name`` is imported and its import has finished."""
    module = sys.modules.get(name)
    if module is None:
        return False
    return not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _import_all(names: list[str]) -> None:
    for name in names:
        importlib.import_module(name)


async def import_off_loop(*names: str) -> None:
    """Import the modules ``names`` that are not imported yet, in a worker thread of the
    running asyncio loop; returns at once when all are."""
    missing = [name for name in names if not imported(name)]
    if not missing:
        return
    import asyncio  # already imported: this is a coroutine on an asyncio loop

    await asyncio.get_running_loop().run_in_executor(None, _import_all, missing)
