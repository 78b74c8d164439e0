"""A mirror that resets every connection after ~100 bytes is abandoned for the next one.

The retry budget is progress-aware: a try that ends in an error only gives the budget back
when the bytes it (and the tries before it) wrote add up to real progress (at least 1 MiB, or a
quarter of the range), not whenever "some bytes flowed". So 100 bytes per connection spend the
budget as fast as a mirror that sends nothing, and the healthy second mirror gets the file.

The client runs in a child process with a hard timeout; the back-off is realistic (50-200 ms)
so the old rule (reset on any byte) would take minutes, not seconds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import REPO_PREFIX
from tests.hostile.helpers import leftovers, write_manifest
from tests.hostile.netfaults import blob_entry, run_netchild
from tests.mirror import Fault, MirrorServer

pytestmark = pytest.mark.timeout(120)

REL = "validated/blob/blob.bin"
FILES = "/{owner}/{repo}/{ref}/{path}"
SIZE = 1024 * 1024


@pytest.mark.parametrize("after", [100, 2000])
def test_mirror_resetting_after_a_few_bytes_is_abandoned(
    after: int, mirror_root: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    data = os.urandom(SIZE)
    (mirror_root / REPO_PREFIX / REL).parent.mkdir(parents=True, exist_ok=True)
    (mirror_root / REPO_PREFIX / REL).write_bytes(data)
    with MirrorServer(mirror_root).running() as good, MirrorServer(mirror_root).running() as bad:
        write_manifest(good, [blob_entry("Blob", REL, data)])
        bad.add_fault(Fault("reset", path="*blob.bin", after_bytes=after, times=None))
        run = run_netchild(
            {
                "base_url": good.url,
                "cache_dir": str(cache),
                "action": "download",
                "model": "Blob",
                "retry": {"attempts": 3, "backoff_base": 0.05, "backoff_cap": 0.2},
                "config": {"max_connections": 4},
                "file_urls": [bad.url + FILES, good.url + FILES],
            },
            timeout=90,
        )
        tries = len(bad.requests_for("*blob.bin"))
        served = good.served_bytes("*blob.bin")
    assert run.result is not None, run.stderr[-2000:]
    assert run.result["error"] is None, run.result
    assert run.result["sha"] == hashlib.sha256(data).hexdigest()
    assert served > 0, "the healthy mirror was never asked"
    # 4 connections x (1 + 3 retries), plus a few that were already in flight
    assert tries <= 4 * 4 + 8, f"{tries} requests to the resetting mirror"
    assert run.result["elapsed"] < 30, run.result
    assert leftovers(cache) == []
