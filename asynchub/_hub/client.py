"""AsyncHub: the async core. Owns the config, the HTTP transport, the engine and the manifests.

Every public operation of asynchub is a coroutine method here; the module-level async
functions call a lazily created default ``AsyncHub`` and the sync façade (:mod:`._sync`) runs
these same coroutines on a background event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

import anyio

from .._config import HubConfig
from .._engine.engine import Engine, FileJob
from .._exceptions import HubClosedError, HubError
from .._onnx.manifest import ModelInfo
from .._onnx.urls import DEFAULT_REPO, RepoSpec
from .._progress.bars import AutoBars, resolve_progress
from .._progress.events import ProgressCallback
from .._transport.auto import default_transport
from .._transport.base import Transport
from .documents import fetch_document
from .offloop import ASYNC_CORE, import_off_loop
from .registry import get_source
from .source import Source

if TYPE_CHECKING:
    import onnx

    from .._onnx.prefetch import PrefetchResult
    from .._onnx.source import OnnxSource

__all__ = ["AsyncHub"]

log = logging.getLogger("asynchub")


def _usable_cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # not on macOS or Windows
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


#: Whether ``load`` parses while the file downloads (:mod:`asynchub._onnx.follow`): only with
#: at least three cores for this process. Measured on 2 cores against nginx on loopback (a
#: CPU-bound download: the loop thread receives, a thread hashes), parsing alongside made a
#: 256 MiB load ~0.3 s slower and the loop's p99 lag no better (four alternating runs each):
#: the parse competes for the same cores and the GIL. With a core to spare, or a download the
#: network paces, it hides the parse (a 1 GiB model of 29 tensors: 0.11-0.13 s after the
#: last byte instead of the whole parse).
PARSE_WHILE_DOWNLOADING = _usable_cores() >= 3

#: Blocking work (parsing, extraction, merging) runs in at most this many threads at once.
BLOCKING_THREADS = 4
#: How long :meth:`AsyncHub.aclose` waits for cancelled operations to wind down (they only
#: close files, save resume state and release locks, which takes milliseconds).
CLOSE_GRACE = 5.0

P = ParamSpec("P")
T = TypeVar("T")

#: The hub whose operation the current task is inside (nested calls are not tracked twice).
_inside: contextvars.ContextVar[AsyncHub | None] = contextvars.ContextVar(
    "asynchub_inside", default=None
)


def _operation(
    method: Callable[Concatenate[AsyncHub, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[AsyncHub, P], Coroutine[Any, Any, T]]:
    """Run a public coroutine method as a tracked operation (see :meth:`AsyncHub.aclose`)."""

    @functools.wraps(method)
    async def tracked(self: AsyncHub, /, *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._track(method.__name__):
            result = await method(self, *args, **kwargs)
        return result

    return tracked


class AsyncHub:
    """The asynchronous hub client.

    ``AsyncHub(config)`` reads nothing from the environment; ``AsyncHub()`` uses
    ``HubConfig.from_env()``. Use it as ``async with AsyncHub(...) as hub:`` or call
    :meth:`aclose` when done. One instance shares one HTTP session per event loop and one
    connection budget across everything it downloads.

    ``sleep`` and ``clock`` (keyword-only, default ``anyio.sleep`` and ``time.monotonic``) are
    handed to the transfer engine, which uses them for retry back-off, ``Retry-After`` waits,
    the stall watchdog and the bandwidth cap; tests inject a fake clock through them. ``fsync``
    (default ``os.fsync``) is the engine's file-writing seam: it flushes each verified file
    before the atomic rename, and tests inject a failing one (EIO). ``transport`` (default: an
    :class:`~asynchub._transport.aiohttp_transport.AiohttpTransport` built from the config) is
    every HTTP request's way out (see :class:`~asynchub._transport.base.Transport`); the hub
    closes it in :meth:`aclose`.

    ``progress``: a callback for every :class:`~asynchub.ProgressEvent`, or ``True`` for
    progress bars when a person is watching (stderr a terminal, or a notebook; each operation
    gets its own bars), or ``None``/``False`` for none. Choice: the default is ``None`` (no
    bars), because an ``AsyncHub`` is what services build on: one hub serves many concurrent
    requests, whose bars would interleave on one stderr, and a service started from a terminal
    during development would otherwise fill its log with bars. The module-level functions
    (``asynchub.load``, ``aload``...) and the sync ``Hub`` default to ``True``, like torch.hub
    and hf, because a person calling them from a shell or a notebook wants to see progress.
    """

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        progress: ProgressCallback | bool | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
        fsync: Callable[[int], None] = os.fsync,
        transport: Transport | None = None,
    ) -> None:
        self.config = config if config is not None else HubConfig.from_env()
        self._progress = resolve_progress(progress, self.config)
        self.sleep = sleep
        self.clock = clock
        self.fsync = fsync
        self.transport: Transport = (
            transport if transport is not None else default_transport(self.config)
        )
        self.engine = self._make_engine()
        self._sources: dict[str, Source] = {}
        # made on first use: creating an anyio primitive imports anyio's backend, which must
        # not happen on the event loop thread (an AsyncHub is often built inside a coroutine)
        self._blocking_limiter: anyio.CapacityLimiter | None = None
        self._closed = False
        self._ops: dict[anyio.CancelScope, asyncio.AbstractEventLoop] = {}
        self._idle: anyio.Event | None = None

    # -- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> AsyncHub:
        if self._closed:
            raise HubClosedError("this AsyncHub is closed; create a new one")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the operations still in flight, wait for them to wind down, close the HTTP
        session. Idempotent.

        Choice: cancel rather than wait. Cancelled downloads keep their resumable partial
        files, so nothing fetched is lost and a service shuts down in milliseconds instead of
        after its largest download. Callers still awaiting an operation get
        :class:`HubClosedError`; new operations on a closed hub raise it at once. Operations
        running on another event loop (e.g. the sync façade's thread) are cancelled there but
        not waited for. Cancelled work winds down within :data:`CLOSE_GRACE` seconds.
        """
        self._closed = True
        loop = asyncio.get_running_loop()
        for scope, owner in list(self._ops.items()):
            if owner is loop:
                scope.cancel()
            elif not owner.is_closed():
                with contextlib.suppress(RuntimeError):
                    owner.call_soon_threadsafe(scope.cancel)
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_GRACE):
                while any(owner is loop for owner in self._ops.values()):
                    self._idle = anyio.Event()
                    await self._idle.wait()
            await self.transport.aclose()

    @property
    def progress(self) -> ProgressCallback | None:
        """The progress callback every download of this hub reports to (may be replaced)."""
        return self._progress

    @progress.setter
    def progress(self, callback: ProgressCallback | None) -> None:
        self._progress = callback
        self.engine.progress = callback

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    @contextlib.asynccontextmanager
    async def _track(self, what: str) -> AsyncIterator[None]:
        """Register the running operation so :meth:`aclose` can cancel it."""
        if self._closed:
            raise HubClosedError(f"this AsyncHub is closed; {what}() needs a new one")
        await import_off_loop(*ASYNC_CORE)  # the first operation of a process: in a thread
        if _inside.get() is self:
            yield
            return
        scope = anyio.CancelScope()
        loop = asyncio.get_running_loop()
        self._ops[scope] = loop
        token = _inside.set(self)
        try:
            with scope:
                yield
        finally:
            _inside.reset(token)
            del self._ops[scope]
            if not self._ops and isinstance(self._progress, AutoBars):
                self._progress.finish()  # the bars of one operation end with it
            idle = self._idle
            if idle is not None and not any(owner is loop for owner in self._ops.values()):
                idle.set()
        if scope.cancelled_caught:
            raise HubClosedError(f"the AsyncHub was closed while {what}() was running")

    # -- cache directory -----------------------------------------------------------------
    def set_dir(self, new_dir: str | Path) -> None:
        """Use ``new_dir`` as the cache directory from now on."""
        self.config = self.config.replace(cache_dir=Path(new_dir))
        self.engine = self._make_engine()

    def _make_engine(self) -> Engine:
        return Engine(
            self.config,
            self.transport,
            progress=self.progress,
            sleep=self.sleep,
            clock=self.clock,
            fsync=self.fsync,
        )

    def get_dir(self) -> str:
        """The cache directory, as a string (as onnx.hub returned it)."""
        return str(self.config.cache_dir)

    # -- blocking work -------------------------------------------------------------------
    async def run_blocking(self, func: Any, *args: Any) -> Any:
        """Run ``func(*args)`` in a worker thread, bounded by the hub's thread limiter."""
        if self._blocking_limiter is None:
            self._blocking_limiter = anyio.CapacityLimiter(BLOCKING_THREADS)
        return await anyio.to_thread.run_sync(func, *args, limiter=self._blocking_limiter)

    # -- documents and manifests ---------------------------------------------------------
    @_operation
    async def fetch_document(
        self,
        url: str,
        cache_file: Path,
        *,
        what: str,
        immutable: bool = False,
        validate: Callable[[bytes], object] | None = None,
    ) -> bytes:
        """A small document (manifest, card) cached on disk and revalidated by ETag; a new
        body replaces the cached copy only if ``validate`` (blocking, run in a worker thread)
        accepts it."""
        return await fetch_document(
            self.transport,
            self.config,
            url,
            cache_file,
            what=what,
            immutable=immutable,
            sleep=self.sleep,
            clock=self.clock,
            validate=validate,
        )

    async def fetch_files(
        self, jobs: Sequence[FileJob], *, force: bool = False
    ) -> list[Path | HubError]:
        """Fetch files through the hub's engine (one budget, one in-flight table); per job its
        verified path or the :class:`HubError` it failed with."""
        return await self.engine.fetch_many(jobs, force=force)

    # -- sources ---------------------------------------------------------------------------
    def source(self, name: str) -> Source:
        """The registered source ``name`` opened on this hub (once; see :mod:`.source`)."""
        opened = self._sources.get(name)
        if opened is None:
            opened = self._sources[name] = get_source(name).open(self)
        return opened

    @property
    def onnx_source(self) -> OnnxSource:
        """The "onnx" source of this hub (the ONNX Model Hub: manifests, entries, jobs)."""
        return cast("OnnxSource", self.source("onnx"))

    @_operation
    async def fetch(self, source: str, selection: str, *, force: bool = False) -> list[Path]:
        """The verified files of ``selection`` in the registered ``source`` (see
        :mod:`.source`), fetched through this hub's engine; the first error is raised."""
        jobs = await self.source(source).resolve(selection, force=force)
        paths: list[Path] = []
        for result in await self.fetch_files(jobs, force=force):
            if isinstance(result, HubError):
                raise result
            paths.append(result)
        return paths

    # -- the ONNX Model Hub (onnx.hub's API, a façade over the "onnx" source) ---------------
    @_operation
    async def manifest(self, repo: str = DEFAULT_REPO) -> list[ModelInfo]:
        """The parsed manifest of ``repo`` (fetched once per hub, then revalidated on disk)."""
        return await self.onnx_source.manifest(RepoSpec.parse(repo))

    @_operation
    async def list_models(
        self,
        repo: str = DEFAULT_REPO,
        model: str | None = None,
        tags: list[str] | None = None,
    ) -> list[ModelInfo]:
        """Entries of ``repo``'s manifest matching ``model`` (exact, any case) and ANY of
        ``tags`` (any case); ``tags=[]`` matches nothing."""
        return await self.onnx_source.list_models(RepoSpec.parse(repo), model, tags)

    @_operation
    async def get_model_info(
        self, model: str, repo: str = DEFAULT_REPO, opset: int | None = None
    ) -> ModelInfo:
        """The entry for ``model``: the given ``opset``, else the largest one."""
        return await self.onnx_source.get_model_info(RepoSpec.parse(repo), model, opset)

    @_operation
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
        onnx_source, spec = self.onnx_source, RepoSpec.parse(repo)
        info = await onnx_source.entry(spec, model, opset, force_reload, test_data=False)
        await onnx_source.check_trust(spec, silent=silent, trust_repo=trust_repo)
        return await self.engine.fetch(onnx_source.model_job(info, spec), force=force_reload)

    @_operation
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
        """Download (if needed) and parse a model in worker threads; what is returned was
        verified. With a spare core the parse runs while the file downloads (see
        :mod:`asynchub._onnx.follow` and :data:`PARSE_WHILE_DOWNLOADING`)."""
        await import_off_loop("asynchub._onnx.follow")
        from .._onnx.follow import ParseFollower

        onnx_source, spec = self.onnx_source, RepoSpec.parse(repo)
        info = await onnx_source.entry(spec, model, opset, force_reload, test_data=False)
        await onnx_source.check_trust(spec, silent=silent, trust_repo=trust_repo)
        follower = ParseFollower()
        job = onnx_source.model_job(info, spec)
        if PARSE_WHILE_DOWNLOADING:
            job = dataclasses.replace(job, follower=follower.follow)
        path = await self.engine.fetch(job, force=force_reload)
        proto: onnx.ModelProto = await self.run_blocking(follower.finish, path)
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
        """The directory holding ``model.onnx`` and ``test_data_set_*``, as a ``str``: onnx.hub
        returned a ``str`` here and code written for it may rely on that. New code can use
        :meth:`download_with_test_data`, which returns a :class:`~pathlib.Path` like
        :meth:`download` does."""
        folder = await self.download_with_test_data(
            model, repo, opset, force_reload, silent, trust_repo=trust_repo
        )
        return str(folder)

    @_operation
    async def download_with_test_data(
        self,
        model: str,
        repo: str = DEFAULT_REPO,
        opset: int | None = None,
        force_reload: bool = False,
        silent: bool = False,
        *,
        trust_repo: bool = False,
    ) -> Path:
        """Fetch the model's test-data archive, extract it safely next to it, and return the
        directory holding ``model.onnx`` and ``test_data_set_*`` (the ``Path`` twin of
        :meth:`download_model_with_test_data`)."""
        onnx_source, spec = self.onnx_source, RepoSpec.parse(repo)
        info = await onnx_source.entry(spec, model, opset, force_reload, test_data=True)
        job = onnx_source.test_data_job(info, spec)
        await onnx_source.check_trust(spec, silent=silent, trust_repo=trust_repo)
        archive = await self.engine.fetch(job, force=force_reload)
        from .._cache.archive import extract_test_data  # tarfile and gzip: only here

        extracted: Path = await self.run_blocking(extract_test_data, archive, force_reload)
        return extracted

    @_operation
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
        async with anyio.create_task_group() as tg:
            results: dict[str, onnx.ModelProto] = {}

            async def _get(key: str, name: str, repo: str) -> None:
                results[key] = await self.load(
                    name, repo, opset, force_reload, silent, trust_repo=trust_repo
                )

            tg.start_soon(_get, "pre", preprocessing_model, preprocessing_repo)
            tg.start_soon(_get, "net", network_model, network_repo)
        merged: onnx.ModelProto = await self.run_blocking(
            _merge_preprocessing,
            results["net"],
            results["pre"],
            network_model,
            preprocessing_model,
        )
        return merged

    @_operation
    async def prefetch(
        self,
        *,
        tags: list[str] | None = None,
        models: list[str] | None = None,
        all: bool = False,
        repo: str = DEFAULT_REPO,
        all_opsets: bool = False,
        with_test_data: bool = False,
        extract: bool = True,
        force_reload: bool = False,
        check_space: bool = True,
        silent: bool = False,
        trust_repo: bool = False,
    ) -> PrefetchResult:
        """Fetch a selection of ``repo`` into the cache under one connection budget.

        Select with ``tags`` (any tag matches, case-insensitive), ``models`` (names), or
        ``all=True``; ``all_opsets`` takes every opset of each name, not only the latest.
        ``with_test_data`` adds each entry's test-data archive (extracted unless
        ``extract=False``); ``force_reload`` downloads everything again; ``check_space=False``
        skips the free-space check; ``silent`` / ``trust_repo`` are as for ``load``. Failures
        of single files are collected in the result, not raised."""
        await import_off_loop("asynchub._onnx.prefetch")
        from .._onnx.prefetch import prefetch

        return await prefetch(
            self,
            tags=tags,
            models=models,
            all=all,
            repo=repo,
            all_opsets=all_opsets,
            with_test_data=with_test_data,
            extract=extract,
            force_reload=force_reload,
            check_space=check_space,
            silent=silent,
            trust_repo=trust_repo,
        )


def _merge_preprocessing(
    network: onnx.ModelProto, preprocessing: onnx.ModelProto, network_name: str, pre_name: str
) -> onnx.ModelProto:
    # onnx.compose and the version converter are imported here, in the worker thread
    from .._onnx.composite import merge_preprocessing

    return merge_preprocessing(network, preprocessing, network_name, pre_name)
