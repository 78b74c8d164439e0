"""The ONNX Model Hub source: manifests of repos, their entries, and the files they name.

One :class:`OnnxSource` per hub (``hub.source("onnx")``) keeps the manifests it parsed and
shares a manifest fetch in flight between the coroutines that ask for it. It resolves a model
selection to a :class:`~asynchub._engine.engine.FileJob` (mirror URLs from the config's
templates, expected size and SHA-256 from the manifest, the onnx.hub cache path).

The cold walk of ``load``/``download`` is done once: the repo string is parsed once into a
:class:`RepoSpec`, the warm path looks into the cache once (the manifest cached on disk names a
file that is present: no request at all; the engine verifies the file when it serves it), the
trust check runs once, and the engine's own presence check is the only other look at the
file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from .._cache.layout import cache_path
from .._engine.engine import FileJob
from .._exceptions import (
    HTTPStatusError,
    IntegrityError,
    ManifestNotFoundError,
    OfflineError,
    TransferError,
    amend,
)
from .._loops import PerLoop
from . import trust
from .index import ManifestView, index_path
from .manifest import ModelInfo, filter_models
from .urls import DEFAULT_REPO, RepoSpec, file_urls, is_commit_ref, manifest_url
from .warm import ManifestMemo, cached_entry, manifest_cache_file

if TYPE_CHECKING:
    from .._hub.source import SourceHost

__all__ = ["MANIFEST_HINT", "OnnxSource"]

#: What to do when the manifest cannot be fetched (after the network error's own hint).
MANIFEST_HINT = (
    ". With a cached manifest, offline mode (--offline, ASYNCHUB_OFFLINE=1) works without "
    "the network; ASYNCHUB_MANIFEST_URL and ASYNCHUB_FILE_URLS point asynchub at a mirror"
)


def _short(exc: BaseException, limit: int = 500) -> str:
    """An error's message cut to ``limit`` characters (messages stay readable and bounded)."""
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Flight:
    """A manifest fetch in flight, shared by every coroutine that asks for it meanwhile."""

    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class OnnxSource:
    """The ONNX Model Hub on one hub (see the module docstring)."""

    def __init__(self, host: SourceHost) -> None:
        self._host = host
        self._manifests: dict[tuple[str, str], ManifestView] = {}
        self._warm_memo = ManifestMemo()
        self._flights: PerLoop[dict[tuple[str, str], _Flight]] = PerLoop(dict)

    # -- manifests -------------------------------------------------------------------------
    async def manifest(self, spec: RepoSpec) -> list[ModelInfo]:
        """The parsed manifest of ``spec`` (fetched once per hub, then revalidated on disk)."""
        view = await self.view(spec)
        if view.parsed:
            return list(view.entries())
        entries: list[ModelInfo] = await self._host.run_blocking(view.entries)
        return list(entries)

    async def view(self, spec: RepoSpec) -> ManifestView:
        """The manifest of ``spec`` as a :class:`ManifestView` (fetched once per hub).

        Concurrent calls share one fetch: a burst of ``aload`` calls on a fresh hub asks the
        server for the manifest once, and they all get its result or its error.
        """
        url = manifest_url(self._host.config, spec)
        key = (str(spec), url)
        flights = self._flights.get()
        while True:
            cached = self._manifests.get(key)
            if cached is not None:
                return cached
            flight = flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            # the fetching call was cancelled (or succeeded): look again
        flight = flights[key] = _Flight()
        try:
            view = await self._fetch_manifest(spec, url)
            self._manifests[key] = view
            return view
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del flights[key]
            flight.done.set()

    async def _fetch_manifest(self, spec: RepoSpec, url: str) -> ManifestView:
        host = self._host
        cache_file = manifest_cache_file(host.config, spec)
        fresh: list[tuple[bytes, ManifestView]] = []

        def validate(data: bytes) -> None:
            # a new manifest is parsed (and so validated) before it may replace the cached
            # one; the view is kept so it is not parsed twice
            view = ManifestView.from_bytes(
                data, source=url, index_file=index_path(cache_file), defer=True
            )
            fresh.append((data, view))

        try:
            data = await host.fetch_document(
                url,
                cache_file,
                what=f"manifest of {spec}",
                immutable=is_commit_ref(spec.ref),
                validate=validate,
            )
        except OfflineError as exc:
            raise ManifestNotFoundError(
                f"Could not find manifest at {url}: offline mode is on and no copy is cached. "
                f"{_short(exc)}"
            ) from exc
        except HTTPStatusError as exc:
            # onnx.hub raised AssertionError("Could not find manifest at <url>") for an HTTP
            # error answer: so do we, with the same words first
            raise ManifestNotFoundError(
                f"Could not find manifest at {url} ({_short(exc)}). Check the repo name and "
                "ref (owner/name[:ref]), or set ASYNCHUB_MANIFEST_URL to a mirror that serves it"
            ) from exc
        except TransferError as exc:
            # the server could not be reached: a network error, not "not found"
            before = f"could not fetch the manifest of {spec}: "
            raise amend(exc, before=before, after=MANIFEST_HINT)  # noqa: B904 - the same error
        if fresh and fresh[-1][0] is data:
            await host.run_blocking(fresh[-1][1].save_index)  # the manifest is cached now
            return fresh[-1][1]
        view: ManifestView = await host.run_blocking(
            functools.partial(
                ManifestView.from_bytes, data, source=url, index_file=index_path(cache_file)
            )
        )
        return view

    async def list_models(
        self, spec: RepoSpec, model: str | None, tags: list[str] | None
    ) -> list[ModelInfo]:
        return filter_models(await self.manifest(spec), model=model, tags=tags)

    async def get_model_info(self, spec: RepoSpec, model: str, opset: int | None) -> ModelInfo:
        view = await self.view(spec)
        if view.parsed:
            return view.select(model, opset)
        info: ModelInfo = await self._host.run_blocking(view.select, model, opset)
        return info

    # -- files -----------------------------------------------------------------------------
    def file_job(self, spec: RepoSpec, path: str, sha: str | None, size: int | None) -> FileJob:
        """The engine job for a manifest file (refusing entries without a SHA-256)."""
        if not sha:
            raise IntegrityError(
                f"the manifest of {spec} gives no SHA-256 for {path}; asynchub only caches "
                "verified files (ask the repo to add model_sha)"
            )
        config = self._host.config
        return FileJob(
            name=path,
            urls=tuple(file_urls(config, spec, path)),
            sha256=sha.lower(),
            size=size,
            dest=cache_path(config.cache_dir, path, sha.lower()),
        )

    def model_job(self, info: ModelInfo, spec: RepoSpec) -> FileJob:
        return self.file_job(spec, info.model_path, info.model_sha, info.model_bytes)

    def test_data_job(self, info: ModelInfo, spec: RepoSpec) -> FileJob:
        if not info.model_with_data_path or not info.model_with_data_sha:
            raise ManifestNotFoundError(
                f"{info.model} (opset {info.opset}) has no test data in the manifest "
                "(model_with_data_path); use load() or download() for the model alone"
            )
        return self.file_job(
            spec, info.model_with_data_path, info.model_with_data_sha, info.model_with_data_bytes
        )

    async def check_trust(self, spec: RepoSpec, *, silent: bool, trust_repo: bool) -> None:
        await trust.check(spec, self._host.config, silent=silent, trust_repo=trust_repo)

    async def entry(
        self,
        spec: RepoSpec,
        model: str,
        opset: int | None,
        force_reload: bool,
        *,
        test_data: bool,
    ) -> ModelInfo:
        """The manifest entry to fetch.

        Warm path: when the manifest cached on disk names a file that is already in the cache,
        that entry is used without asking the server, so a warm ``load`` makes no request at all
        (the file itself is still SHA-verified). Whenever a download is needed — or with
        ``force_reload`` — the manifest is revalidated first, as :meth:`manifest` does.
        """
        if not force_reload:
            info: ModelInfo | None = await self._host.run_blocking(
                self._warm_info, spec, model, opset, test_data
            )
            if info is not None:
                return info
        return await self.get_model_info(spec, model, opset)

    def _warm_info(
        self, spec: RepoSpec, model: str, opset: int | None, test_data: bool
    ) -> ModelInfo | None:
        config = self._host.config
        view = self._manifests.get((str(spec), manifest_url(config, spec)))
        return cached_entry(
            config, self._warm_memo, model, spec, opset, test_data=test_data, view=view
        )

    # -- the Source protocol ---------------------------------------------------------------
    async def resolve(self, selection: str, *, force: bool = False) -> list[FileJob]:
        """``"[owner/name[:ref]/]Model[@opset]"`` → the model file's job (default repo
        ``onnx/models:main``; the largest opset when none is given)."""
        repo, _, name = selection.rpartition("/") if selection.count("/") >= 2 else ("", "", "")
        if not repo:
            name = selection
        model, _, opset_text = name.partition("@")
        spec = RepoSpec.parse(repo or DEFAULT_REPO)
        opset = int(opset_text) if opset_text.isascii() and opset_text.isdigit() else None
        info = await self.entry(spec, model, opset, force, test_data=False)
        return [self.model_job(info, spec)]
