"""The ONNX manifests cached on disk, and the cache files they reference.

``cache ls`` labels files with the model and opset a cached manifest gives them, and ``cache
prune`` removes files that no cached manifest names: both read every manifest cached under
``<root>/_manifests/<owner>/<repo>/<ref>/ONNX_HUB_MANIFEST.json`` through :func:`references`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from .._cache.admin import FileRef
from .._cache.layout import cache_path
from .._exceptions import CacheError, ManifestError
from .manifest import ModelInfo, parse_manifest
from .warm import MANIFEST_NAME

__all__ = ["MANIFESTS_DIR", "cached_manifests", "references"]

log = logging.getLogger("asynchub")

MANIFESTS_DIR = "_manifests"


def cached_manifests(root: Path) -> list[tuple[str, list[ModelInfo]]]:
    """Every manifest cached under ``root/_manifests`` as ``(repo, entries)``; unreadable
    ones are skipped with a warning."""
    base = root / MANIFESTS_DIR
    found: list[tuple[str, list[ModelInfo]]] = []
    if not base.is_dir():
        return found
    for path in sorted(base.rglob(MANIFEST_NAME)):
        parts = path.relative_to(base).parts[:-1]
        repo = f"{parts[0]}/{parts[1]}:{'/'.join(parts[2:]) or 'main'}" if len(parts) >= 2 else "?"
        try:
            found.append((repo, parse_manifest(path.read_bytes(), source=str(path))))
        except (OSError, ManifestError) as exc:
            log.warning("skipping the unreadable cached manifest %s: %s", path, exc)
    return found


def references(root: Path) -> dict[Path, FileRef]:
    """Every cache path a cached manifest names (model files and test-data archives)."""
    refs: dict[Path, FileRef] = {}
    for _, entries in cached_manifests(root):
        for e in entries:
            with contextlib.suppress(CacheError):
                if e.model_sha:
                    refs[cache_path(root, e.model_path, e.model_sha)] = FileRef(
                        e.model, e.opset, "model"
                    )
                if e.model_with_data_path and e.model_with_data_sha:
                    dest = cache_path(root, e.model_with_data_path, e.model_with_data_sha)
                    refs[dest] = FileRef(e.model, e.opset, "test_data")
    return refs
