"""Waiting for a connection slot is not a stall.

With ``max_connections_per_host`` below ``max_connections``, a file's extra workers queue for a
connection to the one host. The stall/slow-rate watchdog only starts timing a request once it
holds a connection, so the queued ones are not cut (before, a 64 MiB download failed with
"0 B/s over 30 s" while bytes flowed steadily).

Here: 8 workers, 2 connections to the host, a mirror pacing each answer at 128 KiB/s, and a
1-second stall timeout: every queued worker waits longer than the stall timeout.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from asynchub import AsyncHub, ProgressEvent
from tests.conftest import REPO_PREFIX, mirror_config
from tests.hostile.helpers import leftovers, write_manifest
from tests.hostile.netfaults import blob_entry
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)

REL = "validated/blob/blob.bin"
SIZE = 1024 * 1024


async def test_queued_requests_are_not_stalls(mirror_root: Path, tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    (mirror_root / REPO_PREFIX / REL).parent.mkdir(parents=True, exist_ok=True)
    (mirror_root / REPO_PREFIX / REL).write_bytes(data)
    events: list[ProgressEvent] = []
    async with MirrorServer(mirror_root, rate_limit=128 * 1024) as mirror:
        write_manifest(mirror, [blob_entry("Blob", REL, data)])
        config = mirror_config(
            mirror.url,
            tmp_path / "cache",
            max_connections=8,
            max_connections_per_host=2,
            stall_timeout=1.0,
            rate_window=1.0,
            min_rate=1024,
        )
        with anyio.fail_after(45):
            async with AsyncHub(config, progress=events.append) as hub:
                path = await hub.download("Blob")
    assert path.read_bytes() == data
    retries = [e.message for e in events if e.kind == "retry"]
    assert retries == [], retries
    assert leftovers(tmp_path / "cache") == []
