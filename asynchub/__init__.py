"""asynchub: fast, safe, asynchronous downloads of pretrained models.

The successor of ``onnx.hub``: ``import asynchub as hub`` (or ``from asynchub import hub``)
and keep calling ``hub.load("resnet50")``. Every function has an ``a``-prefixed coroutine twin
(``await hub.aload(...)``). See :mod:`asynchub.hub` for the onnx.hub-compatible module and
:class:`HubConfig` for every setting.
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
from ._bars import ProgressBars
from ._client import AsyncHub
from ._config import HubConfig
from ._exceptions import (
    ArchiveError,
    CacheError,
    CompositeModelError,
    ConfigError,
    HTTPStatusError,
    HubError,
    InsufficientSpaceError,
    IntegrityError,
    ManifestError,
    ManifestNotFoundError,
    MirrorsExhaustedError,
    ModelNotFoundError,
    OfflineError,
    OpsetNotFoundError,
    ProtocolError,
    StallError,
    TransferError,
    UntrustedRepoError,
)
from ._manifest import ModelInfo
from ._prefetch import PrefetchItem, PrefetchResult
from ._progress import ProgressCallback, ProgressEvent
from ._retry import RetryPolicy
from ._sync import Hub

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "AsyncHub",
    "CacheError",
    "CompositeModelError",
    "ConfigError",
    "HTTPStatusError",
    "Hub",
    "HubConfig",
    "HubError",
    "InsufficientSpaceError",
    "IntegrityError",
    "ManifestError",
    "ManifestNotFoundError",
    "MirrorsExhaustedError",
    "ModelInfo",
    "ModelNotFoundError",
    "OfflineError",
    "OpsetNotFoundError",
    "PrefetchItem",
    "PrefetchResult",
    "ProgressBars",
    "ProgressCallback",
    "ProgressEvent",
    "ProtocolError",
    "RetryPolicy",
    "StallError",
    "TransferError",
    "UntrustedRepoError",
    "__version__",
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
    "hub",
    "list_models",
    "load",
    "load_composite_model",
    "prefetch",
    "set_dir",
]

from . import hub
