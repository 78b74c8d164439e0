"""MindSpore Hub API: ``info``, ``download_weights``, ``list_models``, ``prefetch`` and their
``a``-prefixed async twins.

Async functions use the default :class:`~asynchub.AsyncHub` (or the ``hub`` given); sync
functions run the same coroutines on the default :class:`~asynchub.Hub`'s loop thread (or the
``hub`` given), so they also work inside a running event loop. Choices:

* A uid may be given as a card URL, as ``mindspore_hub.load`` accepts; the uid is taken
  from it and the card is fetched from the configured source (``mindspore_card_url``), so a
  URL never makes asynchub talk to a host it was not configured for.
* ``download_weights`` returns the verified paths of ALL the card's assets (in card order), or
  of those with ``file_format`` (e.g. ``"ckpt"``). It refuses, before downloading anything, a
  card whose selected assets lack a full SHA-256 (:class:`~asynchub.IntegrityError`) and a
  card that lists no assets (:class:`~asynchub.ManifestError`).
* ``force_reload=True`` revalidates the card and downloads the files again.
* ``list_models`` fetches the given uids' cards concurrently (first error wins), or parses a
  local checkout of the hub (``cards_dir``) without any network. Filters combine with AND:
  ``version`` equals ``mindspore-version``; ``module_type`` matches ignoring case, ``"cv"``
  also matching ``"cv-classification"``; ``dataset`` equals ``train-dataset`` ignoring case;
  ``text`` is a case-insensitive substring of the uid, model name, backbone or summary.
* ``prefetch`` fetches every selected card's assets under the hub's one connection budget;
  each uid gets its own result and one failure does not cancel the others.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio

from .._exceptions import (
    ConfigError,
    HubError,
    IntegrityError,
    ManifestError,
    MirrorsExhaustedError,
)
from .._hub.client import AsyncHub
from .._hub.defaults import default_async_hub
from ._card import AssetCard, normalize_uid
from ._source import asset_job, check_links, fetch_card, load_local_cards

if TYPE_CHECKING:
    from .._hub.sync import Hub

__all__ = [
    "MindSporePrefetchResult",
    "adownload_weights",
    "ainfo",
    "alist_models",
    "aprefetch",
    "download_weights",
    "info",
    "list_models",
    "prefetch",
]

T = TypeVar("T")
R = TypeVar("R")
#: Cards fetched at once by ``list_models`` (small documents).
CARD_CONCURRENCY = 16
#: Cards handled at once by ``prefetch``; their files share the engine's connection budget
#: (``max_connections``), which is what really bounds the network.
PREFETCH_CONCURRENCY = 64

UidOrCard = str | AssetCard


@dataclass
class MindSporePrefetchResult:
    """Per-uid outcome of :func:`aprefetch`: ``ok[uid]`` the verified paths, ``failed[uid]``
    the error. ``bool(result)`` is true when nothing failed."""

    ok: dict[str, list[Path]] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return not self.failed


def _hub(hub: AsyncHub | None) -> AsyncHub:
    return hub if hub is not None else default_async_hub()


async def ainfo(uid: str, *, hub: AsyncHub | None = None) -> AssetCard:
    """The validated card of ``uid`` (a uid like ``mindspore/1.10/alexnet_cifar10`` or a
    card URL); nothing but the card is downloaded."""
    return await fetch_card(_hub(hub), uid)


async def _download_card(
    hub: AsyncHub, card: AssetCard, force_reload: bool, file_format: str | None
) -> list[Path]:
    assets = [a for a in card.assets if file_format is None or a.file_format == file_format]
    if not assets:
        what = f"no {file_format!r} asset" if file_format and card.assets else "no asset files"
        raise ManifestError(
            f"MindSpore Hub card {card.uid!r} lists {what} (formats: "
            f"{sorted({a.file_format for a in card.assets}) or 'none'}); nothing to download"
        )
    jobs = [asset_job(hub.config.cache_dir, card, asset) for asset in assets]
    results = await hub.fetch_files(jobs, force=force_reload)
    paths: list[Path] = []
    for result in results:
        if isinstance(result, BaseException):
            raise _integrity(result)
        paths.append(result)
    return paths


def _integrity(exc: BaseException) -> BaseException:
    """When every source served bytes with the wrong digest, the error is the card's
    integrity (:class:`~asynchub.IntegrityError`), not the network's."""
    if isinstance(exc, MirrorsExhaustedError) and exc.errors:
        causes = [error for _, error in exc.errors]
        if all(isinstance(error, IntegrityError) for error in causes):
            return causes[-1]
    return exc


async def adownload_weights(
    uid: str | AssetCard,
    force_reload: bool = False,
    *,
    file_format: str | None = None,
    hub: AsyncHub | None = None,
) -> list[Path]:
    """Download (if needed) and verify the card's asset files; their cache paths
    ``<get_dir()>/mindspore/<uid>/<sha256>_<file>`` in card order."""
    hub = _hub(hub)
    if isinstance(uid, AssetCard):
        card = uid
    else:
        card = await fetch_card(hub, uid, refresh=force_reload)
        await check_links(hub, card)
    fmt = file_format.lstrip(".").lower() if file_format else None
    return await _download_card(hub, card, force_reload, fmt)


