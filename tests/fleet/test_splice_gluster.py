"""Spliced ranges written into a partial on a GlusterFS (FUSE) mount: the kernel moves the
bytes from the pipes into a file of a file system in user space, and the cached file is
the server's, byte for byte; the hash reads it back with ``preadv``, never through a map."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import anyio
import pytest

from asynchub._engine.mapped import mappable
from asynchub._transport.splicing import AVAILABLE
from tests.fleet.system import GlusterVolume
from tests.mirror import MirrorServer
from tests.test_splice import engine_fetch, wide_config
from tests.test_transfer import MIB, put

pytestmark = [
    pytest.mark.fleet,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not AVAILABLE, reason="splice is Linux only"),
]


def test_spliced_ranges_land_intact_on_a_fuse_mount(
    gluster: GlusterVolume, tmp_path: Path
) -> None:
    home = gluster.mounts[0] / f"splice-{secrets.token_hex(4)}"
    home.mkdir()
    blob = put(tmp_path / "mirror", "model.onnx", 24 * MIB, seed=9)
    config = wide_config(home / "cache")

    async def main() -> tuple[Path, int]:
        async with MirrorServer(tmp_path / "mirror") as server:
            return await engine_fetch(server.url, blob, home / "cache", config)

    path, spliced = anyio.run(main)
    assert spliced >= 4 * MIB
    seen_elsewhere = gluster.mounts[1] / path.relative_to(gluster.mounts[0])
    assert path.read_bytes() == blob.data
    assert seen_elsewhere.read_bytes() == blob.data  # the other mount reads the same bytes
    fd = os.open(path, os.O_RDONLY)
    try:  # a FUSE file system's read may fail: never hashed through a memory map
        assert not mappable(fd)
    finally:
        os.close(fd)
