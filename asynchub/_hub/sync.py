"""Hub: the synchronous façade over :class:`AsyncHub`.

Each ``Hub`` owns one event loop running on a daemon thread (started on first use) and runs the
async core's coroutines there, so the sync API works the same from plain scripts, from several
threads at once, and from inside a running event loop such as Jupyter's (the caller's thread
simply waits; the caller's loop is never re-entered or nested). Ctrl-C while waiting cancels
the work on the hub's loop, which leaves resumable partial files, and re-raises. Hubs are closed
at interpreter exit.

A ``load`` or ``download`` whose model is already in the cache is served in the caller's thread,
without the event loop (see :mod:`._warm`): the cached manifest names the file, the file is
verified (size and SHA-256) and parsed, and no request is sent. The loop thread, the async core
(:class:`AsyncHub`, with asyncio, anyio, the engine and aiohttp) and the HTTP session are only
created when something has to be fetched: a warm ``load`` in a fresh process costs a hash and a
parse, not ~40 ms of start-up. Calls with ``force_reload``, a progress callback or an untrusted
repo always take the full path.

Why a hand-made loop thread and not ``anyio.from_thread.start_blocking_portal`` (measured with
``benchmarks/sync_portal.py``, 2 cores, Python 3.11, anyio 4): the portal runs its loop on a
``ThreadPoolExecutor`` thread, which is not a daemon, and the interpreter joins such threads
*before* ``atexit`` handlers run; a script that never calls ``close()`` then never exits (still
running after 10 s, where the loop thread exits in 0.3 s). A ``BlockingPortal`` served from our
own daemon thread avoids that, but needs the same thread management as this class and its
round trip costs 62-68 us against 26-27 us for ``run_coroutine_threadsafe`` (median of 2000
no-op calls; start-up and 200 ``to_thread`` calls are equal within noise). So the loop thread
stays: about 60 lines, the same root-task arrangement anyio needs, and a clean exit.

``Hub(progress=True)`` (the default, also for the module-level functions) shows progress bars
while something downloads when stderr is a terminal or in a notebook, never in pipes, CI logs
or services; ``Hub(progress=False)`` or ``ASYNCHUB_DISABLE_PROGRESS_BARS=1`` turn them off.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import weakref
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .._cache.layout import cache_path, ensure_dir, file_matches
from .._config import HubConfig
from .._exceptions import HubClosedError, HubError
from .._onnx.manifest import ModelInfo
from .._onnx.trust import is_trusted
from .._onnx.urls import DEFAULT_REPO, RepoSpec
from .._onnx.warm import ManifestMemo, cached_entry
from .._progress.events import ProgressCallback

if TYPE_CHECKING:
    import asyncio

    import onnx

    from .._onnx.prefetch import PrefetchResult
    from .client import AsyncHub

__all__ = ["Hub"]

T = TypeVar("T")

#: How long Ctrl-C or close() waits for cancelled work to wind down (closing files, saving
#: resume state) before giving up on it.
CANCEL_GRACE = 5.0


class _LoopThread:
    """An event loop on a daemon thread, started lazily.

    The loop runs one long-lived root task (``run_until_complete`` of a coroutine that waits for
    :meth:`close`), not ``run_forever``: anyio recognises such a task as the root of the loop,
    caches it, and ties its worker threads to it. Under ``run_forever`` it found no root, so
    every ``to_thread`` call (the engine makes several per file and per flushed piece) scanned
    all tasks of the loop, and the worker threads were stopped after each operation.
    """

    def __init__(self, event_loop: str = "auto") -> None:
        self._event_loop = event_loop  # HubConfig.event_loop
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Future[None] | None = None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        import asyncio

        from .._loops import loop_factory  # asyncio and uvloop: only once a loop is needed

        with self._lock:
            if self._loop is None:
                loop = loop_factory(self._event_loop)()
                stop: asyncio.Future[None] = loop.create_future()
                ready = threading.Event()

                async def _root() -> None:
                    ready.set()
                    await stop

                def _main() -> None:
                    asyncio.set_event_loop(loop)
                    try:
                        loop.run_until_complete(_root())
                    finally:
                        loop.close()  # also when close() came from this thread

                thread = threading.Thread(target=_main, name="asynchub-loop", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread, self._stop = loop, thread, stop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        import asyncio
        import concurrent.futures

        loop = self._ensure()
        if threading.current_thread() is self._thread:
            coro.close()
            raise HubError(
                "the sync asynchub API was called from its own event loop thread (e.g. in a "
                "progress callback); use the async API (await hub.aload(...)) there"
            )
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except (KeyboardInterrupt, SystemExit):
            future.cancel()
            concurrent.futures.wait([future], timeout=CANCEL_GRACE)
            raise

    def close(self, final: Coroutine[Any, Any, None] | None = None) -> None:
        """Run ``final`` on the loop, then stop the loop and its thread.

        Called on the loop's own thread (a progress callback closing its hub), it cannot wait
        for either: it schedules ``final`` and the stop, and returns at once; the callers
        waiting on the loop's work then get ``final``'s outcome (``HubClosedError``)."""
        with self._lock:
            loop, thread, stop = self._loop, self._thread, self._stop
            self._loop = self._thread = self._stop = None
        if loop is None or thread is None or stop is None:
            if final is not None:
                final.close()
            return
        import asyncio
        import concurrent.futures

        if threading.current_thread() is thread:
            loop.create_task(_finish_after(final, stop))
            return

        if final is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(final, loop)
            concurrent.futures.wait([future], timeout=CANCEL_GRACE)
        with contextlib.suppress(RuntimeError):  # the loop may have ended meanwhile
            loop.call_soon_threadsafe(_finish, stop)
        thread.join(timeout=CANCEL_GRACE)


def _finish(stop: asyncio.Future[None]) -> None:
    if not stop.done():
        stop.set_result(None)


async def _finish_after(
    final: Coroutine[Any, Any, None] | None, stop: asyncio.Future[None]
) -> None:
    """Run ``final`` (bounded by :data:`CANCEL_GRACE`), then end the loop's root task."""
    import asyncio

    try:
        if final is not None:
            await asyncio.wait_for(final, CANCEL_GRACE)
    except Exception:  # the hub is closing; its errors have no caller left to see them
        pass
    finally:
        _finish(stop)


