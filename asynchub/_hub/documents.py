"""Small documents (manifests, asset cards) cached on disk and revalidated with ETags.

A document is stored at ``cache_file`` with a sidecar ``cache_file.meta.json`` holding the URL
it came from, its ``ETag`` and ``Last-Modified``. Rules:

* ``immutable=True`` (a manifest at a 40-hex commit): a cached copy is used without asking.
* offline: the cached copy, else :class:`OfflineError`.
* online: ``GET`` with ``If-None-Match`` / ``If-Modified-Since`` when the cached copy came from
  the same URL; ``304`` keeps the copy, ``200`` replaces it atomically, but only once the
  caller's ``validate`` accepted the new body: a bad ``200`` (an HTML error page, a truncated
  close-delimited body, JSON that fails validation) never replaces a good copy.
* the request is watched like every file range (:mod:`asynchub._engine.watchdog`): the head
  must arrive within ``stall_timeout``, the body must keep ``min_rate`` over ``rate_window``,
  so a slow-but-alive server cannot hold a document forever.
* a copy exists and revalidation fails in any way (connection, stall, 5xx, ``429``/``503``
  with ``Retry-After``, a body that fails validation): the copy is used at once, with a
  warning: one try, no back-off and no ``Retry-After`` wait, so a flaky or throttling server
  never delays (or breaks) a warm cache. Without a copy, the retry policy applies.
* ``404``/``410``: :class:`HTTPStatusError` (a missing document is not papered over).
* a cache directory on the way that is a symbolic link (or not a directory) is refused, as
  everywhere in the cache: the document is used but not cached, and a warning says why.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .._cache.layout import ensure_dir
from .._cache.locks import owner_tag, remove_abandoned_temps
from .._config import HubConfig
from .._engine.retry import Retrier, RetryPolicy, retry_call, status_failure
from .._engine.watchdog import Watched, run_watched
from .._exceptions import (
    HTTPStatusError,
    HubError,
    ManifestError,
    OfflineError,
    ProtocolError,
    TransferError,
)
from .._transport.base import Response, Transport

__all__ = ["MAX_DOCUMENT_BYTES", "fetch_document"]

log = logging.getLogger("asynchub")

#: Largest document accepted (the real ONNX manifest is ~0.5 MB).
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
READ_PIECE = 1024 * 1024


@dataclass(frozen=True)
class _Cached:
    body: bytes
    meta: dict[str, Any]


def _meta_path(cache_file: Path) -> Path:
    return cache_file.with_name(cache_file.name + ".meta.json")


def _read_cached(cache_file: Path) -> _Cached | None:
    try:
        body = cache_file.read_bytes()
    except OSError:
        return None
    try:
        meta = json.loads(_meta_path(cache_file).read_text("utf-8"))
        if not isinstance(meta, dict):
            meta = {}
    except (OSError, ValueError):
        meta = {}
    return _Cached(body, meta)


def _atomic_write(path: Path, data: bytes, host: str) -> None:
    """Write ``data`` to ``path`` atomically. The temporary ``.<name>.<host>-<pid>-<hex>.tmp``
    is created with mode 0666 minus the umask (``tempfile.mkstemp`` would force 0600, locking
    a group-shared cache's other users out of offline use) and tells its writer, so the one a
    killed process left is removed (:mod:`asynchub._cache.locks`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{owner_tag(host)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _store(
    cache_file: Path, body: bytes, meta: dict[str, Any], root: Path, config: HubConfig
) -> None:
    try:
        if cache_file.parent.is_relative_to(root):
            ensure_dir(root, cache_file.parent)  # refuses planted links on the way
        _atomic_write(cache_file, body, config.host_id)
        _atomic_write(_meta_path(cache_file), json.dumps(meta).encode(), config.host_id)
        remove_abandoned_temps(
            cache_file.parent, host=config.host_id, stale_after=2 * config.lock_lease
        )
    except OSError as exc:
        log.warning("could not cache %s at %s: %s", meta.get("url"), cache_file, exc)


async def fetch_document(
    transport: Transport,
    config: HubConfig,
    url: str,
    cache_file: Path,
    *,
    what: str,
    immutable: bool = False,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    clock: Callable[[], float] = time.monotonic,
    validate: Callable[[bytes], object] | None = None,
) -> bytes:
    """The document at ``url``, cached at ``cache_file`` (see the module docstring); retry
    waits go through ``sleep`` and the watchdog measures with ``clock`` (the hub's injected
    ones). ``validate`` (blocking, run in a worker thread) raises a :class:`HubError` for a
    document that must not replace the cached copy."""
    cached = await anyio.to_thread.run_sync(_read_cached, cache_file)
    if cached is not None and (immutable or config.offline):
        return cached.body
    if config.offline:
        raise OfflineError(
            f"offline mode is on and the {what} is not cached ({cache_file}); "
            "run once with the network (unset ASYNCHUB_OFFLINE) to cache it"
        )
    headers: dict[str, str] = {}
    if cached is not None and cached.meta.get("url") == url:
        if cached.meta.get("etag"):
            headers["If-None-Match"] = str(cached.meta["etag"])
        if cached.meta.get("last_modified"):
            headers["If-Modified-Since"] = str(cached.meta["last_modified"])
    # With a good copy at hand, revalidation gets one try: waiting (back-off, Retry-After,
    # a slow server) would only delay what the copy already answers.
    policy = config.retry if cached is None else dataclasses.replace(config.retry, attempts=0)
    try:
        status, body, meta = await _get_with_retries(
            transport, config, url, headers, policy, sleep, clock
        )
        if status == 200 and validate is not None:
            await anyio.to_thread.run_sync(validate, body)
    except HTTPStatusError as exc:
        if exc.status in (404, 410) or cached is None:
            raise
        log.warning("could not revalidate the %s (%s); using the cached copy", what, exc)
        return cached.body
    except HubError as exc:
        if cached is None or not isinstance(exc, (TransferError, ManifestError)):
            raise
        log.warning("could not revalidate the %s (%s); using the cached copy", what, exc)
        return cached.body
    if status == 304:
        if cached is None:
            raise ProtocolError(f"GET {url} answered 304 to an unconditional request", url=url)
        log.debug("%s not modified: %s", what, url)
        return cached.body
    await anyio.to_thread.run_sync(_store, cache_file, body, meta, config.cache_dir, config)
    return body


async def _get_with_retries(
    transport: Transport,
    config: HubConfig,
    url: str,
    headers: dict[str, str],
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
) -> tuple[int, bytes, dict[str, Any]]:
    async def once(watched: Watched) -> tuple[int, bytes, dict[str, Any]]:
        async with transport.request(url, headers=headers) as response:
            watched.saw(0, clock())
            if response.status == 304:
                return 304, b"", {}
            if response.status != 200:
                raise status_failure(response.status, response.headers, url, "GET")
            body = await _read_body(response, watched, clock)
            meta = {
                "url": url,
                "etag": response.headers.get("ETag"),
                "last_modified": response.headers.get("Last-Modified"),
            }
            return 200, body, meta

    async def watched_once() -> tuple[int, bytes, dict[str, Any]]:
        return await run_watched(once, config=config, url=url, sleep=sleep, clock=clock)

    return await retry_call(watched_once, Retrier(policy, sleep, url))


async def _read_body(response: Response, watched: Watched, clock: Callable[[], float]) -> bytes:
    """The whole body, at most :data:`MAX_DOCUMENT_BYTES`, each piece reported to the
    watchdog."""
    limit = MAX_DOCUMENT_BYTES
    declared = response.content_length
    if declared is not None and declared > limit:
        raise ProtocolError(
            f"{response.url} announced {declared} bytes, more than the {limit} allowed",
            url=response.url,
        )
    parts: list[bytes] = []
    total = 0
    async for data in response.iter_chunks(READ_PIECE):
        total += len(data)
        watched.saw(len(data), clock())
        if total > limit:
            raise ProtocolError(
                f"{response.url} sent more than the {limit} bytes allowed", url=response.url
            )
        parts.append(data)
    return b"".join(parts)
