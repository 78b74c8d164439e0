"""The seam for sources of models: what a hub format provides, and what the hub gives it.

A *source* is a format of model hub: the ONNX Model Hub (a manifest per repo) and MindSpore
Hub (one asset card per model) are the two built in. Each is described by a
:class:`SourceSpec` and registered in :mod:`.registry`; the hub, prefetch, the cache
administration and the CLI only use these types and never name a concrete source.

A source provides:

* ``open(host)``: its per-hub object (a :class:`Source`), which resolves a *selection* (a
  model name, a uid: whatever names a model in that format) to :class:`FileJob` s with URLs,
  expected size and SHA-256 and the cache path. The host (:class:`SourceHost`, i.e. the
  ``AsyncHub``) gives it the config, the cached-document fetcher (ETag revalidation, offline
  use), worker threads, and the hub's one engine for the files;
* ``cache_namespace``: the top-level folder of the cache it owns (``""`` is the root, the
  onnx.hub layout); ``documents``: where below the root its cached documents live;
* ``references(root)``: which cached files its cached documents name, for ``cache ls``
  (labels), ``cache verify`` and ``cache prune`` (files no document names); ``None`` when it
  cannot tell, and then prune keeps its files;
* ``add_cli(subparsers)`` (optional): its own sub-commands of the ``asynchub`` command.

Everything a spec holds is cheap to import: heavy modules are imported by ``open`` and the
CLI handlers, so listing the sources costs nothing at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import argparse

    from .._cache.admin import FileRef
    from .._config import HubConfig
    from .._engine.engine import FileJob
    from .._exceptions import HubError

__all__ = ["Source", "SourceHost", "SourceSpec"]


class SourceHost(Protocol):
    """What the hub offers a source (:class:`~asynchub.AsyncHub` implements it)."""

    @property
    def config(self) -> HubConfig: ...

    async def fetch_document(
        self,
        url: str,
        cache_file: Path,
        *,
        what: str,
        immutable: bool = False,
        validate: Callable[[bytes], object] | None = None,
    ) -> bytes:
        """A small document cached on disk, revalidated by ETag, usable offline; a new body
        replaces the cached copy only if ``validate`` accepts it."""
        ...

    async def fetch_files(
        self, jobs: Sequence[FileJob], *, force: bool = False
    ) -> list[Path | HubError]:
        """Files through the hub's one engine; per job its verified path or its error."""
        ...

    async def run_blocking(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` in one of the hub's worker threads."""
        ...


class Source(Protocol):
    """A source opened on one hub."""

    async def resolve(self, selection: str, *, force: bool = False) -> list[FileJob]:
        """The files of ``selection`` (a name in this source's terms), each with its URLs,
        expected size (``None``: unknown), SHA-256 and cache path. ``force`` revalidates the
        documents it reads. Raises a :class:`~asynchub.HubError` naming what is wrong."""
        ...


@dataclass(frozen=True)
class SourceSpec:
    """A registered source (see the module docstring)."""

    #: Short name: the key in the registry and the hub (``hub.source(name)``).
    name: str
    #: Top-level cache folder the source owns; ``""`` is the root (the onnx.hub layout).
    cache_namespace: str
    #: Folder (relative to the cache root) of its cached documents.
    documents: str
    #: Its per-hub object.
    open: Callable[[SourceHost], Source]
    #: The cached files its cached documents name (blocking); ``None``: cannot tell.
    references: Callable[[Path], Mapping[Path, FileRef] | None]
    #: Registers its sub-commands on the ``asynchub`` parser (optional).
    add_cli: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] | None = None
