"""A third source, written only here, to show what a new hub format needs: this module.

"Plain" hubs publish ``index.json``: ``{"name": {"path": "a/b.bin", "sha256": "...",
"size": 123}}`` next to the files. The source owns the cache folder ``plain/``, keeps its
cached index under ``plain/_index/``, and adds an ``asynchub plain NAME`` command. Nothing
outside this module changes: :func:`register` hands its spec to the registry.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asynchub._cache.admin import FileRef
from asynchub._cache.layout import cache_path
from asynchub._engine.engine import FileJob
from asynchub._exceptions import ManifestError, ModelNotFoundError
from asynchub._hub.registry import register_source, unregister_source
from asynchub._hub.source import Source, SourceHost, SourceSpec

NAMESPACE = "plain"
INDEX_DIR = "_index"


class PlainSource:
    """One hub's view of the plain index at ``base_url``."""

    def __init__(self, host: SourceHost, base_url: str) -> None:
        self._host = host
        self._base = base_url.rstrip("/")

    async def _index(self, refresh: bool) -> dict[str, Any]:
        cache_file = self._host.config.cache_dir / NAMESPACE / INDEX_DIR / "index.json"
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        data = await self._host.fetch_document(
            f"{self._base}/index.json", cache_file, what="plain index"
        )
        index = json.loads(data)
        if not isinstance(index, dict):
            raise ManifestError("the plain index is not a JSON object")
        return index

    async def resolve(self, selection: str, *, force: bool = False) -> list[FileJob]:
        index = await self._index(force)
        entry = index.get(selection)
        if entry is None:
            raise ModelNotFoundError(f"No models found with name {selection}")
        rel = f"{NAMESPACE}/{entry['path']}"
        return [
            FileJob(
                name=rel,
                urls=(f"{self._base}/{entry['path']}",),
                sha256=entry["sha256"],
                size=entry["size"],
                dest=cache_path(self._host.config.cache_dir, rel, entry["sha256"]),
            )
        ]


def references(root: Path) -> Mapping[Path, FileRef] | None:
    index_file = root / NAMESPACE / INDEX_DIR / "index.json"
    if not index_file.is_file():
        return None
    index = json.loads(index_file.read_bytes())
    return {
        cache_path(root, f"{NAMESPACE}/{e['path']}", e["sha256"]): FileRef(name, None, "model")
        for name, e in index.items()
    }


def spec(base_url: str, printed: list[str]) -> SourceSpec:
    def open_source(host: SourceHost) -> Source:
        return PlainSource(host, base_url)

    def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = subparsers.add_parser("plain", help="fetch from a plain index")
        parser.add_argument("name")
        parser.set_defaults(func=lambda args: printed.append(args.name) or 0)

    return SourceSpec(
        name="plain",
        cache_namespace=NAMESPACE,
        documents=f"{NAMESPACE}/{INDEX_DIR}",
        open=open_source,
        references=references,
        add_cli=add_cli,
    )


def register(base_url: str, printed: list[str]) -> None:
    register_source(spec(base_url, printed), replace=True)


def unregister() -> None:
    unregister_source("plain")
