"""Where MindSpore Hub cards and assets come from, and where they go in the cache.

* Card URL: ``config.mindspore_card_url`` with ``{uid}`` replaced (default: the raw file in
  ``mindspore-ai/hub`` on GitHub; ``ASYNCHUB_MINDSPORE_CARD_URL`` points it at any server with
  the same layout). The uid is validated first, so it cannot change the URL's host or query.
* Card cache: ``<cache_dir>/mindspore/_cards/<uid>.md``, fetched with the hub's document
  fetcher: revalidated by ETag on each first use in a hub, used as is offline, kept when the
  network fails. A card is parsed (and so validated) before anything is downloaded from it.
* Asset cache: ``<cache_dir>/mindspore/<uid>/<sha256>_<file name>``, the same
  ``<sha>_<name>`` layout as the ONNX files, written only by the engine after verification.
* A local checkout (``cards_dir``): the clone's root (holding ``mshub_res/assets``) or the
  ``assets`` folder itself; every ``*.md`` below it except ``README*.md`` is a card, its uid is
  its path without ``.md``. Symbolic links are not followed. Listing 2,915 cards takes ~0.5 s.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .._cache.layout import MAX_BASENAME_BYTES, cache_path, ensure_dir
from .._engine.engine import FileJob
from .._exceptions import (
    ConfigError,
    HTTPStatusError,
    HubError,
    IntegrityError,
    ManifestError,
    ModelNotFoundError,
)
from .._hosts import refuse_public_to_private
from ._card import Asset, AssetCard, normalize_uid, parse_card

if TYPE_CHECKING:
    from .._cache.admin import FileRef
    from .._hub.source import SourceHost

__all__ = [
    "asset_job",
    "check_links",
    "cached_references",
    "card_jobs",
    "card_cache_file",
    "card_url",
    "fetch_card",
    "find_card_files",
    "load_local_cards",
]

CARDS_FOLDER = "_cards"
ROOT_FOLDER = "mindspore"
#: Cards of one hub, parsed once per (uid, URL) and kept while the hub lives.
_memo: weakref.WeakKeyDictionary[SourceHost, dict[tuple[str, str], AssetCard]] = (
    weakref.WeakKeyDictionary()
)
log = logging.getLogger("asynchub")


def card_url(template: str, uid: str) -> str:
    """The card URL for ``uid`` (already normalized) from a ``{uid}`` template."""
    if "{uid}" not in template:
        raise ConfigError(
            f"the MindSpore card URL template {template!r} has no {{uid}}; set "
            "ASYNCHUB_MINDSPORE_CARD_URL to e.g. https://host/mshub_res/assets/{uid}.md"
        )
    return template.replace("{uid}", uid)


def card_cache_file(cache_dir: Path, uid: str) -> Path:
    """``<cache_dir>/mindspore/_cards/<uid>.md``."""
    return cache_dir.joinpath(ROOT_FOLDER, CARDS_FOLDER, *f"{uid}.md".split("/"))


async def fetch_card(hub: SourceHost, uid: str, *, refresh: bool = False) -> AssetCard:
    """The parsed card of ``uid`` (a uid or card URL) through ``hub``'s document cache.

    A card the server does not have (404/410) raises :class:`~asynchub.ModelNotFoundError`;
    offline without a cached copy raises :class:`~asynchub.OfflineError`.
    """
    uid = normalize_uid(uid)
    url = card_url(hub.config.mindspore_card_url, uid)
    memo = _memo.setdefault(hub, {})
    if not refresh and (uid, url) in memo:
        return memo[(uid, url)]
    cache_file = card_cache_file(hub.config.cache_dir, uid)
    await hub.run_blocking(ensure_dir, hub.config.cache_dir, cache_file.parent)
    try:
        data = await hub.fetch_document(
            url,
            cache_file,
            what=f"MindSpore Hub card {uid}",
            validate=lambda body: parse_card(body, uid),
        )
    except HTTPStatusError as exc:
        if exc.status in (404, 410):
            raise ModelNotFoundError(
                f"No MindSpore Hub card found for {uid!r} ({url} answered {exc.status}); "
                "check the uid (e.g. mindspore/1.10/alexnet_cifar10) or the card URL template"
            ) from exc
        raise
    card: AssetCard = await hub.run_blocking(parse_card, data, uid)
    memo[(uid, url)] = card
    return card


def asset_job(cache_dir: Path, card: AssetCard, asset: Asset) -> FileJob:
    """The engine job of one asset; an asset without a full SHA-256 is refused."""
    if asset.sha256 is None:
        given = (
            f"only the short digest {asset.sha256_prefix!r}"
            if asset.sha256_prefix
            else "no asset-sha256"
        )
        raise IntegrityError(
            f"MindSpore Hub card {card.uid!r} gives {given} for {asset.filename}; asynchub only "
            "caches files it can verify against a full SHA-256 (ask the publisher to add it)"
        )
    if len(asset.filename.encode("utf-8", "surrogatepass")) > MAX_BASENAME_BYTES:
        raise ManifestError(
            f"MindSpore Hub card {card.uid!r}: the file name {asset.filename[:60]!r} is too"
            f" long to cache (at most {MAX_BASENAME_BYTES} UTF-8 bytes, stored as"
            " '<sha256>_<name>' with temporaries beside it); download it with another tool"
        )
    rel = f"{ROOT_FOLDER}/{card.uid}/{asset.filename}"
    return FileJob(
        name=rel,
        urls=(asset.url,),
        sha256=asset.sha256,
        size=None,
        dest=cache_path(cache_dir, rel, asset.sha256),
    )


def _assets_root(cards_dir: Path) -> Path:
    nested = cards_dir / "mshub_res" / "assets"
    return nested if nested.is_dir() else cards_dir


def find_card_files(cards_dir: Path) -> Iterator[tuple[str, Path]]:
    """``(uid, path)`` of every card below a checkout, in sorted uid order."""
    root = _assets_root(Path(cards_dir).expanduser())
    if not root.is_dir():
        raise ConfigError(f"{cards_dir} is not a directory of MindSpore Hub cards")
    found: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        base = Path(folder)
        for name in files:
            path = base / name
            if not name.endswith(".md") or name.upper().startswith("README"):
                continue
            if path.is_symlink() or not path.is_file():
                continue
            found.append((path.relative_to(root).with_suffix("").as_posix(), path))
    found.sort()
    return iter(found)


def load_local_cards(cards_dir: Path) -> list[AssetCard]:
    """Parse every card of a checkout (blocking; run it in a worker thread). A card that
    fails validation raises :class:`~asynchub.ManifestError` naming it."""
    return [parse_card(path.read_bytes(), uid) for uid, path in find_card_files(cards_dir)]


async def check_links(host: SourceHost, card: AssetCard) -> None:
    """Refuse a card served by a public host whose asset links point at a local or private
    address (:mod:`asynchub._hosts`): the card could make the client call services on the
    user's machine or network."""
    url = card_url(host.config.mindspore_card_url, card.uid)
    for asset in card.assets:
        await refuse_public_to_private(host.config.private_host, url, asset.url, how="links")


