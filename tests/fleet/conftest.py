"""Fixtures of the fleet tests: a GlusterFS volume mounted twice, a zoo of multi-chunk models.

``gluster`` (session scope) installs ``glusterfs-server glusterfs-client`` with apt-get when
they are missing, starts glusterd if it is not running, maps the machine's host name to
127.0.0.1 in ``/etc/hosts`` if it is not, creates a one-brick volume under a temp directory and
mounts it twice; everything it did is undone at the end of the session. It skips only where
root or FUSE is missing; any other failure is an error (the tests must run in CI).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asynchub._demo.zoo import ZooModel, build_zoo
from tests.conftest import REPO_PREFIX
from tests.fleet.system import (
    GlusterVolume,
    ensure_packages,
    gluster_volume,
    glusterd_running,
    loopback_host_name,
    why_not_root_with_fuse,
)

MIB = 1024 * 1024

#: Three affine models of ~3 MiB: each is 12 Range chunks of 256 KiB.
FLEET_MODELS = (
    ZooModel("FleetA", 13, ("vision", "fleet"), size=3 * MIB, test_data=False),
    ZooModel("FleetB", 13, ("vision", "fleet"), size=3 * MIB, test_data=False),
    ZooModel("FleetC", 13, ("vision", "fleet"), size=3 * MIB, test_data=False),
)


@pytest.fixture(scope="session")
def fleet_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet-zoo")
    build_zoo(out, FLEET_MODELS, seed=14)
    return out


@pytest.fixture
def fleet_mirror_root(fleet_zoo: Path, tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    shutil.copytree(fleet_zoo, root / REPO_PREFIX)
    return root


@pytest.fixture
def fleet_manifest(fleet_zoo: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((fleet_zoo / "ONNX_HUB_MANIFEST.json").read_text())
    return data


@pytest.fixture(scope="session")
def gluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlusterVolume]:
    reason = why_not_root_with_fuse()
    if reason is not None:
        pytest.skip(f"GlusterFS fleet tests: {reason}")
    ensure_packages(
        ["glusterfs-server", "glusterfs-client"], ["glusterd", "gluster", "mount.glusterfs"]
    )
    workdir = tmp_path_factory.mktemp("gluster")
    with loopback_host_name() as host, glusterd_running(), gluster_volume(workdir, host) as vol:
        yield vol
