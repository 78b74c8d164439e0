"""asynchub: fast, safe, asynchronous downloads of pretrained models.

The successor of ``onnx.hub``: ``import asynchub as hub`` (or ``from asynchub import hub``)
and keep calling ``hub.load("resnet50")``. Every function has an ``a``-prefixed coroutine twin
(``await hub.aload(...)``). See :mod:`asynchub.hub` for the onnx.hub-compatible module and
:class:`HubConfig` for every setting.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._api import (
    adownload,
    adownload_model_with_test_data,
    adownload_with_test_data,
    aget_model_info,
    alist_models,
    aload,
    aload_composite_model,
    aprefetch,
    download,
    download_model_with_test_data,
    download_with_test_data,
    get_dir,
    get_model_info,
    list_models,
    load,
    load_composite_model,
    prefetch,
    set_dir,
)
from ._exceptions import (
    ArchiveError,
    CacheError,
    CompositeModelError,
    ConfigError,
    ConnectError,
    ConnectTimeoutError,
    HostNotFoundError,
    HTTPStatusError,
    HubClosedError,
    HubError,
    InsufficientSpaceError,
    IntegrityError,
    ManifestError,
    ManifestNotFoundError,
    MirrorsExhaustedError,
    ModelNotFoundError,
    NetworkError,
    NotFoundError,
    OfflineError,
    OpsetNotFoundError,
    ProtocolError,
    ProxyError,
    RedirectError,
    StallError,
    TLSError,
    TransferError,
    UntrustedRepoError,
)

if TYPE_CHECKING:
    from . import hub, mindspore
    from ._config import HubConfig
    from ._engine.policy import RetryPolicy
    from ._hub.client import AsyncHub
    from ._hub.sync import Hub
    from ._onnx.manifest import ModelInfo
    from ._onnx.prefetch import PrefetchItem, PrefetchResult
    from ._progress.bars import ProgressBars
    from ._progress.events import ProgressCallback, ProgressEvent

__version__ = "0.1.0"

#: The other public names, with the module each comes from, imported on first access
#: (``None``: the name is the module itself). Choice: ``import asynchub`` imports only the API
#: functions and the errors (two small modules), so the command line's ``--help`` and a
#: service that only imports the package pay for no module they do not use, and
#: ``asynchub.aload`` inside a coroutine finds its function without importing anything on the
#: event loop. ``load`` pulls in the model stack (onnx, numpy, protobuf: about a second) only
#: when it parses a model; the async core (asyncio, anyio, the engine, aiohttp) loads when
#: something has to be fetched, in a worker thread; the bars (tqdm) when one is drawn.
_LAZY: dict[str, tuple[str, str | None]] = {
    "AsyncHub": ("._hub.client", "AsyncHub"),
    "Hub": ("._hub.sync", "Hub"),
    "HubConfig": ("._config", "HubConfig"),
    "ModelInfo": ("._onnx.manifest", "ModelInfo"),
    "PrefetchItem": ("._onnx.prefetch", "PrefetchItem"),
    "PrefetchResult": ("._onnx.prefetch", "PrefetchResult"),
    "ProgressBars": ("._progress.bars", "ProgressBars"),
    "ProgressCallback": ("._progress.events", "ProgressCallback"),
    "ProgressEvent": ("._progress.events", "ProgressEvent"),
    "RetryPolicy": ("._engine.retry", "RetryPolicy"),
    "hub": (".hub", None),
    "mindspore": (".mindspore", None),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'asynchub' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ArchiveError",
    "AsyncHub",
    "CacheError",
    "CompositeModelError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "HTTPStatusError",
    "HostNotFoundError",
    "Hub",
    "HubClosedError",
    "HubConfig",
    "HubError",
    "InsufficientSpaceError",
    "IntegrityError",
    "ManifestError",
    "ManifestNotFoundError",
    "MirrorsExhaustedError",
    "ModelInfo",
    "ModelNotFoundError",
    "NetworkError",
    "NotFoundError",
    "OfflineError",
    "OpsetNotFoundError",
    "PrefetchItem",
    "PrefetchResult",
    "ProgressBars",
    "ProgressCallback",
    "ProgressEvent",
    "ProtocolError",
    "ProxyError",
    "RedirectError",
    "RetryPolicy",
    "StallError",
    "TLSError",
    "TransferError",
    "UntrustedRepoError",
    "__version__",
    "adownload",
    "adownload_model_with_test_data",
    "adownload_with_test_data",
    "aget_model_info",
    "alist_models",
    "aload",
    "aload_composite_model",
    "aprefetch",
    "download",
    "download_model_with_test_data",
    "download_with_test_data",
    "get_dir",
    "get_model_info",
    "hub",
    "list_models",
    "load",
    "load_composite_model",
    "mindspore",
    "prefetch",
    "set_dir",
]
