"""Child process of the network-fault tests: ``python -m tests.hostile.netchild '<json>'``.

Runs one public-API call against servers the parent runs, and prints one JSON line: the result
(or the error's type, message and class names) and the seconds it took. The parent kills the
child after a hard timeout, so a hang fails the test instead of holding the suite.

Arguments: ``base_url`` and ``cache_dir`` (as ``tests.hostile.child``), ``action`` (``list``:
``AsyncHub.list_models()``; ``card``: ``asynchub.mindspore.ainfo(uid)``; ``download``:
``AsyncHub.download(model)``), optional ``manifest_url``, ``file_urls``, ``card_url``,
``retry`` (``RetryPolicy`` fields), ``config`` (other ``HubConfig`` fields) and
``rlimit_data`` (bytes: ``RLIMIT_DATA`` of the child). The result also holds ``maxrss``, the
child's peak resident memory in bytes.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from asynchub import AsyncHub, RetryPolicy
from tests.hostile.child import config_from, emit, error_result


def run(args: dict[str, Any]) -> None:
    if "rlimit_data" in args:  # a runaway allocation fails here instead of swapping
        limit = int(args["rlimit_data"])
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    config = config_from(args)
    changes: dict[str, Any] = {}
    if "retry" in args:
        changes["retry"] = RetryPolicy(**args["retry"])
    if "manifest_url" in args:
        changes["manifest_url"] = args["manifest_url"]
    if "file_urls" in args:
        changes["file_urls"] = tuple(args["file_urls"])
    if "card_url" in args:
        changes["mindspore_card_url"] = args["card_url"]
    config = config.replace(**changes)
    out: dict[str, Any] = {}

    async def main() -> None:
        async with AsyncHub(config) as hub:
            action = args["action"]
            if action == "list":
                out["models"] = sorted({info.model for info in await hub.list_models()})
            elif action == "card":
                from asynchub import mindspore

                card = await mindspore.ainfo(args["uid"], hub=hub)
                out["assets"] = [asset.url for asset in card.assets]
            elif action == "download":
                path = await hub.download(args["model"])
                out["path"] = str(path)
                out["sha"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                raise SystemExit(f"unknown action {action!r}")

    started = time.monotonic()
    try:
        anyio.run(main)
        out["error"] = None
    except Exception as exc:
        out.update(error_result(exc))
    out["elapsed"] = time.monotonic() - started
    out["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    emit(out)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
