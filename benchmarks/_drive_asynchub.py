"""Drive asynchub's public API once, in a fresh process, and print timings as JSON.

Usage: ``python _drive_asynchub.py '<json>'`` with keys

* ``op``: ``download`` | ``load`` | ``prefetch``
* ``manifest_url``, ``file_urls`` (list of templates), ``cache_dir``, ``repo`` (``owner/name:ref``)
* ``model`` (download/load), ``tags`` or ``models`` (prefetch)
* optional ``max_connections``, ``chunk_size``, ``force_reload``, ``repeat`` (extra warm calls
  of ``load`` whose median is reported as ``repeat_median``), ``adaptive`` (false: always
  ``max_connections`` connections, the adaptive width off)
* optional ``cached``: the model is already in the cache (a warm ``load``): only onnx is
  imported before the timer, as the call imports nothing of the download engine then
* optional ``api``: ``"hub"`` (default, ``asynchub.Hub(HubConfig(...))``) or ``"module"``
  (``asynchub.load`` configured by ``ASYNCHUB_*`` environment variables, as a user script would)

The last stdout line is ``{"seconds": ..., "import_seconds": ..., ...}``: ``seconds`` is the
in-process time of building the hub plus the operation (what a user's first call costs once
Python is running and asynchub is imported); ``import_seconds`` is ``import asynchub`` (and the
``HubConfig``) with what the first call would import: the engine, and onnx for a ``load``
(see :func:`_import_what_the_call_imports`). The process wall time, CPU and peak RSS are
measured by the caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any


def _public(name: str, private_module: str) -> Any:
    """``asynchub.<name>``; until the package exports it, the module that defines it."""
    import importlib

    import asynchub

    found = getattr(asynchub, name, None)
    if found is None:
        found = getattr(importlib.import_module(f"asynchub.{private_module}"), name)
    return found


def _config(asynchub: Any, params: dict[str, Any]) -> Any:
    repo = str(params["repo"]).split(":", 1)[0].lower()
    values: dict[str, Any] = {
        "cache_dir": Path(params["cache_dir"]),
        "manifest_url": params["manifest_url"],
        "file_urls": tuple(params["file_urls"]),
        "trusted_repos": frozenset({repo}),
        "progress_bars": False,
    }
    if params.get("max_connections"):
        values["max_connections"] = int(params["max_connections"])
        values["max_connections_per_host"] = int(params["max_connections"])
    if params.get("chunk_size"):
        values["chunk_size"] = int(params["chunk_size"])
    if "adaptive" in params:
        values["adaptive_connections"] = bool(params["adaptive"])
    config_cls = _public("HubConfig", "_config")
    known = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in values.items() if k in known})


def _median(times: list[float]) -> float:
    """The median of the repeat calls (``statistics`` is imported only here: its import, with
    ``fractions``, ``decimal`` and ``random``, is ~5 ms of CPU that no download should carry
    in this driver's measure)."""
    import statistics

    return statistics.median(times)


def _import_what_the_call_imports(op: str, cached: bool = False) -> None:
    """Import what asynchub imports at its first call: the download engine (asyncio, anyio's
    backend, h11), the sources (``asynchub._hub.offloop.ASYNC_CORE``) and the event loop of
    the sync API (uvloop where it is installed), unless the model is ``cached`` (a warm load
    reads the cache without them); and onnx for a ``load``. They are timed with ``import
    asynchub`` in ``import_seconds``, so ``seconds`` is the operation itself (as onnx.hub's
    driver, which imports onnx before its timer, measures it); the process's wall time
    includes them, and only them."""
    import importlib

    if not cached:
        try:  # asynchub's own list: the hub, the engine, anyio's backend, the sources
            core: tuple[str, ...] = importlib.import_module("asynchub._hub.offloop").ASYNC_CORE
        except (ImportError, AttributeError):  # an older revision (benchmarks/compare.py)
            core = ("asynchub._hub.client", "anyio._backends._asyncio")
        for name in core:
            importlib.import_module(name)
        with contextlib.suppress(ImportError):  # the sync API's loop where it is installed
            importlib.import_module("uvloop")
    if op == "load":
        importlib.import_module("onnx")


def _module_env(params: dict[str, Any]) -> None:
    """The environment a user of the module-level API would set (read when asynchub builds its
    default hub)."""
    os.environ.update({
        "ASYNCHUB_CACHE_DIR": str(params["cache_dir"]),
        "ASYNCHUB_MANIFEST_URL": params["manifest_url"],
        "ASYNCHUB_FILE_URLS": ",".join(params["file_urls"]),
        "ASYNCHUB_TRUSTED_REPOS": str(params["repo"]).split(":", 1)[0],
        "ASYNCHUB_DISABLE_PROGRESS_BARS": "1",
    })


def _run_module(params: dict[str, Any]) -> dict[str, Any]:
    """``asynchub.load(model, repo=...)`` as a user script calls it."""
    _module_env(params)
    t0 = time.perf_counter()
    load = _public("load", "_api")  # imports asynchub
    _import_what_the_call_imports("load", bool(params.get("cached")))
    t1 = time.perf_counter()
    result: dict[str, Any] = {"import_seconds": t1 - t0}
    start = time.perf_counter()
    proto = load(params["model"], repo=params["repo"])
    result["seconds"] = time.perf_counter() - start
    result["bytes"] = proto.ByteSize()
    if params.get("repeat"):
        times = []
        for _ in range(int(params["repeat"])):
            s = time.perf_counter()
            load(params["model"], repo=params["repo"])
            times.append(time.perf_counter() - s)
        result["repeat_median"] = _median(times)
    return result


def _run(params: dict[str, Any]) -> dict[str, Any]:
    if params.get("api") == "module":
        if params["op"] != "load":
            raise SystemExit("api=module supports op=load only")
        return _run_module(params)
    t0 = time.perf_counter()
    import asynchub

    hub_cls = _public("Hub", "_hub.sync")
    config = _config(asynchub, params)
    _import_what_the_call_imports(params["op"], bool(params.get("cached")))
    t1 = time.perf_counter()
    op = params["op"]
    repo = params["repo"]
    force = bool(params.get("force_reload", False))
    result: dict[str, Any] = {"import_seconds": t1 - t0}
    start = time.perf_counter()
    hub = hub_cls(config)
    try:
        if op == "download":
            path = hub.download(params["model"], repo=repo, force_reload=force)
            result["bytes"] = Path(path).stat().st_size
            result["path"] = str(path)
        elif op == "load":
            proto = hub.load(params["model"], repo=repo, force_reload=force)
            result["bytes"] = proto.ByteSize()
        elif op == "prefetch":
            selection: dict[str, Any] = {"repo": repo}
            if params.get("tags"):
                selection["tags"] = list(params["tags"])
            if params.get("models"):
                selection["models"] = list(params["models"])
            outcome = hub.prefetch(**selection)
            result["outcome"] = repr(outcome)[:300]
        else:
            raise SystemExit(f"unknown op {op!r}")
        result["seconds"] = time.perf_counter() - start
        if op == "load" and params.get("repeat"):
            times = []
            for _ in range(int(params["repeat"])):
                s = time.perf_counter()
                hub.load(params["model"], repo=repo)
                times.append(time.perf_counter() - s)
            result["repeat_median"] = _median(times)
    finally:
        c = time.perf_counter()
        hub.close()
        result["close_seconds"] = time.perf_counter() - c
    return result


if __name__ == "__main__":
    from _driver import run_driver

    sys.exit(run_driver(_run))
