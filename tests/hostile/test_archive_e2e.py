"""Row 11 end to end: a repo whose manifest names a hostile test-data archive (with its true
SHA-256, so the download itself verifies) gets an ``ArchiveError`` from
``download_model_with_test_data``; nothing appears outside the cache's staging directory, the
staging directory is gone, and no extraction target is published.

The archive builders are the ones of ``test_archive.py``, which tests the extractor itself.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asynchub import ArchiveError, AsyncHub, HubConfig
from tests.conftest import REPO_PREFIX
from tests.hostile.helpers import entry, final_archive, leftovers, with_archive, write_manifest
from tests.hostile.test_archive import (
    Member,
    _cve_2025_4517_chain,
    build,
    good_members,
    reg,
    special,
)
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)

REL = "validated/vision/classification/tinynet/model/tinynet-13-hostile.tar.gz"

CASES: dict[str, Callable[[], list[Member]]] = {
    "dotdot": lambda: [*good_members(), reg("../../../../evil/x")],
    "sibling-prefix": lambda: [*good_members(), reg("../tinynet-13-hostile_evil/x")],
    "absolute": lambda: [*good_members(), reg("/tmp/asynchub-abs-evil/x")],
    "symlink-then-write": lambda: [
        *good_members(),
        special("mnist/up", tarfile.SYMTYPE, "../../../../evil"),
        reg("mnist/up/x"),
    ],
    "hardlink": lambda: [*good_members(), special("mnist/hl", tarfile.LNKTYPE, "/etc/passwd")],
    "empty-named-link": lambda: [*good_members(), special("", tarfile.LNKTYPE, "")],
    "cve-2025-4517": lambda: [*good_members(), *_cve_2025_4517_chain()],
    "fifo": lambda: [*good_members(), special("mnist/pipe", tarfile.FIFOTYPE)],
    "device": lambda: [*good_members(), special("mnist/tty", tarfile.CHRTYPE)],
    "duplicate": lambda: [*good_members(), reg("mnist/model.onnx", b"evil")],
    "gzip-bomb": lambda: [*good_members(), reg("mnist/bomb.bin", b"\0" * (40 * 1024 * 1024))],
}


def _snapshot(root: Path) -> set[str]:
    found: set[str] = set()
    for current, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(current, name), root))
    return found


@pytest.mark.parametrize("case", sorted(CASES))
async def test_hostile_archive_from_a_repo_is_refused(
    case: str,
    mirror: MirrorServer,
    hub_config: HubConfig,
    zoo_manifest: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    blob = build(CASES[case]())
    mirror.set_file(f"{REPO_PREFIX}/{REL}", blob)
    raw = with_archive(entry(zoo_manifest, "TinyNet", 13), REL, blob)
    write_manifest(mirror, [raw])
    outside = {p for p in _snapshot(tmp_path) if not p.startswith(("cache", "mirror"))}
    async with AsyncHub(hub_config) as hub:
        with pytest.raises(ArchiveError) as caught:
            await hub.download_model_with_test_data("TinyNet", opset=13)
    assert "unsafe or broken" in str(caught.value)
    archive = final_archive(hub_config.cache_dir, raw)
    target = archive.with_name(archive.name.removesuffix(".tar.gz"))
    assert archive.is_file(), "the verified archive itself stays cached"
    assert not os.path.lexists(target)
    assert leftovers(hub_config.cache_dir) == [], "the staging directory was not removed"
    assert not list(hub_config.cache_dir.rglob("*evil*"))
    after = {p for p in _snapshot(tmp_path) if not p.startswith(("cache", "mirror"))}
    assert after == outside, f"written outside the cache: {after - outside}"
    assert not os.path.lexists("/tmp/asynchub-abs-evil")