def _matches(
    card: AssetCard,
    version: str | None,
    module_type: str | None,
    dataset: str | None,
    text: str | None,
) -> bool:
    if version is not None and (card.mindspore_version or "") != version:
        return False
    if module_type is not None:
        wanted, have = module_type.lower(), (card.module_type or "").lower()
        if have != wanted and not have.startswith(wanted + "-"):
            return False
    if dataset is not None and (card.train_dataset or "").lower() != dataset.lower():
        return False
    if text is not None:
        needle = text.lower()
        fields = (card.uid, card.model_name, card.backbone_name or "", card.summary or "")
        if not any(needle in value.lower() for value in fields):
            return False
    return True


async def _gather(
    items: Sequence[T], func: Callable[[T], Awaitable[R]], limit: int
) -> list[R | Exception]:
    """``func`` over ``items`` concurrently (at most ``limit`` at once); per-item results,
    an ``Exception`` in place of a result that failed."""
    results: list[R | Exception] = [ManifestError("not run")] * len(items)
    limiter = anyio.CapacityLimiter(limit)

    async def _run(index: int) -> None:
        async with limiter:
            try:
                results[index] = await func(items[index])
            except Exception as exc:
                results[index] = exc

    async with anyio.create_task_group() as tg:
        for index in range(len(items)):
            tg.start_soon(_run, index)
    return results


async def alist_models(
    uids: Iterable[str] | None = None,
    *,
    cards_dir: str | Path | None = None,
    version: str | None = None,
    module_type: str | None = None,
    dataset: str | None = None,
    text: str | None = None,
    hub: AsyncHub | None = None,
) -> list[AssetCard]:
    """Cards of the given ``uids`` (fetched) or of a local checkout ``cards_dir`` (parsed,
    offline), filtered; in the order given (uids) or sorted by uid (checkout)."""
    hub = _hub(hub)
    if (uids is None) == (cards_dir is None):
        raise ConfigError(
            "list_models needs either uids (a list of MindSpore Hub uids) or cards_dir (a local "
            "checkout of mindspore-ai/hub); the hub has no index to list without one of them"
        )
    if cards_dir is not None:
        cards: list[AssetCard] = await hub.run_blocking(load_local_cards, Path(cards_dir))
    else:
        results = await _gather(
            list(uids or ()), functools.partial(fetch_card, hub), CARD_CONCURRENCY
        )
        cards = []
        for result in results:
            if isinstance(result, Exception):
                raise result
            cards.append(result)
    return [c for c in cards if _matches(c, version, module_type, dataset, text)]


async def aprefetch(
    uids: Iterable[UidOrCard],
    *,
    force_reload: bool = False,
    file_format: str | None = None,
    hub: AsyncHub | None = None,
) -> MindSporePrefetchResult:
    """Fetch the assets of many cards (uids, card URLs or cards from :func:`alist_models`)
    under one connection budget; per-uid results, failures do not cancel the others."""
    hub = _hub(hub)
    items = list(uids)

    async def _one(item: UidOrCard) -> list[Path]:
        return await adownload_weights(item, force_reload, file_format=file_format, hub=hub)

    results = await _gather(items, _one, PREFETCH_CONCURRENCY)
    outcome = MindSporePrefetchResult()
    for item, result in zip(items, results, strict=True):
        key = _key(item)
        if isinstance(result, Exception):
            outcome.failed[key] = result
        else:
            outcome.ok[key] = result
    return outcome


def _key(item: UidOrCard) -> str:
    if isinstance(item, AssetCard):
        return item.uid
    try:
        return normalize_uid(item)
    except HubError:
        return str(item)


# --------------------------------------------------------------------------- sync twins


def _run(hub: Hub | None, make: Callable[[AsyncHub], Awaitable[T]]) -> T:
    from .._hub.defaults import default_hub

    sync_hub = hub if hub is not None else default_hub()

    async def _call() -> T:
        return await make(sync_hub.async_hub)

    return sync_hub.run(_call())


def info(uid: str, *, hub: Hub | None = None) -> AssetCard:
    """Sync :func:`ainfo`."""
    return _run(hub, lambda h: ainfo(uid, hub=h))


def download_weights(
    uid: str | AssetCard,
    force_reload: bool = False,
    *,
    file_format: str | None = None,
    hub: Hub | None = None,
) -> list[Path]:
    """Sync :func:`adownload_weights`."""
    return _run(hub, lambda h: adownload_weights(uid, force_reload, file_format=file_format, hub=h))


def list_models(
    uids: Iterable[str] | None = None,
    *,
    cards_dir: str | Path | None = None,
    version: str | None = None,
    module_type: str | None = None,
    dataset: str | None = None,
    text: str | None = None,
    hub: Hub | None = None,
) -> list[AssetCard]:
    """Sync :func:`alist_models`."""
    return _run(
        hub,
        lambda h: alist_models(
            uids,
            cards_dir=cards_dir,
            version=version,
            module_type=module_type,
            dataset=dataset,
            text=text,
            hub=h,
        ),
    )


def prefetch(
    uids: Iterable[UidOrCard],
    *,
    force_reload: bool = False,
    file_format: str | None = None,
    hub: Hub | None = None,
) -> MindSporePrefetchResult:
    """Sync :func:`aprefetch`."""
    return _run(
        hub,
        lambda h: aprefetch(uids, force_reload=force_reload, file_format=file_format, hub=h),
    )
