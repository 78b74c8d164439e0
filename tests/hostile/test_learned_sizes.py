"""Sizes a server announces for a file of unknown size are bounded before anything is built.

A manifest entry without ``model_bytes`` (or a MindSpore asset) has no size until the probe's
``Content-Range`` total tells one. That total is capped like the manifest's own sizes
(``HubConfig.max_learned_size``, 2**50 by default: :data:`asynchub._manifest.MAX_SIZE`) and
checked against the free space of the cache's file system before the partial is reserved or
the chunk plan is built, so 2**46, 2**48 or 2**80 cost a typed error, not gigabytes of memory.
A body without any size (close-delimited) stops at the same cap with a typed error.

The clients run in child processes with a hard timeout and ``RLIMIT_DATA`` of 1 GiB, so a
runaway allocation fails (``MemoryError``) instead of swapping the machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_PREFIX
from tests.hostile.helpers import leftovers, write_manifest
from tests.hostile.netfaults import RawServer, blob_entry, endless_body, ranged_file, run_netchild
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(120)

REL = "validated/blob/blob.bin"
FILES = "/{owner}/{repo}/{ref}/{path}"
GIB = 1024**3
MIB = 1024**2
RSS_BOUND = 600 * MIB


def _args(mirror: MirrorServer, cache: Path, first: str, **config: Any) -> dict[str, Any]:
    return {
        "base_url": mirror.url,
        "cache_dir": str(cache),
        "action": "download",
        "model": "Blob",
        "rlimit_data": GIB,
        "retry": {"attempts": 1, "backoff_base": 0.001, "backoff_cap": 0.01},
        "config": {"chunk_size": 16 * MIB, "min_split_size": 64 * 1024, **config},
        "file_urls": [first + FILES],
    }


def _typed(result: dict[str, Any]) -> None:
    assert result["error"] is not None, result
    assert "HubError" in result["mro"], result
    assert len(result["message"]) <= 2000


@pytest.mark.parametrize("total", [2**46, 2**48, 2**80], ids=["2^46", "2^48", "2^80"])
def test_huge_learned_size_is_refused_before_allocating(
    total: int, mirror_root: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    data = os.urandom(100_000)
    with MirrorServer(mirror_root).running() as mirror:
        write_manifest(mirror, [blob_entry("Blob", REL, data, sized=False)])

        def lie(start: int, end: int, _: int) -> str:
            return f"bytes {start}-{end}/{total}"

        with RawServer(ranged_file(data, content_range=lie)).running() as raw:
            run = run_netchild(_args(mirror, cache, raw.url), timeout=60)
    assert run.result is not None, run.stderr[-2000:]
    _typed(run.result)
    assert run.result["maxrss"] < RSS_BOUND, run.result["maxrss"]
    assert leftovers(cache) == []


def test_learned_size_above_the_configured_cap_is_refused(
    mirror_root: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    data = os.urandom(300_000)
    (mirror_root / REPO_PREFIX / REL).parent.mkdir(parents=True, exist_ok=True)
    (mirror_root / REPO_PREFIX / REL).write_bytes(data)
    with MirrorServer(mirror_root).running() as mirror:
        write_manifest(mirror, [blob_entry("Blob", REL, data, sized=False)])
        run = run_netchild(_args(mirror, cache, mirror.url, max_learned_size=100_000), timeout=60)
        asked = mirror.requests_for("*blob.bin")
    assert run.result is not None, run.stderr[-2000:]
    _typed(run.result)
    assert "100000" in run.result["message"] or "97.7 KiB" in run.result["message"]
    assert len(asked) == 1, "the probe's answer was not enough to refuse the file"
    assert leftovers(cache) == []


def test_endless_unsized_body_stops_at_the_cap(mirror_root: Path, tmp_path: Path) -> None:
    """A close-delimited ``200`` that never ends (sent as fast as the client reads it)."""
    cache = tmp_path / "cache"
    data = os.urandom(1000)
    cap = 2 * MIB
    with MirrorServer(mirror_root).running() as mirror:
        write_manifest(mirror, [blob_entry("Blob", REL, data, sized=False)])
        with RawServer(endless_body()).running() as raw:
            run = run_netchild(_args(mirror, cache, raw.url, max_learned_size=cap), timeout=60)
    assert run.result is not None, run.stderr[-2000:]
    _typed(run.result)
    assert leftovers(cache) == []
    assert not any(p.is_file() for p in cache.rglob("*blob.bin")), "unverified bytes cached"
