"""MindSpore Hub as a second source of asynchub.

MindSpore Hub publishes one Markdown "asset card" per model (``mshub_res/assets/<uid>.md`` in
``mindspore-ai/hub``) whose front matter lists the model's metadata and its files with their
SHA-256. This package reads those cards and downloads the listed files with asynchub's engine,
cache and verification; building a MindSpore network from them needs MindSpore itself::

    from asynchub import mindspore as ms

    card = ms.info("mindspore/1.10/alexnet_cifar10")
    [ckpt] = ms.download_weights("mindspore/1.10/alexnet_cifar10")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._api import (
        MindSporePrefetchResult,
        adownload_weights,
        ainfo,
        alist_models,
        aprefetch,
        download_weights,
        info,
        list_models,
        prefetch,
    )
    from ._card import Asset, AssetCard, normalize_uid, parse_card

#: Public names and their modules, imported on first access: the API module pulls in the
#: async core (asyncio, anyio, the engine), which the card parser and the CLI's ``--help``
#: (which registers the ``mindspore`` commands) do not need.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("Asset", "AssetCard", "normalize_uid", "parse_card"), "._card"),
    **dict.fromkeys(
        (
            "MindSporePrefetchResult",
            "adownload_weights",
            "ainfo",
            "alist_models",
            "aprefetch",
            "download_weights",
            "info",
            "list_models",
            "prefetch",
        ),
        "._api",
    ),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'asynchub.mindspore' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Asset",
    "AssetCard",
    "MindSporePrefetchResult",
    "adownload_weights",
    "ainfo",
    "alist_models",
    "aprefetch",
    "download_weights",
    "info",
    "list_models",
    "normalize_uid",
    "parse_card",
    "prefetch",
]
