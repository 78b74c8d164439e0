"""The onnx.hub-compatible module: ``from asynchub import hub`` replaces ``from onnx import hub``.

It offers onnx.hub's functions with the same names, parameters, defaults and cache layout, plus
their async twins (``aload``, ...), ``download``/``adownload`` and the ``Hub``/``AsyncHub``
classes.
"""

from __future__ import annotations

from ._api import (
    adownload,
    adownload_model_with_test_data,
    aget_model_info,
    alist_models,
    aload,
    aload_composite_model,
    aprefetch,
    download,
    download_model_with_test_data,
    get_dir,
    get_model_info,
    list_models,
    load,
    load_composite_model,
    prefetch,
    set_dir,
)
from ._client import AsyncHub
from ._config import HubConfig
from ._manifest import ModelInfo
from ._sync import Hub

__all__ = [
    "AsyncHub",
    "Hub",
    "HubConfig",
    "ModelInfo",
    "adownload",
    "adownload_model_with_test_data",
    "aget_model_info",
    "alist_models",
    "aload",
    "aload_composite_model",
    "aprefetch",
    "download",
    "download_model_with_test_data",
    "get_dir",
    "get_model_info",
    "list_models",
    "load",
    "load_composite_model",
    "prefetch",
    "set_dir",
]
