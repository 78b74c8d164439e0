"""A small aiohttp model server on top of asynchub, meant to be copied.

    python examples/service.py --host 127.0.0.1 --port 8080

Endpoints (every answer is JSON, errors too: ``{"error": {"type", "message"}}``):

* ``GET  /healthz``                 ``{"status": "ok", "loaded": [...], "loading": [...]}``
* ``GET  /models``                  the hub's manifest (name, opset, tags, bytes, state)
* ``POST /models/{name}/load``      start loading in the background: ``202`` with the status
  (``200`` if already loaded); poll ``GET /models/{name}``
* ``GET  /models/{name}``           ``{"model", "state": absent|loading|ready|failed,
  "bytes", "total", "engine", "inputs", "error"}``
* ``POST /models/{name}/predict``   body ``{"inputs": {"<input name>": [[...]]}}``; answers
  ``{"outputs": {...}}``, or ``409`` while the model is not loaded

Where the models come from is asynchub's usual configuration, read once at start-up
(``HubConfig.from_env()``: ``ASYNCHUB_MANIFEST_URL``, ``ASYNCHUB_FILE_URLS``, proxies, ...).

Choices (the FastAPI variant, ``service_fastapi.py``, makes the same ones):

* **One hub, one task group, for the process.** :func:`serve` opens one
  :class:`asynchub.AsyncHub` (one HTTP session, one connection budget) and one anyio task
  group; loads run as tasks of that group, never as stray tasks. On SIGTERM/SIGINT the group
  is cancelled first, so a load in flight stops at once (its partial file stays and resumes
  next time), then the HTTP server shuts down, then the hub closes.
* **Load in the background.** ``POST .../load`` answers ``202`` at once; a client polls the
  status. Holding the request open for a multi-GB download would tie up the client, proxies'
  timeouts and the server's shutdown.
* **Bounded state.** A name is first resolved against the manifest (``get_model_info``; an
  unknown name is a ``404`` and leaves nothing behind), and state is kept per *manifest entry*,
  so the table cannot grow beyond the manifest whatever clients send. No locks: on one event
  loop, "is it loading? if not, mark it loading" has no ``await`` in between.
* **Run from the file.** ``hub.download`` returns the verified path; onnxruntime opens that
  path itself (external data included), instead of parsing the model in Python and
  serializing it again. Without onnxruntime, onnx's ``ReferenceEvaluator`` is used. Building a
  session and each inference run in worker threads, at most ``--inference-threads`` at once.
* **A failed load is remembered, not cached.** Its error is shown by the status endpoint and
  the next ``POST .../load`` tries again.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import numpy as np
from aiohttp import web

from asynchub import (
    AsyncHub,
    HubConfig,
    HubError,
    ModelNotFoundError,
    OpsetNotFoundError,
    ProgressEvent,
)

log = logging.getLogger("asynchub.example")

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}  # fmt: skip


def import_inference_stack() -> None:
    """Import what :class:`Runner` uses (blocking; once, at start-up)."""
    try:
        import onnxruntime  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        import onnx.reference  # noqa: F401


class Runner:
    """A model ready to run, opened from its file: onnxruntime if installed, else onnx's
    ReferenceEvaluator."""

    def __init__(self, path: Path) -> None:
        self.inputs: dict[str, Any] = {}  # input name -> numpy dtype
        self.outputs: list[str] = []
        try:
            import onnxruntime  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError:
            self._reference(path)
        else:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.engine = "onnxruntime"
            self.inputs = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
            self.outputs = [o.name for o in session.get_outputs()]
            self._session: Any = session

    def _reference(self, path: Path) -> None:
        import onnx
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(str(path))
        initializers = {t.name for t in model.graph.initializer}
        self.engine = "onnx.reference"
        self.inputs = {
            v.name: helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
            for v in model.graph.input
            if v.name not in initializers
        }
        self.outputs = [v.name for v in model.graph.output]
        self._session = ReferenceEvaluator(model)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self.outputs, feeds)
        return dict(zip(self.outputs, results, strict=True))


class ApiError(Exception):
    """An error answer: HTTP ``status`` and a JSON body ``{"error": {"type", "message"}}``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.kind, "message": str(self)}}


