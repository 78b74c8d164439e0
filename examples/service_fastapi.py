"""The model server of ``service.py`` on FastAPI, with a ``lifespan`` that owns the hub.

    pip install fastapi uvicorn
    python examples/service_fastapi.py --host 127.0.0.1 --port 8080
    # or: uvicorn service_fastapi:app  (from the examples directory)

The same endpoints, JSON shapes and choices as ``service.py`` (whose :class:`ModelStore`,
:func:`open_store` and error shape this file reuses; copy both files together):

* The ``lifespan`` opens the store (one :class:`asynchub.AsyncHub` and one task group) at
  start-up and leaves it at shutdown, which cancels loads still in flight. Uvicorn runs the
  lifespan's start and end in one task, which a task group needs.
* On SIGTERM uvicorn stops accepting, lets running requests finish (they are short: a load is
  started in the background and answered with ``202``), then ends the lifespan.
* Errors are ``{"error": {"type", "message"}}`` with the right status, FastAPI's own (unknown
  route, invalid body) included.
"""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from service import ApiError, Entry, ModelStore, hub_error, open_store
from starlette.exceptions import HTTPException as StarletteHTTPException

from asynchub import HubConfig, HubError

log = logging.getLogger("asynchub.example")


class PredictBody(BaseModel):
    inputs: dict[str, Any]


def create_app(config: HubConfig | None = None, *, inference_threads: int = 2) -> FastAPI:
    """The app; its settings are read when it starts (``HubConfig.from_env()`` by default)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings = config if config is not None else HubConfig.from_env()
        async with open_store(settings, inference_threads=inference_threads) as store:
            app.state.store = store
            yield
        log.info("stopped: loads in flight were cancelled, the hub is closed")

    app = FastAPI(title="asynchub model server", lifespan=lifespan)

    def store_of(request: Request) -> ModelStore:
        store: ModelStore = request.app.state.store
        return store

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ApiError(exc.status_code, "HTTPError", str(exc.detail))
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        error = ApiError(400, "BadRequest", f'send JSON {{"inputs": {{...}}}} ({problems})')
        return JSONResponse(error.body(), status_code=400)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        entries = store_of(request).entries()
        return {
            "status": "ok",
            "loaded": sorted(e.model.lower() for e in entries if e.state == "ready"),
            "loading": sorted(e.model.lower() for e in entries if e.state == "loading"),
        }

    @app.get("/models")
    async def list_models(request: Request) -> list[dict[str, Any]]:
        store = store_of(request)
        try:
            models = await store.hub.list_models()
        except HubError as exc:
            raise hub_error(exc) from exc
        states = {e.model: e.state for e in store.entries()}
        return [
            {
                "model": info.model,
                "opset": info.opset,
                "tags": sorted(info.tags),
                "bytes": info.metadata.get("model_bytes"),
                "state": states.get(info.model, "absent"),
            }
            for info in models
        ]

    @app.get("/models/{name}")
    async def status(name: str, request: Request) -> dict[str, Any]:
        entry: Entry = await store_of(request).entry(name)
        return entry.status()

    @app.post("/models/{name}/load")
    async def load(name: str, request: Request) -> JSONResponse:
        store = store_of(request)
        entry = await store.entry(name)
        store.start(entry)
        return JSONResponse(
            entry.status(),
            status_code=200 if entry.state == "ready" else 202,
            headers={"Location": f"/models/{entry.model}"},
        )

    @app.post("/models/{name}/predict")
    async def predict(name: str, body: PredictBody, request: Request) -> dict[str, Any]:
        store = store_of(request)
        entry = await store.entry(name)
        outputs = await store.predict(entry, body.inputs)
        return {"outputs": {k: v.tolist() for k, v in outputs.items()}}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve ONNX models from the hub (FastAPI).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--inference-threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Bind (and listen) here so that port 0 can be printed: connections made before uvicorn
    # has finished its start-up wait in the listen queue. IPPROTO_TCP matters: asyncio sets
    # TCP_NODELAY only on sockets whose protocol says TCP, and without it every keep-alive
    # answer (headers and body are two writes) waited ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    print(f"serving on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    app = create_app(inference_threads=args.inference_threads)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5))
    server.run(sockets=[sock])


app = create_app()

if __name__ == "__main__":
    main()
