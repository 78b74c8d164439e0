"""Hub: the synchronous façade over :class:`AsyncHub`.

Each ``Hub`` owns one event loop running on a daemon thread (started on first use) and runs the
async core's coroutines there, so the sync API works the same from plain scripts, from several
threads at once, and from inside a running event loop such as Jupyter's (the caller's thread
simply waits; the caller's loop is never re-entered or nested). Ctrl-C while waiting cancels
the work on the hub's loop, which leaves resumable partial files, and re-raises. Hubs are closed
at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
import weakref
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import onnx

from ._client import AsyncHub
from ._config import HubConfig
from ._exceptions import HubError
from ._manifest import ModelInfo
from ._progress import ProgressCallback
from ._sources import DEFAULT_REPO

if TYPE_CHECKING:
    from ._prefetch import PrefetchResult

__all__ = ["Hub", "get_default_hub", "reset_default_hub", "run"]

T = TypeVar("T")

#: How long Ctrl-C or close() waits for cancelled work to wind down (closing files, saving
#: resume state) before giving up on it.
CANCEL_GRACE = 5.0


class _LoopThread:
    """An event loop on a daemon thread, started lazily."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def _main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=_main, name="asynchub-loop", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
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
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            if final is not None:
                final.close()
            return
        if final is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(final, loop)
            concurrent.futures.wait([future], timeout=CANCEL_GRACE)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=CANCEL_GRACE)
        if not thread.is_alive():
            loop.close()


_live: weakref.WeakSet[Hub] = weakref.WeakSet()


class Hub:
    """The synchronous hub client: the same methods as :class:`AsyncHub`, without ``await``.

    ``Hub()`` reads its settings with ``HubConfig.from_env()``; ``Hub(HubConfig(...))`` reads
    nothing from the environment. Use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self, config: HubConfig | None = None, *, progress: ProgressCallback | None = None
    ) -> None:
        self.async_hub = AsyncHub(config, progress=progress)
        self._runner = _LoopThread()
        _live.add(self)

    @property
    def config(self) -> HubConfig:
        return self.async_hub.config

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of this hub's ``async_hub`` on the hub's loop and return its value."""
        return self._runner.run(coro)

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
        self._runner.close(self.async_hub.aclose())

    def set_dir(self, new_dir: str | Path) -> None:
        self.async_hub.set_dir(new_dir)

    def get_dir(self) -> str:
        return self.async_hub.get_dir()

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
        return self.run(
            self.async_hub.download_model_with_test_data(
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

    def prefetch(self, **selection: Any) -> PrefetchResult:
        return self.run(self.async_hub.prefetch(**selection))


_default: Hub | None = None
_default_lock = threading.Lock()


def get_default_hub() -> Hub:
    """The hub the module-level sync functions use, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Hub()
        return _default


def reset_default_hub(config: HubConfig | None = None) -> None:
    """Close and forget the default sync hub; the next one uses ``config`` or the env."""
    global _default
    with _default_lock:
        old, _default = _default, (Hub(config) if config is not None else None)
    if old is not None:
        old.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on the default sync hub's loop (build it against
    ``get_default_hub().async_hub``)."""
    return get_default_hub().run(coro)


@atexit.register
def _close_all() -> None:
    for hub in list(_live):
        hub.close()