@dataclass
class Entry:
    """The state of one manifest entry (at most one per entry of the manifest)."""

    model: str
    state: str = "absent"  # absent | loading | ready | failed
    runner: Runner | None = None
    error: dict[str, str] | None = None
    bytes: int = 0
    total: int | None = None

    def status(self) -> dict[str, Any]:
        runner = self.runner
        return {
            "model": self.model,
            "state": self.state,
            "bytes": self.bytes,
            "total": self.total,
            "engine": runner.engine if runner else None,
            "inputs": sorted(runner.inputs) if runner else None,
            "error": self.error,
        }


def hub_error(exc: HubError) -> ApiError:
    """The HTTP answer for an asynchub error."""
    if isinstance(exc, (ModelNotFoundError, OpsetNotFoundError)):
        return ApiError(404, type(exc).__name__, str(exc))
    return ApiError(502, type(exc).__name__, str(exc))


class ModelStore:
    """Loads models in the background and keeps their state; build it with :func:`open_store`."""

    def __init__(self, *, inference_threads: int = 2) -> None:
        self._hub: AsyncHub | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._entries: dict[str, Entry] = {}  # by manifest path: bounded by the manifest
        self._threads = anyio.CapacityLimiter(inference_threads)

    @property
    def hub(self) -> AsyncHub:
        assert self._hub is not None, "use open_store()"
        return self._hub

    def on_progress(self, event: ProgressEvent) -> None:
        """The hub's progress callback: byte counts for the status endpoint."""
        entry = self._entries.get(event.name)
        if entry is None:
            return
        if event.kind == "planned":
            entry.total, entry.bytes = event.total, 0
        elif event.kind in ("resumed", "transfer"):
            entry.bytes += event.nbytes

    async def entry(self, name: str) -> Entry:
        """The entry of ``name`` (resolved in the manifest; 404 if unknown)."""
        try:
            info = await self.hub.get_model_info(name)
        except HubError as exc:
            raise hub_error(exc) from exc
        entry = self._entries.get(info.model_path)
        if entry is None:
            entry = self._entries[info.model_path] = Entry(info.model)
        return entry

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def start(self, entry: Entry) -> bool:
        """Start loading ``entry`` unless it is loading or ready; ``True`` if started."""
        if entry.state in ("loading", "ready"):
            return False
        assert self._tasks is not None, "use open_store()"
        entry.state, entry.error, entry.bytes = "loading", None, 0
        self._tasks.start_soon(self._load, entry, name=f"load {entry.model}")
        return True

    async def _load(self, entry: Entry) -> None:
        try:
            path = await self.hub.download(entry.model)
            entry.runner = await anyio.to_thread.run_sync(Runner, path, limiter=self._threads)
            entry.state = "ready"
            log.info("loaded %s (%s)", entry.model, entry.runner.engine)
        except HubError as exc:
            entry.state = "failed"
            entry.error = {"type": type(exc).__name__, "message": str(exc)}
            log.warning("loading %s failed: %s", entry.model, exc)
        except Exception as exc:  # a model onnxruntime cannot open
            entry.state = "failed"
            entry.error = {"type": type(exc).__name__, "message": str(exc)}
            log.exception("loading %s failed", entry.model)

    async def predict(self, entry: Entry, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        runner = entry.runner
        if runner is None:
            raise ApiError(
                409,
                "NotLoaded",
                f"{entry.model} is {entry.state}, not loaded; POST /models/{entry.model}/load "
                f"and poll GET /models/{entry.model} until its state is ready",
            )
        if set(inputs) != set(runner.inputs):
            raise ApiError(
                400,
                "BadInputs",
                f"{entry.model} takes the inputs {sorted(runner.inputs)}, got {sorted(inputs)}",
            )
        try:
            feeds: dict[str, np.ndarray] = {
                k: np.asarray(v, dtype=runner.inputs[k]) for k, v in inputs.items()
            }
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "BadInputs", f"inputs are not numeric arrays: {exc}") from exc
        try:
            return await anyio.to_thread.run_sync(runner.run, feeds, limiter=self._threads)
        except Exception as exc:  # the model rejected the input (shape, type)
            raise ApiError(
                400, "BadInputs", f"{entry.model} could not run on these inputs: {exc}"
            ) from exc


