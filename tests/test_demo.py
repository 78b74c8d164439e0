"""``asynchub demo`` runs end to end with nothing but loopback, ignoring the user's sources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end_and_ignores_asynchub_sources(tmp_path: Path) -> None:
    env = dict(os.environ)
    # Sources that would fail if the demo read them: it must build its own config.
    env["ASYNCHUB_MANIFEST_URL"] = "http://127.0.0.1:9/{owner}/{repo}/{ref}/nothing.json"
    env["ASYNCHUB_FILE_URLS"] = "http://127.0.0.1:9/{path}"
    env["ASYNCHUB_OFFLINE"] = "1"
    cache = tmp_path / "demo-cache"
    proc = subprocess.run(
        [sys.executable, "-m", "asynchub", "demo", "--cache-dir", str(cache)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "7 entries, 5 models" in out  # the zoo was listed
    assert "13 fetched, 0 already cached, 0 failed" in out  # the whole zoo, test data included
    assert "matches output_0.pb" in out
    assert "warm load of TinyNet" in out and "MB/s" in out and "demo OK" in out
    cached = list(cache.rglob("*_tinynet-13.onnx"))
    assert len(cached) == 1 and cached[0].stat().st_size > 300_000
