"""One node of a fleet: ``python -m tests.fleet.child '<json>'``.

Loads a list of ``[model, opset]`` with the public API (``Hub.load`` one after the other,
like a service starting up), the cache taken from the environment (``ONNX_HOME``, or the
``ASYNCHUB_*`` variables when the JSON has no ``base_url``), and prints one JSON line:
``{"results": {"Name:opset": [path, sha256 of the file]}, "errors": [...]}``.

JSON keys: ``jobs``; ``base_url`` (a mirror in GitHub layout, optional); ``config`` (extra
``HubConfig`` fields, e.g. ``{"use_locks": false}``); ``umask`` (octal text, set first).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from typing import Any

from asynchub import Hub, HubConfig, RetryPolicy

KIB = 1024


def config_from(args: dict[str, Any]) -> HubConfig:
    values: dict[str, Any] = {
        "retry": RetryPolicy(attempts=4, backoff_base=0.01, backoff_cap=0.1),
        "chunk_size": 256 * KIB,
        "min_split_size": 256 * KIB,
        "max_connections": 4,
        "stall_timeout": 20.0,
        "connect_timeout": 10.0,
        "progress_bars": False,
    }
    base = args.get("base_url")
    if base:
        values["manifest_url"] = base + "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json"
        values["file_urls"] = (base + "/{owner}/{repo}/{ref}/{path}",)
    values.update(args.get("config", {}))
    return HubConfig.from_env(**values)


def main() -> None:
    args: dict[str, Any] = json.loads(sys.argv[1])
    if args.get("umask"):
        os.umask(int(args["umask"], 8))
    results: dict[str, list[str]] = {}
    errors: list[str] = []
    hub = Hub(config_from(args))
    try:
        for model, opset in args["jobs"]:
            try:
                proto = hub.load(model, opset=opset)
                path = hub.download(model, opset=opset)  # cached now: no request
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                assert proto.graph.node, "loaded an empty graph"
                results[f"{model}:{opset}"] = [str(path), digest]
            except Exception as exc:
                where = traceback.format_exc(limit=-4)
                errors.append(f"{model}:{opset}: {type(exc).__name__}: {exc}\n{where}")
    finally:
        hub.close()
    sys.stdout.write(json.dumps({"results": results, "errors": errors}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