_live: weakref.WeakSet[Hub] = weakref.WeakSet()


class Hub:
    """The synchronous hub client: the same methods as :class:`AsyncHub`, without ``await``.

    ``Hub()`` reads its settings with ``HubConfig.from_env()``; ``Hub(HubConfig(...))`` reads
    nothing from the environment. Use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self, config: HubConfig | None = None, *, progress: ProgressCallback | bool | None = True
    ) -> None:
        self._config = config if config is not None else HubConfig.from_env()
        #: ``True`` (the default): bars when a person is watching (see ``AsyncHub``)
        self._progress = progress
        self._async_hub: AsyncHub | None = None
        self._create_lock = threading.Lock()
        self._closed = False
        self._memo = ManifestMemo()
        self._runner = _LoopThread(self._config.event_loop)
        _live.add(self)

    @property
    def async_hub(self) -> AsyncHub:
        """The async core this hub runs (created on first use)."""
        with self._create_lock:
            if self._async_hub is None:
                from .client import AsyncHub

                self._async_hub = AsyncHub(self._config, progress=self._progress)
            return self._async_hub

    @property
    def config(self) -> HubConfig:
        hub = self._async_hub
        return hub.config if hub is not None else self._config

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of this hub's ``async_hub`` on the hub's loop and return its value."""
        if self._closed:
            coro.close()
            raise HubClosedError("this Hub is closed; create a new one")
        return self._runner.run(coro)

    def _cached_file(
        self, model: str, repo: str, opset: int | None, force_reload: bool, trust_repo: bool
    ) -> Path | None:
        """The verified cached file of ``model``, found in the caller's thread; ``None`` when
        the hub's loop must run (not cached, fails verification, untrusted repo, force_reload,
        or a progress callback, whose events come from the engine)."""
        if self._closed:
            raise HubClosedError("this Hub is closed; create a new one")
        if force_reload or callable(self._progress):  # a caller's callback expects events
            return None
        config = self.config
        spec = RepoSpec.parse(repo)
        if not (trust_repo or is_trusted(spec, config)):
            return None
        info = cached_entry(config, self._memo, model, spec, opset)
        if info is None or not info.model_sha:
            return None
        dest = cache_path(config.cache_dir, info.model_path, info.model_sha.lower())
        ensure_dir(config.cache_dir, dest.parent)
        if not file_matches(dest, info.model_sha, info.model_bytes):
            return None
        return dest

    def __enter__(self) -> Hub:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session and stop the hub's loop thread."""
        self._closed = True
        hub = self._async_hub
        self._runner.close(hub.aclose() if hub is not None else None)

    def set_dir(self, new_dir: str | Path) -> None:
        with self._create_lock:
            self._config = self._config.replace(cache_dir=Path(new_dir))
            if self._async_hub is not None:
                self._async_hub.set_dir(new_dir)

    def get_dir(self) -> str:
        return str(self.config.cache_dir)

    def list_models(
        self, repo: str = DEFAULT_REPO, model: str | None = None, tags: list[str] | None = None
    ) -> list[ModelInfo]:
        return self.run(self.async_hub.list_models(repo, model, tags))

    def get_model_info(
        self, model: str, repo: str = DEFAULT_REPO, opset: int | None = None
    ) -> ModelInfo:
        return self.run(self.async_hub.get_model_info(model, repo, opset))

    def download(
        self,
        model: str,
        repo: str = DEFAULT_REPO,
        opset: int | None = None,
        force_reload: bool = False,
        silent: bool = False,
        *,
        trust_repo: bool = False,
    ) -> Path:
        cached = self._cached_file(model, repo, opset, force_reload, trust_repo)
        if cached is not None:
            return cached
        return self.run(
            self.async_hub.download(model, repo, opset, force_reload, silent, trust_repo=trust_repo)
        )

    def load(
        self,
        model: str,
        repo: str = DEFAULT_REPO,
        opset: int | None = None,
        force_reload: bool = False,
        silent: bool = False,
        *,
        trust_repo: bool = False,
    ) -> onnx.ModelProto:
        cached = self._cached_file(model, repo, opset, force_reload, trust_repo)
        if cached is not None:
            from .._onnx.parse import load_model  # the model stack, imported when needed

            return load_model(cached)
        return self.run(
            self.async_hub.load(model, repo, opset, force_reload, silent, trust_repo=trust_repo)
        )

    def download_model_with_test_data(
        self,
        model: str,
        repo: str = DEFAULT_REPO,
        opset: int | None = None,
        force_reload: bool = False,
        silent: bool = False,
        *,
        trust_repo: bool = False,
    ) -> str:
        """As onnx.hub: the test-data directory as a ``str`` (see
        :meth:`download_with_test_data` for the ``Path`` twin)."""
        return self.run(
            self.async_hub.download_model_with_test_data(
                model, repo, opset, force_reload, silent, trust_repo=trust_repo
            )
        )

    def download_with_test_data(
        self,
        model: str,
        repo: str = DEFAULT_REPO,
        opset: int | None = None,
        force_reload: bool = False,
        silent: bool = False,
        *,
        trust_repo: bool = False,
    ) -> Path:
        """The directory holding ``model.onnx`` and ``test_data_set_*``, as a ``Path``."""
        return self.run(
            self.async_hub.download_with_test_data(
                model, repo, opset, force_reload, silent, trust_repo=trust_repo
            )
        )

    def load_composite_model(
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
        return self.run(
            self.async_hub.load_composite_model(
                network_model,
                preprocessing_model,
                network_repo,
                preprocessing_repo,
                opset,
                force_reload,
                silent,
                trust_repo=trust_repo,
            )
        )

    def prefetch(
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
        return self.run(
            self.async_hub.prefetch(
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
        )


def _reset_after_fork() -> None:
    """In the child of a ``fork``: forget every hub's loop thread and async core.

    Only the forking thread survives a ``fork``; a hub's loop thread does not, so waiting on
    it hung the child's first network call. Each hub gets a fresh (unstarted) loop thread and
    async core, built on first use in the child like in a new process; locks held by threads
    that no longer exist are replaced. The parent's hubs are untouched. The objects copied
    from the parent (its loop, its HTTP session) are dropped, never used or closed here: their
    sockets are shared with the parent."""
    for hub in list(_live):
        hub._runner = _LoopThread(hub._config.event_loop)
        hub._create_lock = threading.Lock()
        hub._async_hub = None
        hub._memo = ManifestMemo()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _close_all() -> None:
    for hub in list(_live):
        hub.close()
