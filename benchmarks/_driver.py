"""The shared entry point of the one-call driver scripts (``_drive_*.py``).

A driver is run as ``python _drive_X.py '<json params>'``; it prints one JSON object (its
measurements, or ``{"error": ...}``) and exits 0 or 1. Standard library only: the onnx.hub
driver runs in its own virtual environment.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def run_driver(run: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    params = json.loads(sys.argv[1])
    try:
        result = run(params)
    except Exception as exc:  # reported to the harness, which marks the run failed
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]}))
        return 1
    print(json.dumps(result))
    return 0
