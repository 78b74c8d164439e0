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
from ._config import HubConfig
from ._engine.retry import RetryPolicy
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
from ._hub.sync import Hub
from ._onnx.manifest import ModelInfo
from ._progress.events import ProgressCallback, ProgressEvent

if TYPE_CHECKING:
    from . import hub
    from ._hub.client import AsyncHub
    from ._onnx.prefetch import PrefetchItem, PrefetchResult
    from ._progress.bars import ProgressBars

__version__ = "0.1.0"

#: Public names whose modules are imported on first access, not by ``import asynchub``
#: (``None``: the name is the module itself). The async core pulls in asyncio, anyio and the
#: transfer engine, progress bars pull in tqdm, prefetch results are only needed by
#: ``prefetch``; a script whose models are cached needs none of them (the sync API serves a
#: cached model without starting its event loop), so ``import asynchub`` costs little more
#: than ``import onnx``.
_LAZY: dict[str, tuple[str, str | None]] = {
    "AsyncHub": ("._hub.client", "AsyncHub"),
    "PrefetchItem": ("._onnx.prefetch", "PrefetchItem"),
    "PrefetchResult": ("._onnx.prefetch", "PrefetchResult"),
    "ProgressBars": ("._progress.bars", "ProgressBars"),
    "hub": (".hub", None),
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
    "prefetch",
    "set_dir",
]