async def card_jobs(host: SourceHost, uid: str, *, refresh: bool = False) -> list[FileJob]:
    """The engine jobs of every asset of ``uid``'s card (refused as a whole when an asset has
    no full SHA-256, or links a local address although the card came from a public host:
    nothing of a card is fetched half-verified)."""
    card = await fetch_card(host, uid, refresh=refresh)
    await check_links(host, card)
    return [asset_job(host.config.cache_dir, card, asset) for asset in card.assets]


def cached_references(root: Path) -> dict[Path, FileRef] | None:
    """The asset paths named by the cards cached under ``<root>/mindspore/_cards`` (blocking);
    ``None`` when no card is cached (then prune keeps every asset)."""
    from .._cache.admin import FileRef

    cards = root / ROOT_FOLDER / CARDS_FOLDER
    if not cards.is_dir():
        return None
    refs: dict[Path, FileRef] = {}
    for path in sorted(cards.rglob("*.md")):
        uid = path.relative_to(cards).with_suffix("").as_posix()
        try:
            card = parse_card(path.read_bytes(), uid)
        except (OSError, HubError) as exc:
            log.warning("skipping the unreadable cached card %s: %s", path, exc)
            continue
        for asset in card.assets:
            if asset.sha256 is not None:
                refs[asset_job(root, card, asset).dest] = FileRef(card.uid, None, "asset")
    return refs or None
