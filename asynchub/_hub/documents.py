"""Small documents (manifests, asset cards) cached on disk and revalidated with ETags.

A document is stored at ``cache_file`` with a sidecar ``cache_file.meta.json`` holding the URL
it came from, its ``ETag`` and ``Last-Modified``. Rules:

* ``immutable=True`` (a manifest at a 40-hex commit): a cached copy is used without asking.
* offline: the cached copy, else :class:`OfflineError`.
* online: ``GET`` with ``If-None-Match`` / ``If-Modified-Since`` when the cached copy came from
  the same URL; ``304`` keeps the copy, ``200`` replaces it atomically.
* the network fails (connection, 5xx after retries) and a copy exists: the copy is used and a
  warning is logged, so a flaky network never breaks a warm cache.
* ``404``/``410``: :class:`HTTPStatusError` (a missing document is not papered over).
* a cache directory on the way that is a symbolic link (or not a directory) is refused, as
  everywhere in the cache: the document is used but not cached, and a warning says why.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .._cache.layout import ensure_dir
from .._config import HubConfig
from .._engine.retry import Retrier, retry_call, status_failure
from .._exceptions import HTTPStatusError, OfflineError, ProtocolError, TransferError
from .._transport.base import Transport

__all__ = ["MAX_DOCUMENT_BYTES", "fetch_document"]

log = logging.getLogger("asynchub")

#: Largest document accepted (the real ONNX manifest is ~0.5 MB).
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024


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


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _store(cache_file: Path, body: bytes, meta: dict[str, Any], root: Path) -> None:
    try:
        if cache_file.parent.is_relative_to(root):
            ensure_dir(root, cache_file.parent)  # refuses planted links on the way
        _atomic_write(cache_file, body)
        _atomic_write(_meta_path(cache_file), json.dumps(meta).encode())
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
) -> bytes:
    """The document at ``url``, cached at ``cache_file`` (see the module docstring); retry
    waits go through ``sleep`` (the hub's injected one)."""
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
    try:
        status, body, meta = await _get_with_retries(transport, config, url, headers, sleep)
    except HTTPStatusError as exc:
        if exc.status in (404, 410) or cached is None:
            raise
        log.warning("could not revalidate the %s (%s); using the cached copy", what, exc)
        return cached.body
    except TransferError as exc:
        if cached is None:
            raise
        log.warning("could not revalidate the %s (%s); using the cached copy", what, exc)
        return cached.body
    if status == 304:
        if cached is None:
            raise ProtocolError(f"GET {url} answered 304 to an unconditional request", url=url)
        log.debug("%s not modified: %s", what, url)
        return cached.body
    await anyio.to_thread.run_sync(_store, cache_file, body, meta, config.cache_dir)
    return body


async def _get_with_retries(
    transport: Transport,
    config: HubConfig,
    url: str,
    headers: dict[str, str],
    sleep: Callable[[float], Awaitable[None]],
) -> tuple[int, bytes, dict[str, Any]]:
    async def once() -> tuple[int, bytes, dict[str, Any]]:
        async with transport.request(url, headers=headers) as response:
            if response.status == 304:
                return 304, b"", {}
            if response.status != 200:
                raise status_failure(response.status, response.headers, url, "GET")
            body = await response.read(MAX_DOCUMENT_BYTES)
            meta = {
                "url": url,
                "etag": response.headers.get("ETag"),
                "last_modified": response.headers.get("Last-Modified"),
            }
            return 200, body, meta

    return await retry_call(once, Retrier(config.retry, sleep, url))
