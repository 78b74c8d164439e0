"""The warm path: find a model that is already in the cache, with no request and no event loop.

A warm ``load`` needs only the manifest cached on disk (every successful fetch writes it) and
the file it names. This module does that lookup with plain file reads, and imports nothing
heavy (no aiohttp, asyncio or anyio), so the sync API can serve a cached model in the caller's
thread before it ever starts its event loop thread, and a script whose models are cached pays
for ``onnx`` and little else. :meth:`AsyncHub._resolve` uses the same lookup.

Choices:

* **Parsed once per version of the file.** The cached manifest is parsed on first use and
  kept with its inode, size and modification time; it is parsed again only when another
  process (or a later fetch) replaced it. One ``stat`` per call instead of a parse (~1 ms for
  the real 184-entry manifest). A big manifest is not parsed at all once indexed: see
  :mod:`.index` (a lookup reads one bucket of the index and the entries of one name).
* **A hit only names a candidate.** :func:`cached_entry` returns the entry when its file
  exists; callers still verify the file (size and SHA-256) before using it, and fall back to
  the full path (revalidate the manifest, download) on any miss.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .._cache.layout import cache_path
from .._config import HubConfig
from .._exceptions import ManifestError, ModelNotFoundError, OpsetNotFoundError
from .index import ManifestView
from .manifest import ModelInfo
from .urls import RepoSpec

__all__ = ["MANIFEST_NAME", "ManifestMemo", "cached_entry", "manifest_cache_file"]

MANIFEST_NAME = "ONNX_HUB_MANIFEST.json"


def manifest_cache_file(config: HubConfig, spec: RepoSpec) -> Path:
    """Where the manifest of ``spec`` is cached: ``<cache>/_manifests/<owner>/<name>/<ref>/``."""
    return config.cache_dir.joinpath(
        "_manifests", spec.owner, spec.name, *spec.ref.split("/"), MANIFEST_NAME
    )


class ManifestMemo:
    """Views of cached manifests, keyed by path and checked against the file's identity."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: dict[Path, tuple[tuple[int, int, int], ManifestView]] = {}

    def view(self, path: Path) -> ManifestView | None:
        """The manifest cached at ``path``; ``None`` if it is missing or invalid."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._views.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        try:
            view = ManifestView.from_file(path, source=str(path))
        except (OSError, ManifestError):
            return None
        with self._lock:
            self._views[path] = (stamp, view)
        return view

    def entries(self, path: Path) -> list[ModelInfo] | None:
        """Every entry of the manifest cached at ``path`` (a full parse); ``None`` as above."""
        view = self.view(path)
        try:
            return None if view is None else view.entries()
        except (OSError, ManifestError):
            return None


def cached_entry(
    config: HubConfig,
    memo: ManifestMemo,
    model: str,
    spec: RepoSpec,
    opset: int | None,
    *,
    test_data: bool = False,
    view: ManifestView | None = None,
) -> ModelInfo | None:
    """The manifest entry for ``model`` when its file (or its test-data archive, with
    ``test_data``) is in the cache; ``None`` otherwise.

    ``view`` is a manifest already in memory (fetched by this hub); without it the manifest
    cached on disk is used.
    """
    if view is None:
        view = memo.view(manifest_cache_file(config, spec))
        if view is None:
            return None
    try:
        info = view.select(model, opset)
    except (ModelNotFoundError, OpsetNotFoundError, ManifestError, OSError):
        return None
    path, sha = (
        (info.model_with_data_path, info.model_with_data_sha)
        if test_data
        else (info.model_path, info.model_sha)
    )
    if not path or not sha:
        return None
    if not cache_path(config.cache_dir, path, sha.lower()).is_file():
        return None
    return info
