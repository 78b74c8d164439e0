"""Error messages stay short whatever the servers send or how many mirrors failed.

A ``MirrorsExhaustedError`` names at most four mirrors' errors, each cut in its middle to 400
characters (its ``errors`` attribute keeps them all), so twelve failing mirrors with long URLs
still make a message a person reads in one go.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from asynchub import AsyncHub, MirrorsExhaustedError
from tests.conftest import mirror_config
from tests.hostile.helpers import write_manifest
from tests.hostile.netfaults import blob_entry
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)


async def test_many_failing_mirrors_make_a_bounded_message(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    data = os.urandom(1000)
    write_manifest(mirror, [blob_entry("Blob", "validated/blob/blob.bin", data)])
    long = "x" * 200
    urls = tuple(f"{mirror.url}/missing-{i}-{long}/{{path}}" for i in range(12))
    async with AsyncHub(mirror_config(mirror.url, tmp_path / "cache", file_urls=urls)) as hub:
        with pytest.raises(MirrorsExhaustedError) as caught:
            await hub.download("Blob")
    assert len(caught.value.errors) == 12
    message = str(caught.value)
    assert len(message) <= 2000, len(message)
    assert "and 8 more" in message
    assert "HTTP 404" in message
