"""MindSpore Hub as a second source of asynchub.

MindSpore Hub publishes one Markdown "asset card" per model (``mshub_res/assets/<uid>.md`` in
``mindspore-ai/hub``) whose front matter lists the model's metadata and its files with their
SHA-256. This package reads those cards and downloads the listed files with asynchub's engine,
cache and verification; building a MindSpore network from them needs MindSpore itself::

    from asynchub import mindspore as ms

    card = ms.info("mindspore/1.10/alexnet_cifar10")
    [ckpt] = ms.download_weights("mindspore/1.10/alexnet_cifar10")
"""

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
