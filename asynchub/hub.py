"""The onnx.hub-compatible module: ``from asynchub import hub`` replaces ``from onnx import hub``.

It offers onnx.hub's functions with the same names, parameters, defaults and cache layout, plus
their async twins (``aload``, ...), ``download``/``adownload``, ``prefetch``/``aprefetch`` and
the ``Hub``/``AsyncHub`` classes.
"""

from __future__ import annotations

from . import _api
from ._api import *  # noqa: F403  (the module-level API, exactly as asynchub exports it)
from ._client import AsyncHub as AsyncHub
from ._config import HubConfig as HubConfig
from ._manifest import ModelInfo as ModelInfo
from ._sync import Hub as Hub

__all__ = sorted([*_api.__all__, "AsyncHub", "Hub", "HubConfig", "ModelInfo"])
