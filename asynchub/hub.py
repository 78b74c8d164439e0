"""The onnx.hub-compatible module: ``from asynchub import hub`` replaces ``from onnx import hub``.

It offers onnx.hub's functions with the same names, parameters, defaults and cache layout, plus
their async twins (``aload``, ...), ``download``/``adownload``, ``prefetch``/``aprefetch`` and
the ``Hub``/``AsyncHub`` classes. ``AsyncHub`` (the async core) is imported on first access, so
``from asynchub import hub`` stays as cheap as ``import asynchub``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _api
from ._api import *  # noqa: F403  (the module-level API, exactly as asynchub exports it)
from ._config import HubConfig as HubConfig
from ._hub.sync import Hub as Hub
from ._onnx.manifest import ModelInfo as ModelInfo

if TYPE_CHECKING:
    from ._hub.client import AsyncHub as AsyncHub

__all__ = sorted([*_api.__all__, "AsyncHub", "Hub", "HubConfig", "ModelInfo"])


def __getattr__(name: str) -> Any:
    if name != "AsyncHub":
        raise AttributeError(f"module 'asynchub.hub' has no attribute {name!r}")
    from ._hub.client import AsyncHub

    globals()["AsyncHub"] = AsyncHub
    return AsyncHub
