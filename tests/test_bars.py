"""The tqdm progress adapter: totals, per-file bars, and never blocking the event loop."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from asynchub._config import HubConfig
from asynchub._hub.client import AsyncHub
from asynchub._progress.bars import ProgressBars, bars_enabled
from asynchub._progress.events import ProgressEvent

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _BlockingStream(io.StringIO):
    """A terminal that hangs on every write until released (a stuck ssh session)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writes_started = threading.Event()

    def write(self, text: str) -> int:
        self.writes_started.set()
        self.release.wait()
        return super().write(text)


def _feed(bars: ProgressBars, name: str, total: int, step: int) -> None:
    bars(ProgressEvent("planned", name, total=total))
    for _ in range(total // step):
        bars(ProgressEvent("transfer", name, nbytes=step, total=total))
        bars(ProgressEvent("verified", name, nbytes=step, total=total))
    bars(ProgressEvent("done", name, total=total))


def test_totals_are_fixed_at_plan_time_and_counted_apart() -> None:
    stream = io.StringIO()
    with ProgressBars(file=stream, interval=0.01) as bars:
        bars(ProgressEvent("planned", "a.onnx", total=1000))
        bars(ProgressEvent("planned", "b.onnx", total=3000))
        bars(ProgressEvent("planned", "c.onnx", total=500))
        bars(ProgressEvent("planned", "a.onnx", total=1000))  # repeated by the engine
        bars(ProgressEvent("cached", "c.onnx", total=500))  # nothing to fetch after all
        bars(ProgressEvent("resumed", "b.onnx", nbytes=1000, total=3000))
        bars(ProgressEvent("transfer", "b.onnx", nbytes=2000, total=3000))
        bars(ProgressEvent("verified", "b.onnx", nbytes=3000, total=3000))
        bars(ProgressEvent("done", "b.onnx", total=3000))
        bars(ProgressEvent("transfer", "a.onnx", nbytes=400, total=1000))
        bars(ProgressEvent("failed", "a.onnx", message="boom"))
        snap = bars.snapshot()
    assert snap == {
        "total": 4000,
        "done": 3400,
        "resumed": 1000,
        "verified": 3000,
        "files": 2,
        "finished": 2,
        "failed": 1,
    }
    output = stream.getvalue()
    assert "files 2/2" in output and "failed 1" in output


def test_large_files_get_their_own_bar_small_ones_do_not() -> None:
    stream = io.StringIO()
    with ProgressBars(file=stream, big_file=1 * MiB, interval=0.01) as bars:
        bars(ProgressEvent("planned", "big/huge-model.onnx", total=4 * MiB))
        bars(ProgressEvent("planned", "small/tiny-model.onnx", total=1000))
        bars(ProgressEvent("transfer", "big/huge-model.onnx", nbytes=MiB, total=4 * MiB))
        bars(ProgressEvent("transfer", "small/tiny-model.onnx", nbytes=500, total=1000))
        bars.render()
        active = set(bars._file_bars)
    assert active == {"big/huge-model.onnx"}
    assert "huge-model.onnx" in stream.getvalue()


def test_a_stuck_terminal_never_slows_the_callback() -> None:
    stream = _BlockingStream()
    bars = ProgressBars(file=stream, interval=0.001)
    try:
        bars(ProgressEvent("planned", "x.onnx", total=10_000_000))
        assert stream.writes_started.wait(10), "the drawing thread should try to draw"
        started = time.perf_counter()
        for _ in range(20_000):
            bars(ProgressEvent("transfer", "x.onnx", nbytes=500, total=10_000_000))
        elapsed = time.perf_counter() - started
        # 20 000 events while the terminal is stuck: well under a second (each is a few µs).
        assert elapsed < 1.0
        assert bars.snapshot()["done"] == 10_000_000
    finally:
        stream.release.set()
        bars.close()


def test_bars_enabled_follows_config_and_terminal(tmp_path: Path) -> None:
    on = HubConfig(cache_dir=tmp_path)
    off = on.replace(progress_bars=False)
    assert bars_enabled(on, _Tty())
    assert not bars_enabled(off, _Tty())
    assert not bars_enabled(on, io.StringIO())
    env_off = HubConfig.from_env(
        {"ASYNCHUB_DISABLE_PROGRESS_BARS": "1", "ASYNCHUB_CACHE_DIR": str(tmp_path)}
    )
    assert not bars_enabled(env_off, _Tty())


def test_importing_ipykernel_is_not_a_notebook(tmp_path: Path) -> None:
    """A process that imports ipykernel (a test runner, notebook tooling) but is no kernel
    gets no bars on a pipe; the kernel case is tests/test_notebook_progress.py."""
    pytest.importorskip("IPython")
    if importlib.util.find_spec("ipykernel") is None:
        pytest.skip("ipykernel is not installed")
    code = (
        "import io, sys, ipykernel.ipkernel, IPython\n"
        "from asynchub._config import HubConfig\n"
        "from asynchub._progress.bars import bars_enabled, in_jupyter_kernel\n"
        f"config = HubConfig(cache_dir={str(tmp_path)!r})\n"
        "print(in_jupyter_kernel(), bars_enabled(config, io.StringIO()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ASYNCHUB_DISABLE_PROGRESS_BARS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


async def test_bars_follow_a_real_prefetch(hub_config: HubConfig) -> None:
    stream = io.StringIO()
    with ProgressBars(file=stream, interval=0.01) as bars:
        async with AsyncHub(hub_config, progress=bars) as hub:
            result = await hub.prefetch(all=True, with_test_data=True)
        snap = bars.snapshot()
    assert not result.failed
    assert snap["total"] == snap["done"] == snap["verified"] == result.bytes_planned
    assert snap["finished"] == snap["files"] == result.files_planned
    assert "100%" in stream.getvalue()


def test_synthetic_feed_renders_to_completion() -> None:
    stream = io.StringIO()
    with ProgressBars(file=stream, interval=0.01) as bars:
        _feed(bars, "m.onnx", 10_000, 1_000)
    assert bars.snapshot()["done"] == 10_000
    assert "100%" in stream.getvalue()
