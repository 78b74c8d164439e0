"""Child processes of the local-fault tests: ``python -m tests.hostile.child_local MODE JSON``.

Like :mod:`tests.hostile.child` (same argument conventions, public API only), each mode prints
one JSON line; every result also carries ``maxrss`` (this process's peak resident set, bytes)
and ``elapsed`` (seconds spent in the measured call). Modes:

``test-data``   download and extract a model's test data; report the error (archive headers)
``load``        ``Hub.load`` of one model, sync or async; report the error (big manifests)
``lag``         ``AsyncHub.load`` with a 5 ms ticker on the loop; report its largest gap and
                the model's graph name and opset (``preimport``: modules imported first)
``close``       a progress callback closes the sync ``Hub`` during ``download`` (row: close)
``fork``        ``Hub`` used, then ``fork``: the child process downloads with the same hub
``card``        parse hostile MindSpore cards; report the time each took
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import resource
import sys
import time
from typing import Any

import anyio

import asynchub
from asynchub import AsyncHub, Hub, HubClosedError, ProgressEvent
from tests.hostile.child import config_from, error_result


def maxrss() -> int:
    """This process's peak resident set in bytes: ``VmHWM`` of its own memory map.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the peak of the memory map replaced
    by ``execve`` into it, so a child started from a big pytest process would report pytest's
    size."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # pragma: no cover


def emit(result: dict[str, Any]) -> None:
    result["maxrss"] = maxrss()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def run_test_data(args: dict[str, Any]) -> None:
    config = config_from(args)
    out: dict[str, Any] = {"error": None}
    start = time.monotonic()
    try:
        with Hub(config) as hub:
            out["path"] = hub.download_model_with_test_data(args["model"], opset=args["opset"])
    except Exception as exc:
        out.update(error_result(exc))
    out["elapsed"] = time.monotonic() - start
    emit(out)


def run_load(args: dict[str, Any]) -> None:
    config = config_from(args)
    out: dict[str, Any] = {"error": None}
    start = time.monotonic()
    try:
        if args.get("api") == "async":

            async def main() -> None:
                async with AsyncHub(config) as hub:
                    model = await hub.load(args["model"], opset=args.get("opset"))
                    out["graph"] = model.graph.name

            anyio.run(main)
        else:
            with Hub(config) as hub:
                out["graph"] = hub.load(args["model"], opset=args.get("opset")).graph.name
    except Exception as exc:
        out.update(error_result(exc))
    out["elapsed"] = time.monotonic() - start
    emit(out)


def run_lag(args: dict[str, Any]) -> None:
    for module in args.get("preimport", ()):
        # a service that imported these at start-up: their import is not measured (onnx's
        # C++ extension holds the GIL ~0.8 s while it initialises, whichever thread imports it)
        importlib.import_module(module)
    config = config_from(args)
    out: dict[str, Any] = {"error": None}

    async def main() -> None:
        gaps: list[float] = []
        done = anyio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await anyio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last - 0.005)
                last = now

        async with AsyncHub(config) as hub, anyio.create_task_group() as group:
            group.start_soon(ticker)
            await anyio.sleep(0.05)
            start = time.monotonic()
            try:
                model = await hub.load(args["model"], opset=args.get("opset"))
                out["graph"] = model.graph.name
                out["opset"] = max(o.version for o in model.opset_import if o.domain == "")
            except Exception as exc:
                out.update(error_result(exc))
            out["elapsed"] = time.monotonic() - start
            done.set()
        out["max_gap"] = max(gaps)

    anyio.run(main)
    emit(out)


def run_close(args: dict[str, Any]) -> None:
    config = config_from(args)
    out: dict[str, Any] = {"error": None, "callback_error": None}
    hub: Hub | None = None
    closed_at: list[float] = []

    def progress(event: ProgressEvent) -> None:
        if event.kind == "transfer" and not closed_at and hub is not None:
            closed_at.append(time.monotonic())
            try:
                hub.close()
            except Exception as exc:
                out["callback_error"] = error_result(exc)

    hub = Hub(config, progress=progress)
    start = time.monotonic()
    try:
        out["path"] = str(hub.download(args["model"], opset=args["opset"]))
    except Exception as exc:
        out.update(error_result(exc))
    end = time.monotonic()
    out["elapsed"] = end - start
    out["after_close"] = end - closed_at[0] if closed_at else None
    # a closed hub refuses new work at once
    try:
        hub.download(args["model"], opset=args["opset"])
        out["second"] = None
    except HubClosedError as exc:
        out["second"] = error_result(exc)
    emit(out)


def _forked(hub: Hub | None, model: str, opset: int, queue: Any) -> None:
    try:
        path = hub.download(model, opset=opset) if hub else asynchub.download(model, opset=opset)
        queue.put({"path": str(path)})
    except Exception as exc:
        queue.put(error_result(exc))


def run_fork(args: dict[str, Any]) -> None:
    config = config_from(args)
    out: dict[str, Any] = {"error": None}
    context = multiprocessing.get_context("fork")
    if args.get("api") == "default":  # the module-level functions and their default hub
        from asynchub._hub.defaults import reset_defaults

        reset_defaults(config)
    with Hub(config) as own:
        hub = None if args.get("api") == "default" else own
        first, second = args["models"]
        out["parent"] = str(
            hub.download(first[0], opset=first[1])
            if hub
            else asynchub.download(first[0], opset=first[1])
        )
        queue = context.Queue()
        process = context.Process(target=_forked, args=(hub, second[0], second[1], queue))
        start = time.monotonic()
        process.start()
        process.join(args["timeout"])
        out["elapsed"] = time.monotonic() - start
        out["hung"] = process.is_alive()
        if process.is_alive():
            process.kill()
            process.join(10)
        out["exitcode"] = process.exitcode
        out["child"] = queue.get(timeout=5) if not out["hung"] else None
        # the parent's hub still works after the fork
        out["parent_again"] = str(
            hub.download(second[0], opset=second[1])
            if hub
            else asynchub.download(second[0], opset=second[1])
        )
    emit(out)


def run_card(args: dict[str, Any]) -> None:
    from asynchub.mindspore import parse_card

    timings: dict[str, float] = {}
    errors: dict[str, Any] = {}
    with open(args["cards_file"], encoding="utf-8") as handle:
        cards: dict[str, str] = json.load(handle)
    for name, text in cards.items():
        start = time.monotonic()
        try:
            parse_card(text, "hostile/card")
            errors[name] = None
        except Exception as exc:
            errors[name] = error_result(exc)
        timings[name] = time.monotonic() - start
    emit({"timings": timings, "errors": errors})


MODES = {
    "test-data": run_test_data,
    "load": run_load,
    "lag": run_lag,
    "close": run_close,
    "fork": run_fork,
    "card": run_card,
}

if __name__ == "__main__":
    MODES[sys.argv[1]](json.loads(sys.argv[2]))
