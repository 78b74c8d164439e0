"""Child processes of the hostile tests: ``python -m tests.hostile.child <mode> '<json>'``.

Each mode reads one JSON object of arguments, uses the public API against a mirror the parent
serves (``MirrorServer(...).running()``), and prints one JSON line of results on stdout. Modes:

``trust``        load from a repo that is not trusted; reports the error (row 3)
``kill``         load or fetch test data and SIGKILL itself at a chosen point (row 9)
``load``         fetch a list of (model, opset) with N coroutines; report SHA-256s (row 12)
``fetch``        fetch a model or its test data; report the path or the error (row 12)
``disk``         fetch into a tiny tmpfs, report the error, grow the tmpfs, fetch again (row 10)

Kill points (``kill`` mode) are reached through the public progress callback and the file
system, never by patching asynchub: ``transfer:K`` dies at the K-th ``transfer`` event (bytes
written, resume state maybe not yet saved), ``last-transfer`` when the last byte is written,
``last-verified`` when the last byte is hashed (before the atomic rename), ``extract:K`` when
the staging directory of the extraction holds K entries, ``state`` when a resume-state write
is seen, ``none`` never.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio

from asynchub import AsyncHub, Hub, HubConfig, ProgressEvent, RetryPolicy

KIB = 1024


def config_from(args: dict[str, Any]) -> HubConfig:
    base = args["base_url"]
    values: dict[str, Any] = {
        "cache_dir": Path(args["cache_dir"]),
        "manifest_url": base + "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json",
        "file_urls": (base + "/{owner}/{repo}/{ref}/{path}",),
        "retry": RetryPolicy(attempts=3, backoff_base=0.001, backoff_cap=0.01),
        "chunk_size": 64 * KIB,
        "min_split_size": 64 * KIB,
        "stall_timeout": 10.0,
        "connect_timeout": 10.0,
        "progress_bars": False,
    }
    values.update(args.get("config", {}))
    if "trusted_repos" in values:
        values["trusted_repos"] = frozenset(values["trusted_repos"])
    return HubConfig(**values)


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def error_result(exc: BaseException) -> dict[str, Any]:
    return {
        "error": type(exc).__name__,
        "message": str(exc),
        "mro": [cls.__name__ for cls in type(exc).__mro__],
    }


# --------------------------------------------------------------------------- trust


def run_trust(args: dict[str, Any]) -> None:
    config = config_from(args)
    try:
        if args.get("api") == "async":

            async def main() -> None:
                async with AsyncHub(config) as hub:
                    await hub.load("TinyNet", repo=args["repo"])

            anyio.run(main)
        else:
            with Hub(config) as hub:
                hub.load("TinyNet", repo=args["repo"])
    except Exception as exc:
        emit(error_result(exc))
        return
    emit({"error": None})


# --------------------------------------------------------------------------- kill


class Killer:
    """Progress callback that SIGKILLs the process at the chosen point."""

    def __init__(self, point: str, cache_dir: Path, size: int) -> None:
        self.point, _, arg = point.partition(":")
        self.arg = int(arg) if arg else 0
        self.cache_dir = cache_dir
        self.size = size
        self.transfers = 0
        self.transferred = 0
        self.verified = 0

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "transfer":
            self.transfers += 1
            self.transferred += event.nbytes
            if self.point == "transfer" and self.transfers >= self.arg:
                die()
            if self.point == "last-transfer" and self.transferred >= self.size:
                die()
        elif event.kind == "verified":
            self.verified += event.nbytes
            if self.point == "last-verified" and self.verified >= self.size:
                die()
        elif event.kind == "done" and self.point == "extract" and event.name.endswith(".tar.gz"):
            threading.Thread(target=self._watch_staging, daemon=True).start()
        elif event.kind == "planned" and self.point == "state":
            threading.Thread(target=self._watch_state, daemon=True).start()

    def _watch_staging(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:  # the walk itself fails when a directory goes away under it
                for staging in self.cache_dir.rglob("*.staging-*"):
                    if sum(1 for _ in staging.rglob("*")) >= self.arg:
                        die()
            except OSError:
                continue
        # the extraction ended before the point was reached: die anyway, after it
        die()

    def _watch_state(self) -> None:
        deadline = time.monotonic() + 30
        seen: dict[str, tuple[int, int]] = {}
        while time.monotonic() < deadline:
            try:  # the walk itself fails when a directory goes away under it
                entries = list(self.cache_dir.rglob("*.partial.json*"))
            except OSError:
                continue
            for entry in entries:
                if entry.name.endswith(".tmp"):
                    die()  # caught in the middle of a state write
                try:  # each write replaces the file: a new inode, whatever the clock's tick
                    status = entry.stat()
                except OSError:
                    continue
                stamp = (status.st_ino, status.st_mtime_ns)
                if seen.setdefault(str(entry), stamp) != stamp:
                    die()  # right after a state write replaced the previous one
                seen[str(entry)] = stamp


def run_kill(args: dict[str, Any]) -> None:
    config = config_from(args)
    killer = Killer(args["point"], config.cache_dir, args["size"])

    async def main() -> None:
        async with AsyncHub(config, progress=killer) as hub:
            if args.get("test_data"):
                await hub.download_model_with_test_data(args["model"], opset=args["opset"])
            else:
                await hub.download(args["model"], opset=args["opset"])

    try:
        anyio.run(main)
    except Exception as exc:
        emit(error_result(exc))
        return
    emit({"error": None, "survived": True})


# --------------------------------------------------------------------------- load


def run_load(args: dict[str, Any]) -> None:
    config = config_from(args)
    jobs: list[tuple[str, int]] = [tuple(job) for job in args["jobs"]]  # type: ignore[misc]
    results: dict[str, set[str]] = {}
    errors: list[str] = []

    async def one(hub: AsyncHub, model: str, opset: int) -> None:
        try:
            path = await hub.download(model, opset=opset)
            if args.get("parse"):
                await hub.load(model, opset=opset)
            digest = await anyio.to_thread.run_sync(
                lambda: hashlib.sha256(path.read_bytes()).hexdigest()
            )
            results.setdefault(f"{model}:{opset}", set()).add(f"{path}|{digest}")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    async def main() -> None:
        async with AsyncHub(config) as hub, anyio.create_task_group() as group:
            for model, opset in jobs:
                group.start_soon(one, hub, model, opset)

    anyio.run(main)
    emit({"results": {k: sorted(v) for k, v in results.items()}, "errors": errors})


# --------------------------------------------------------------------------- fetch


def run_fetch(args: dict[str, Any]) -> None:
    config = config_from(args)
    out: dict[str, Any] = {}

    async def main() -> None:
        async with AsyncHub(config) as hub:
            try:
                if args.get("test_data"):
                    out["path"] = await hub.download_model_with_test_data(
                        args["model"], opset=args["opset"]
                    )
                else:
                    out["path"] = str(await hub.download(args["model"], opset=args["opset"]))
                out["error"] = None
            except Exception as exc:
                out.update(error_result(exc))

    anyio.run(main)
    emit(out)


# --------------------------------------------------------------------------- disk


def run_disk(args: dict[str, Any]) -> None:
    """Fetch into a cache on a small tmpfs (mounted by the parent's ``unshare -m``), report
    the error and what it left behind, grow the tmpfs, fetch again."""
    import subprocess

    from asynchub._cache.layout import cache_path, lock_path
    from tests.hostile.helpers import leftovers, lock_is_free, open_files_under

    config = config_from(args)
    cache = config.cache_dir
    out: dict[str, Any] = {}

    async def attempt() -> dict[str, Any]:
        async with AsyncHub(config) as hub:
            info = await hub.get_model_info(args["model"], opset=args["opset"])
            if args.get("test_data"):
                rel, sha = info.model_with_data_path, info.model_with_data_sha
            else:
                rel, sha = info.model_path, info.model_sha
            assert rel is not None and sha is not None
            final = cache_path(cache, rel, sha)
            result: dict[str, Any] = {"final": str(final)}
            try:
                if args.get("test_data"):
                    result["path"] = await hub.download_model_with_test_data(
                        args["model"], opset=args["opset"]
                    )
                else:
                    result["path"] = str(await hub.download(args["model"], opset=args["opset"]))
                result["error"] = None
            except Exception as exc:
                result.update(error_result(exc))
            locks = [lock_path(final)]
            if args.get("test_data"):
                target = final.with_name(final.name.removesuffix(".tar.gz"))
                locks.append(target.with_name(f".{target.name}.lock"))
                result["target_exists"] = os.path.lexists(target)
            result["final_exists"] = os.path.lexists(final)
            result["locks_free"] = [lock_is_free(p) for p in locks if p.exists()]
            result["leftovers"] = leftovers(cache)
            result["open_files"] = open_files_under(cache)
            if result["error"] is None:
                result["sha"] = hashlib.sha256(final.read_bytes()).hexdigest()
            return result

    out["first"] = anyio.run(attempt)
    subprocess.run(["mount", "-o", f"remount,size={args['large']}", args["mount"]], check=True)
    out["second"] = anyio.run(attempt)
    emit(out)


MODES = {
    "trust": run_trust,
    "kill": run_kill,
    "load": run_load,
    "fetch": run_fetch,
    "disk": run_disk,
}

if __name__ == "__main__":
    MODES[sys.argv[1]](json.loads(sys.argv[2]))
