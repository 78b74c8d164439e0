"""Helpers of the local-fault tests (``tests/hostile/test_local_*.py``).

``run_local`` starts ``python -m tests.hostile.child_local <mode> <json>`` from the project root
with a hard timeout: a child that hangs is killed and the test fails saying so. Children report
their own peak RSS (``maxrss``), so memory bounds need no polling from here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.hostile.helpers import ROOT, ChildRun

MB = 1000 * 1000
#: Longest error message a test accepts (errors must be short whatever the input was).
MAX_MESSAGE = 1000


def run_local(mode: str, args: dict[str, Any], timeout: float = 60) -> ChildRun:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.hostile.child_local", mode, json.dumps(args)],
            cwd=ROOT,
            env=env,
            text=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the child process ({mode}) hung for {timeout} s") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    return ChildRun(proc.returncode, result, proc.stdout, proc.stderr)
