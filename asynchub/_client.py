"""AsyncHub: the async core. Owns the config, the HTTP transport, the engine and the manifests.

Every public operation of asynchub is a coroutine method here; the module-level async
functions call a lazily created default ``AsyncHub`` and the sync façade (:mod:`._sync`) runs
these same coroutines on a background event loop.
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import onnx

from . import _trust
from ._archive import extract_archive, find_model_dir
from ._cache import cache_path
from ._config import HubConfig
from ._documents import fetch_document
from ._exceptions import (
    HTTPStatusError,
    IntegrityError,
    ManifestNotFoundError,
    OfflineError,
    TransferError,
)
from ._manifest import ModelInfo, filter_models, parse_manifest, select
from ._progress import ProgressCallback
from ._sources import DEFAULT_REPO, RepoSpec, file_urls, is_commit_ref, manifest_url
from ._transfer import Engine, FileJob
from ._transport import Transport

if TYPE_CHECKING:
    from ._prefetch import PrefetchResult

__all__ = ["AsyncHub", "get_default_async_hub", "reset_default_async_hub"]

log = logging.getLogger("asynchub")

#: Blocking work (parsing, extraction, merging) runs in at most this many threads at once.
BLOCKING_THREADS = 4
MANIFEST_NAME = "ONNX_HUB_MANIFEST.json"


class AsyncHub:
    """The asynchronous hub client.

    ``AsyncHub(config)`` reads nothing from the environment; ``AsyncHub()`` uses
    ``HubConfig.from_env()``. Use it as ``async with AsyncHub(...) as hub:`` or call
    :meth:`aclose` when done. One instance shares one HTTP session per event loop and one
    connection budget across everything it downloads.
    """

    def __init__(
        self, config: HubConfig | None = None, *, progress: ProgressCallback | None = None
    ) -> None:
        self.config = config if config is not None else HubConfig.from_env()
        self.progress = progress
        self.transport = Transport(self.config)
        self.engine = Engine(self.config, self.transport, progress=progress)
        self._manifests: dict[tuple[str, str], list[ModelInfo]] = {}
        self._blocking = anyio.CapacityLimiter(BLOCKING_THREADS)

    # -- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> AsyncHub:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session(s). In-flight work should be awaited or cancelled first."""
        await self.transport.aclose()

    # -- cache directory -----------------------------------------------------------------
    def set_dir(self, new_dir: str | Path) -> None:
        """Use ``new_dir`` as the cache directory from now on."""
        self.config = self.config.replace(cache_dir=Path(new_dir))
        self.engine = Engine(self.config, self.transport, progress=self.progress)

    def get_dir(self) -> str:
        """The cache directory, as a string (as onnx.hub returned it)."""
        return str(self.config.cache_dir)

    # -- blocking work -------------------------------------------------------------------
    async def run_blocking(self, func: Any, *args: Any) -> Any:
        """Run ``func(*args)`` in a worker thread, bounded by the hub's thread limiter."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self._blocking)

    # -- documents and manifests ---------------------------------------------------------
    async def fetch_document(
        self, url: str, cache_file: Path, *, what: str, immutable: bool = False
    ) -> bytes:
        """A small document (manifest, card) cached on disk and revalidated by ETag."""
        return await fetch_document(
            self.transport, self.config, url, cache_file, what=what, immutable=immutable
        )

    def manifest_cache_file(self, spec: RepoSpec) -> Path:
        return self.config.cache_dir.joinpath(
            "_manifests", spec.owner, spec.name, *spec.ref.split("/"), MANIFEST_NAME
        )

    async def manifest(self, repo: str = DEFAULT_REPO) -> list[ModelInfo]:
        """The parsed manifest of ``repo`` (fetched once per hub, then revalidated on disk)."""
        spec = RepoSpec.parse(repo)
        url = manifest_url(self.config, spec)
        key = (str(spec), url)
        cached = self._manifests.get(key)
        if cached is not None:
            return cached
        try:
            data = await self.fetch_document(
                url,
                self.manifest_cache_file(spec),
                what=f"manifest of {spec}",
                immutable=is_commit_ref(spec.ref),
            )
        except OfflineError as exc:
            raise ManifestNotFoundError(f"Manifest not found for {spec}: {exc}") from exc
        except (HTTPStatusError, TransferError) as exc:
            raise ManifestNotFoundError(
                f"Manifest not found at {url} ({exc}). Check the repo name and ref, or set "
                "ASYNCHUB_MANIFEST_URL to a mirror that serves it"
            ) from exc
        entries = await self.run_blocking(functools.partial(parse_manifest, data, source=url))
        self._manifests[key] = entries
        return list(entries)

    async def list_models(
        self,
        repo: str = DEFAULT_REPO,
        model: str | None = None,
        tags: list[str] | None = None,
    ) -> list[ModelInfo]:
        """Entries of ``repo``'s manifest matching ``model`` (exact, any case) and ANY of
        ``tags`` (any case); ``tags=[]`` matches nothing."""
        return filter_models(await self.manifest(repo), model=model, tags=tags)

    async def get_model_info(
        self, model: str, repo: str = DEFAULT_REPO, opset: int | None = None
    ) -> ModelInfo:
        """The entry for ``model``: the given ``opset``, else the largest one."""
        return select(await self.manifest(repo), model, opset)

    # -- files -----------------------------------------------------------------------------
    def file_job(self, spec: RepoSpec, path: str, sha: str | None, size: int | None) -> FileJob:
        """The engine job for a manifest file (refusing entries without a SHA-256)."""
        if not sha:
            raise IntegrityError(
                f"the manifest of {spec} gives no SHA-256 for {path}; asynchub only caches "
                "verified files (ask the repo to add model_sha)"
            )
        return FileJob(
            name=path,
            urls=tuple(file_urls(self.config, spec, path)),
            sha256=sha.lower(),
            size=size,
            dest=cache_path(self.config.cache_dir, path, sha.lower()),
        )

    def model_job(self, info: ModelInfo, repo: str) -> FileJob:
        return self.file_job(
            RepoSpec.parse(repo), info.model_path, info.model_sha, info.model_bytes
        )

    async def check_trust(self, repo: str, *, silent: bool, trust_repo: bool) -> None:
        await _trust.check(RepoSpec.parse(repo), self.config, silent=silent, trust_repo=trust_repo)

    async def download(
        self,
        model: str,
        repo: str = DEFAULT_REPO,
        opset: int | None = None,
        force_reload: bool = False,
        silent: bool = False,
        *,
        trust_repo: bool = False,
    ) -> Path:
        """Fetch the model file into the cache (verified) and return its path; no parsing."""
        info = await self.get_model_info(model, repo, opset)
        await self.check_trust(repo, silent=silent, trust_repo=trust_repo)
        return await self.engine.fetch(self.model_job(info, repo), force=force_reload)

    async def load(
        self,
        model: str,
        repo: str = DEFAULT_REPO,
        opset: int | None = None,
        force_reload: bool = False,
        silent: bool = False,
        *,
        trust_repo: bool = False,
    ) -> onnx.ModelProto:
        """Download (if needed) and parse a model; parsing runs in a worker thread."""
        path = await self.download(model, repo, opset, force_reload, silent, trust_repo=trust_repo)
        proto: onnx.ModelProto = await self.run_blocking(_load_model, path)
        return proto

    async def download_model_with_test_data(
        self,
        model: str,
        repo: str = DEFAULT_REPO,
        opset: int | None = None,
        force_reload: bool = False,
        silent: bool = False,
        *,
        trust_repo: bool = False,
    ) -> str:
        """Fetch the model's test-data archive, extract it safely next to it, and return the
        directory holding ``model.onnx`` and ``test_data_set_*``."""
        info = await self.get_model_info(model, repo, opset)
        if not info.model_with_data_path or not info.model_with_data_sha:
            raise ManifestNotFoundError(
                f"{info.model} (opset {info.opset}) has no test data in the manifest "
                "(model_with_data_path); use load() or download() for the model alone"
            )
        await self.check_trust(repo, silent=silent, trust_repo=trust_repo)
        job = self.file_job(
            RepoSpec.parse(repo),
            info.model_with_data_path,
            info.model_with_data_sha,
            info.model_with_data_bytes,
        )
        archive = await self.engine.fetch(job, force=force_reload)
        target = archive.with_name(_strip_archive_suffix(archive.name))
        extracted: Path = await self.run_blocking(_extract, archive, target, force_reload)
        return str(extracted)

    async def load_composite_model(
        self,
        network_model: str,
        preprocessing_model: str,
        network_repo: str = DEFAULT_REPO,
        preprocessing_repo: str = DEFAULT_REPO,
        opset: int | None = None,
        force_reload: bool = False,
        silent: bool = False,
        *,
        trust_repo: bool = False,
    ) -> onnx.ModelProto:
        """The preprocessing model merged in front of the network (see :mod:`._composite`)."""
        from ._composite import merge_preprocessing

        async with anyio.create_task_group() as tg:
            results: dict[str, onnx.ModelProto] = {}

            async def _get(key: str, name: str, repo: str) -> None:
                results[key] = await self.load(
                    name, repo, opset, force_reload, silent, trust_repo=trust_repo
                )

            tg.start_soon(_get, "pre", preprocessing_model, preprocessing_repo)
            tg.start_soon(_get, "net", network_model, network_repo)
        merged: onnx.ModelProto = await self.run_blocking(
            merge_preprocessing,
            results["net"],
            results["pre"],
            network_model,
            preprocessing_model,
        )
        return merged

    async def prefetch(self, **selection: Any) -> PrefetchResult:
        """Fetch a selection of models under one connection budget (see :mod:`._prefetch`)."""
        from ._prefetch import prefetch

        return await prefetch(self, **selection)


def _load_model(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def _strip_archive_suffix(name: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return PurePosixPath(name).stem


def _extract(archive: Path, target: Path, force: bool) -> Path:
    if force and target.exists():
        shutil.rmtree(target, ignore_errors=True)
    return find_model_dir(extract_archive(archive, target))


_default: AsyncHub | None = None


def get_default_async_hub() -> AsyncHub:
    """The hub the module-level async functions use, created on first use."""
    global _default
    if _default is None:
        _default = AsyncHub()
    return _default


def reset_default_async_hub(config: HubConfig | None = None) -> None:
    """Forget the default hub (the next call builds a new one from ``config`` or the env)."""
    global _default
    _default = AsyncHub(config) if config is not None else None