@contextlib.asynccontextmanager
async def open_store(config: HubConfig, *, inference_threads: int = 2) -> AsyncIterator[ModelStore]:
    """A :class:`ModelStore` with its hub and its task group. Leaving the block cancels the
    loads still in flight (they keep resumable partial files), then closes the hub."""
    store = ModelStore(inference_threads=inference_threads)
    # The inference stack (onnxruntime, or onnx + numpy) is imported now, before the service
    # takes requests: importing it later, even in a worker thread, holds the GIL for a second
    # or more (C extension start-up) and every request waits meanwhile.
    await anyio.to_thread.run_sync(import_inference_stack)
    async with (
        AsyncHub(config, progress=store.on_progress) as hub,
        anyio.create_task_group() as tasks,
    ):
        store._hub, store._tasks = hub, tasks
        try:
            yield store
        finally:
            tasks.cancel_scope.cancel()
            store._tasks = None


INPUTS_SHAPE = 'send JSON {"inputs": {"<input name>": [[...]]}}'


def parse_inputs(body: Any) -> dict[str, Any]:
    """``{"inputs": {...}}`` from a request body, or a 400."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, dict):
        raise ApiError(400, "BadRequest", INPUTS_SHAPE)
    return inputs


# -- aiohttp glue -----------------------------------------------------------------------
STORE = web.AppKey("store", ModelStore)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON: our :class:`ApiError`, aiohttp's own (404 route, 405), and a 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = ApiError(exc.status, exc.reason.replace(" ", ""), exc.text or exc.reason)
        return web.json_response(error.body(), status=exc.status)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        error = ApiError(500, "InternalError", "the server failed; see its log")
        return web.json_response(error.body(), status=500)


async def healthz(request: web.Request) -> web.Response:
    entries = request.app[STORE].entries()
    return web.json_response(
        {
            "status": "ok",
            "loaded": sorted(e.model.lower() for e in entries if e.state == "ready"),
            "loading": sorted(e.model.lower() for e in entries if e.state == "loading"),
        }
    )


async def list_models(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        models = await store.hub.list_models()
    except HubError as exc:
        raise hub_error(exc) from exc
    states = {e.model: e.state for e in store.entries()}
    return web.json_response(
        [
            {
                "model": info.model,
                "opset": info.opset,
                "tags": sorted(info.tags),
                "bytes": info.metadata.get("model_bytes"),
                "state": states.get(info.model, "absent"),
            }
            for info in models
        ]
    )


async def status(request: web.Request) -> web.Response:
    entry = await request.app[STORE].entry(request.match_info["name"])
    return web.json_response(entry.status())


async def load(request: web.Request) -> web.Response:
    store = request.app[STORE]
    entry = await store.entry(request.match_info["name"])
    store.start(entry)
    code = 200 if entry.state == "ready" else 202
    headers = {"Location": f"/models/{entry.model}"}
    return web.json_response(entry.status(), status=code, headers=headers)


async def predict(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"the body is not JSON ({exc}); {INPUTS_SHAPE}") from exc
    inputs = parse_inputs(body)
    entry = await store.entry(request.match_info["name"])
    outputs = await store.predict(entry, inputs)
    return web.json_response({"outputs": {k: v.tolist() for k, v in outputs.items()}})


def make_app(store: ModelStore) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[STORE] = store
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/models", list_models),
            web.get("/models/{name}", status),
            web.post("/models/{name}/load", load),
            web.post("/models/{name}/predict", predict),
        ]
    )
    return app


async def serve(host: str, port: int, inference_threads: int) -> None:
    """Serve until SIGTERM/SIGINT; then cancel loads, stop the server, close the hub."""
    async with open_store(HubConfig.from_env(), inference_threads=inference_threads) as store:
        runner = web.AppRunner(make_app(store), access_log=None, shutdown_timeout=5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0][1] if runner.addresses else port
            sys.stdout.write(f"serving on http://{host}:{bound}\n")
            sys.stdout.flush()
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("%s: cancelling loads in flight and stopping", signum.name)
                    break
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve ONNX models from the hub over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--inference-threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(serve, args.host, args.port, args.inference_threads)


if __name__ == "__main__":
    main()
