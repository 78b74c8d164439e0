"""The sync façade's event-loop thread: the hand-made loop thread of ``asynchub._hub.sync``
against anyio's blocking portal, on what a sync user pays and sees.

Three ways to run coroutines for sync callers:

* ``own``: an asyncio loop on a daemon thread, ``run_coroutine_threadsafe`` (what
  ``asynchub._hub.sync._LoopThread`` does: the loop runs one long-lived root task);
* ``portal``: ``anyio.from_thread.start_blocking_portal()`` entered for the hub's life;
* ``portal-daemon``: an ``anyio.from_thread.BlockingPortal`` served by ``anyio.run`` on a
  daemon thread we start ourselves (the portal's API without its thread pool).

Measured per variant, each in a fresh child process:

* ``start_ms``: first call (thread and loop start-up) of a no-op coroutine;
* ``call_us``: median round trip of a no-op coroutine from the caller's thread (2000 calls);
* ``to_thread_ms``: one call that makes 200 ``anyio.to_thread.run_sync`` calls (the engine
  does several per file and per flushed piece);
* ``exit_s``: how long the process takes to exit when the user never calls ``close()``
  (``timeout`` = still running after 10 s: the interpreter waits for the portal's
  non-daemon worker thread before ``atexit`` handlers could stop it).

Run from the project root::

    python benchmarks/sync_portal.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

VARIANTS = ("own", "portal", "portal-daemon")

CHILD = r"""
import asyncio, json, statistics, sys, threading, time
import anyio, anyio.from_thread, anyio.to_thread
import anyio._backends._asyncio  # imported up front by every variant: start-up compares threads

variant, mode = sys.argv[1], sys.argv[2]

async def noop():
    return None

async def threads():
    for _ in range(200):
        await anyio.to_thread.run_sync(lambda: None)

t0 = time.perf_counter()
if variant == "own":
    loop = asyncio.new_event_loop()
    stop = loop.create_future()
    ready = threading.Event()
    async def root():
        ready.set()
        await stop
    def main():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(root())
    threading.Thread(target=main, daemon=True).start()
    ready.wait()
    call = lambda fn: asyncio.run_coroutine_threadsafe(fn(), loop).result()
elif variant == "portal":
    cm = anyio.from_thread.start_blocking_portal()
    portal = cm.__enter__()
    call = portal.call
else:
    box = []
    ready = threading.Event()
    async def serve():
        async with anyio.from_thread.BlockingPortal() as p:
            box.append(p)
            ready.set()
            await p.sleep_until_stopped()
    threading.Thread(target=anyio.run, args=(serve,), daemon=True).start()
    ready.wait()
    call = box[0].call
call(noop)
start_ms = (time.perf_counter() - t0) * 1e3
if mode == "exit":
    print(json.dumps({"started": True}), flush=True)
    sys.exit(0)  # no close(): does the process exit?
samples = []
for _ in range(2000):
    t = time.perf_counter()
    call(noop)
    samples.append(time.perf_counter() - t)
t = time.perf_counter()
call(threads)
to_thread_ms = (time.perf_counter() - t) * 1e3
print(json.dumps({"start_ms": start_ms, "call_us": statistics.median(samples) * 1e6,
                  "to_thread_ms": to_thread_ms}), flush=True)
import os
os._exit(0)
"""


def _child(variant: str, mode: str) -> tuple[dict[str, Any], float | None]:
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, variant, mode],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return json.loads(out.splitlines()[0]) if out else {}, None
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.splitlines()[0]), took


def main() -> None:
    rows = []
    for variant in VARIANTS:
        runs = [_child(variant, "measure")[0] for _ in range(5)]
        _, exit_s = _child(variant, "exit")
        rows.append(
            {
                "variant": variant,
                "start_ms": statistics.median(r["start_ms"] for r in runs),
                "call_us": statistics.median(r["call_us"] for r in runs),
                "to_thread_ms": statistics.median(r["to_thread_ms"] for r in runs),
                "exit_s": "timeout" if exit_s is None else round(exit_s, 2),
            }
        )
    print(f"{'variant':<15}{'start ms':>10}{'call us':>10}{'200 to_thread ms':>18}{'exit s':>9}")
    for r in rows:
        print(
            f"{r['variant']:<15}{r['start_ms']:>10.1f}{r['call_us']:>10.1f}"
            f"{r['to_thread_ms']:>18.1f}{r['exit_s']!s:>9}"
        )


if __name__ == "__main__":
    main()
