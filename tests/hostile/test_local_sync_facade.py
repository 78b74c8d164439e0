"""The sync façade under process faults: ``fork`` after the ``Hub`` started its loop thread,
and ``Hub.close()`` called from inside a progress callback. Both hung forever before; both run
in a child process under a hard timeout here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_PREFIX
from tests.hostile.helpers import entry, final_model
from tests.hostile.local_helpers import MAX_MESSAGE, run_local
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("api", ["hub", "default"])
def test_fork_after_the_hub_started_downloads_in_the_child(
    api: str, mirror_root: Path, zoo_manifest: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The default ``multiprocessing`` start method on Linux: the parent used a ``Hub`` (or the
    module-level functions' default hub), its loop thread runs, then it forks; the child's first
    download must work on its own loop."""
    cache = tmp_path / "cache"
    with MirrorServer(mirror_root).running() as server:
        run = run_local(
            "fork",
            {
                "base_url": server.url,
                "cache_dir": str(cache),
                "models": [["TinyNet", 12], ["MicroNet", 11]],
                "timeout": 30,
                "api": api,
            },
            timeout=90,
        )
    assert run.result is not None, run.stderr[-2000:]
    result = run.result
    assert not result["hung"], f"the forked child hung for {result['elapsed']:.0f} s"
    assert result["exitcode"] == 0
    raw = entry(zoo_manifest, "MicroNet", 11)
    expected = final_model(cache, raw)
    assert result["child"] == {"path": str(expected)}
    assert hashlib.sha256(expected.read_bytes()).hexdigest() == raw["metadata"]["model_sha"]
    assert expected.read_bytes() == (mirror_root / REPO_PREFIX / raw["model_path"]).read_bytes()
    assert result["parent_again"] == str(expected)


def test_close_inside_a_progress_callback_ends_the_download(
    mirror_root: Path, tmp_path: Path
) -> None:
    """The callback runs on the hub's loop thread; ``close()`` there must cancel the work and
    the caller's ``download()`` must raise ``HubClosedError`` promptly (it waited forever)."""
    cache = tmp_path / "cache"
    with MirrorServer(mirror_root, rate_limit=256 * 1024).running() as server:
        run = run_local(
            "close",
            {"base_url": server.url, "cache_dir": str(cache), "model": "TinyNet", "opset": 13},
            timeout=60,
        )
    assert run.result is not None, run.stderr[-2000:]
    result = run.result
    assert result["callback_error"] is None, result["callback_error"]
    assert result["error"] == "HubClosedError", result
    assert len(result["message"]) < MAX_MESSAGE
    assert result["after_close"] < 10, f"download() returned {result['after_close']:.1f} s late"
    assert result["second"] is not None and result["second"]["error"] == "HubClosedError"
