"""The module-level API: onnx.hub's functions (sync) and their ``a``-prefixed async twins.

Sync functions use the default :class:`Hub` (its own event loop thread); async functions use
the default :class:`AsyncHub` of the running process. Both are created on first use from
``HubConfig.from_env()``. Parameter names and defaults are onnx.hub's; ``trust_repo`` is new and
keyword-only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._hub import defaults
from ._hub.offloop import ASYNC_CORE, import_off_loop
from ._onnx import DEFAULT_REPO

if TYPE_CHECKING:
    import onnx

    from ._hub.client import AsyncHub
    from ._hub.sync import Hub
    from ._onnx.manifest import ModelInfo
    from ._onnx.prefetch import PrefetchResult

__all__ = [
    "adownload",
    "adownload_model_with_test_data",
    "adownload_with_test_data",
    "aget_model_info",
    "alist_models",
    "aload",
    "aload_composite_model",
    "aprefetch",
    "download",
    "download_model_with_test_data",
    "download_with_test_data",
    "get_dir",
    "get_model_info",
    "list_models",
    "load",
    "load_composite_model",
    "prefetch",
    "set_dir",
]


def get_default_hub() -> Hub:
    """The default :class:`Hub` (see :mod:`._hub.defaults`)."""
    return defaults.default_hub()


async def _async_hub() -> AsyncHub:
    """The default :class:`AsyncHub`, for a coroutine: the first call of a process imports the
    async core in a worker thread, never on the event loop thread (see ``_hub/offloop.py``)."""
    await import_off_loop(*ASYNC_CORE)
    return get_default_async_hub()


def get_default_async_hub() -> AsyncHub:
    """The default :class:`AsyncHub` (see :mod:`._hub.defaults`)."""
    return defaults.default_async_hub()


def set_dir(new_dir: str | Path) -> None:
    """Use ``new_dir`` as the cache directory (for the sync and the async API)."""
    defaults.set_default_dir(new_dir)


def get_dir() -> str:
    """The cache directory: ``set_dir``'s, else ``$ONNX_HOME/hub``, else
    ``$XDG_CACHE_HOME/onnx/hub``, else ``~/.cache/onnx/hub``."""
    return get_default_hub().get_dir()


def list_models(
    repo: str = DEFAULT_REPO, model: str | None = None, tags: list[str] | None = None
) -> list[ModelInfo]:
    """Models of ``repo`` matching ``model`` (exact, any case) and ANY of ``tags``."""
    return get_default_hub().list_models(repo, model, tags)


def get_model_info(model: str, repo: str = DEFAULT_REPO, opset: int | None = None) -> ModelInfo:
    """The entry for ``model`` at ``opset`` (default: the largest opset)."""
    return get_default_hub().get_model_info(model, repo, opset)


def download(
    model: str,
    repo: str = DEFAULT_REPO,
    opset: int | None = None,
    force_reload: bool = False,
    silent: bool = False,
    *,
    trust_repo: bool = False,
) -> Path:
    """The verified local path of ``model`` (downloaded if needed), without parsing it."""
    return get_default_hub().download(
        model, repo, opset, force_reload, silent, trust_repo=trust_repo
    )


def load(
    model: str,
    repo: str = DEFAULT_REPO,
    opset: int | None = None,
    force_reload: bool = False,
    silent: bool = False,
    *,
    trust_repo: bool = False,
) -> onnx.ModelProto:
    """Download (if needed), verify and parse ``model``, as onnx.hub.load did."""
    return get_default_hub().load(model, repo, opset, force_reload, silent, trust_repo=trust_repo)


def download_model_with_test_data(
    model: str,
    repo: str = DEFAULT_REPO,
    opset: int | None = None,
    force_reload: bool = False,
    silent: bool = False,
    *,
    trust_repo: bool = False,
) -> str:
    """Download and safely extract the test-data archive; return the directory holding
    ``model.onnx`` and ``test_data_set_*`` as a ``str``, as onnx.hub did (code written for it
    may rely on that). :func:`download_with_test_data` is the same returning a ``Path``, like
    :func:`download`."""
    return get_default_hub().download_model_with_test_data(
        model, repo, opset, force_reload, silent, trust_repo=trust_repo
    )


def download_with_test_data(
    model: str,
    repo: str = DEFAULT_REPO,
    opset: int | None = None,
    force_reload: bool = False,
    silent: bool = False,
    *,
    trust_repo: bool = False,
) -> Path:
    """:func:`download_model_with_test_data` returning a ``Path`` (the directory holding
    ``model.onnx`` and ``test_data_set_*``)."""
    return get_default_hub().download_with_test_data(
        model, repo, opset, force_reload, silent, trust_repo=trust_repo
    )


def load_composite_model(
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
    """``preprocessing_model`` merged in front of ``network_model``."""
    return get_default_hub().load_composite_model(
        network_model,
        preprocessing_model,
        network_repo,
        preprocessing_repo,
        opset,
        force_reload,
        silent,
        trust_repo=trust_repo,
    )


def prefetch(
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
    """Fetch a selection of ``repo`` (``tags``, ``models`` or ``all=True``) into the cache
    under one connection budget; see :meth:`AsyncHub.prefetch` for every parameter."""
    return get_default_hub().prefetch(
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


async def alist_models(
    repo: str = DEFAULT_REPO, model: str | None = None, tags: list[str] | None = None
) -> list[ModelInfo]:
    """Async :func:`list_models`."""
    hub = await _async_hub()
    return await hub.list_models(repo, model, tags)


async def aget_model_info(
    model: str, repo: str = DEFAULT_REPO, opset: int | None = None
) -> ModelInfo:
    """Async :func:`get_model_info`."""
    hub = await _async_hub()
    return await hub.get_model_info(model, repo, opset)


async def adownload(
    model: str,
    repo: str = DEFAULT_REPO,
    opset: int | None = None,
    force_reload: bool = False,
    silent: bool = False,
    *,
    trust_repo: bool = False,
) -> Path:
    """Async :func:`download`."""
    hub = await _async_hub()
    return await hub.download(model, repo, opset, force_reload, silent, trust_repo=trust_repo)


async def aload(
    model: str,
    repo: str = DEFAULT_REPO,
    opset: int | None = None,
    force_reload: bool = False,
    silent: bool = False,
    *,
    trust_repo: bool = False,
) -> onnx.ModelProto:
    """Async :func:`load`: nothing slow runs on the event loop thread."""
    hub = await _async_hub()
    return await hub.load(model, repo, opset, force_reload, silent, trust_repo=trust_repo)


async def adownload_model_with_test_data(
    model: str,
    repo: str = DEFAULT_REPO,
    opset: int | None = None,
    force_reload: bool = False,
    silent: bool = False,
    *,
    trust_repo: bool = False,
) -> str:
    """Async :func:`download_model_with_test_data` (a ``str``, as onnx.hub; see
    :func:`adownload_with_test_data` for the ``Path`` twin)."""
    hub = await _async_hub()
    return await hub.download_model_with_test_data(
        model, repo, opset, force_reload, silent, trust_repo=trust_repo
    )


async def adownload_with_test_data(
    model: str,
    repo: str = DEFAULT_REPO,
    opset: int | None = None,
    force_reload: bool = False,
    silent: bool = False,
    *,
    trust_repo: bool = False,
) -> Path:
    """Async :func:`download_with_test_data`."""
    hub = await _async_hub()
    return await hub.download_with_test_data(
        model, repo, opset, force_reload, silent, trust_repo=trust_repo
    )


async def aload_composite_model(
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
    """Async :func:`load_composite_model`."""
    hub = await _async_hub()
    return await hub.load_composite_model(
        network_model,
        preprocessing_model,
        network_repo,
        preprocessing_repo,
        opset,
        force_reload,
        silent,
        trust_repo=trust_repo,
    )


async def aprefetch(
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
    """Async :func:`prefetch`."""
    hub = await _async_hub()
    return await hub.prefetch(
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
