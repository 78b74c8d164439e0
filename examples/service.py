"""A small aiohttp model server on top of asynchub.

    python examples/service.py --host 127.0.0.1 --port 8080

Endpoints:

* ``GET  /healthz``                  ``{"status": "ok", "loaded": [...], "loading": [...]}``;
  answers at once, also while a large model downloads and parses.
* ``GET  /models``                   the hub's manifest (name, opset, tags, bytes, loaded).
* ``POST /models/{name}/load``       load a model now (it is loaded on first use otherwise).
* ``POST /models/{name}/predict``    body ``{"inputs": {"<input name>": [[...]]}}``; answers
  ``{"outputs": {"<output name>": [[...]]}}``.

Where the models come from is asynchub's usual configuration, read once at start-up
(``HubConfig.from_env()``: ``ASYNCHUB_MANIFEST_URL``, ``ASYNCHUB_FILE_URLS``, ``ONNX_HOME``, ...).

Choices:

* The app owns one :class:`asynchub.AsyncHub` for its whole life (an aiohttp cleanup context):
  one HTTP session and one connection budget for every download, and on shutdown
  ``aclose()`` cancels loads still in flight (they keep resumable partial files).
* A model is loaded on its first request with ``await hub.load(name)`` (the coroutine that
  ``await asynchub.aload(name)`` runs on the default hub). Download, SHA-256, file writes
  and parsing all happen off the event loop, so ``/healthz`` keeps answering meanwhile.
  Requests for a model that is loading wait for that one load (a lock per model), and a
  failed load is not cached: the next request tries again.
* Models run on onnxruntime when it is installed, else on onnx's ``ReferenceEvaluator``.
  Building the runner and every inference run in worker threads, at most
  ``--inference-threads`` (2) at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np
import onnx
from aiohttp import web
from onnx import helper

from asynchub import AsyncHub, HubConfig, HubError, ModelNotFoundError, OpsetNotFoundError

log = logging.getLogger("asynchub.example")


class Runner:
    """One loaded model, ready to run (onnxruntime if installed, else ReferenceEvaluator)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = {
            value.name: helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            for value in model.graph.input
            if value.name not in initializers
        }
        self.outputs = [value.name for value in model.graph.output]
        try:
            import onnxruntime

            self.engine = "onnxruntime"
            self._session: Any = onnxruntime.InferenceSession(
                model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
        except ImportError:
            from onnx.reference import ReferenceEvaluator

            self.engine = "onnx.reference"
            self._session = ReferenceEvaluator(model)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self.outputs, feeds)
        return dict(zip(self.outputs, results, strict=True))


class ModelStore:
    """Models by name, each loaded once, on first use."""

    def __init__(self, hub: AsyncHub, inference_threads: int) -> None:
        self.hub = hub
        self.runners: dict[str, Runner] = {}
        self.loading: set[str] = set()
        self._locks: dict[str, anyio.Lock] = {}
        self._threads = anyio.CapacityLimiter(inference_threads)

    async def get(self, name: str) -> Runner:
        key = name.lower()
        runner = self.runners.get(key)
        if runner is not None:
            return runner
        async with self._locks.setdefault(key, anyio.Lock()):
            runner = self.runners.get(key)
            if runner is None:
                self.loading.add(key)
                try:
                    model = await self.hub.load(name)
                    runner = await anyio.to_thread.run_sync(Runner, model, limiter=self._threads)
                finally:
                    self.loading.discard(key)
                self.runners[key] = runner
                log.info("loaded %s (%s)", name, runner.engine)
        return runner

    async def predict(self, name: str, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        runner = await self.get(name)
        if set(inputs) != set(runner.inputs):
            raise web.HTTPBadRequest(
                text=f"{name} takes the inputs {sorted(runner.inputs)}, got {sorted(inputs)}"
            )
        try:
            feeds = {k: np.asarray(v, dtype=runner.inputs[k]) for k, v in inputs.items()}
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"inputs are not numeric arrays: {exc}") from exc
        try:
            return await anyio.to_thread.run_sync(runner.run, feeds, limiter=self._threads)
        except Exception as exc:  # the model rejected the input (shape, type)
            raise web.HTTPBadRequest(text=f"{name} could not run on these inputs: {exc}") from exc


STORE = web.AppKey("store", ModelStore)
CONFIG = web.AppKey("config", HubConfig)
THREADS = web.AppKey("threads", int)


async def healthz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    return web.json_response(
        {"status": "ok", "loaded": sorted(store.runners), "loading": sorted(store.loading)}
    )


async def list_models(request: web.Request) -> web.Response:
    store = request.app[STORE]
    models = await _hub_call(store.hub.list_models())
    return web.json_response(
        [
            {
                "model": info.model,
                "opset": info.opset,
                "tags": sorted(info.tags),
                "bytes": info.metadata.get("model_bytes"),
                "loaded": info.model.lower() in store.runners,
            }
            for info in models
        ]
    )


async def load_model(request: web.Request) -> web.Response:
    store = request.app[STORE]
    name = request.match_info["name"]
    runner = await _hub_call(store.get(name))
    return web.json_response(
        {"model": name, "engine": runner.engine, "inputs": sorted(runner.inputs)}
    )


async def predict(request: web.Request) -> web.Response:
    store = request.app[STORE]
    name = request.match_info["name"]
    try:
        body = await request.json()
        inputs = body["inputs"]
        if not isinstance(inputs, dict):
            raise TypeError("inputs must be an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise web.HTTPBadRequest(
            text=f'send JSON {{"inputs": {{"<input name>": [[...]]}}}} ({exc})'
        ) from exc
    outputs = await _hub_call(store.predict(name, inputs))
    return web.json_response({"outputs": {k: v.tolist() for k, v in outputs.items()}})


async def _hub_call(coro: Any) -> Any:
    """Await ``coro``, turning asynchub errors into HTTP answers."""
    try:
        return await coro
    except (ModelNotFoundError, OpsetNotFoundError) as exc:
        raise web.HTTPNotFound(text=str(exc)) from exc
    except HubError as exc:
        log.warning("hub error: %s", exc)
        raise web.HTTPBadGateway(text=str(exc)) from exc


async def hub_context(app: web.Application) -> AsyncIterator[None]:
    """One AsyncHub for the app's life; closing it cancels loads still in flight."""
    async with AsyncHub(app[CONFIG]) as hub:
        app[STORE] = ModelStore(hub, app[THREADS])
        yield


def make_app(config: HubConfig | None = None, *, inference_threads: int = 2) -> web.Application:
    app = web.Application()
    app[CONFIG] = config if config is not None else HubConfig.from_env()
    app[THREADS] = inference_threads
    app.cleanup_ctx.append(hub_context)
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/models", list_models),
            web.post("/models/{name}/load", load_model),
            web.post("/models/{name}/predict", predict),
        ]
    )
    return app


async def serve(host: str, port: int, inference_threads: int) -> None:
    runner = web.AppRunner(make_app(inference_threads=inference_threads), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    sys.stdout.write(f"serving on http://{host}:{bound}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve ONNX models from the hub over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--inference-threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.host, args.port, args.inference_threads))


if __name__ == "__main__":
    main()
