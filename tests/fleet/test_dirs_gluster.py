"""Cache directories created at the same moment from two mounts of one GlusterFS volume ("two
hosts"): each host must end with the directory, never with an error.

Seen in the fleet test: host A's ``mkdir`` of a directory host B had just created failed with
``EEXIST``, and the ``lstat`` right after it still answered ``ENOENT`` (the FUSE client's
cached lookup), so a download failed with "No such file or directory".
"""

from __future__ import annotations

import multiprocessing
import secrets
import traceback
from pathlib import Path
from typing import Any

import pytest

from asynchub._cache.layout import ensure_dir
from tests.fleet.system import GlusterVolume

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(300)]

#: New directory trees each process creates, in step with the others (a barrier per tree).
TREES = 60
#: Processes per mount.
PER_MOUNT = 2


def _create(root: Path, barrier: Any, out: Path) -> None:
    """Child process: create ``d<i>/model/files`` under ``root`` for every tree, each right
    after every process reached the barrier; write the errors (one per line) to ``out``."""
    errors = []
    for tree in range(TREES):
        barrier.wait(60)
        try:
            ensure_dir(root, root / f"d{tree}" / "model" / "files")
        except Exception:  # every failure is reported to the test
            errors.append(f"tree {tree}: " + traceback.format_exc(limit=3).replace("\n", " | "))
    out.write_text("\n".join(errors))


def test_both_hosts_create_the_same_new_directories_at_once(
    gluster: GlusterVolume, tmp_path: Path
) -> None:
    name = f"dirs-{secrets.token_hex(4)}"
    (gluster.mounts[0] / name).mkdir()
    roots = [mount / name for mount in gluster.mounts]
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(PER_MOUNT * len(roots))
    outs, processes = [], []
    for index in range(PER_MOUNT * len(roots)):
        out = tmp_path / f"errors-{index}.txt"
        root = roots[index % len(roots)]
        process = context.Process(target=_create, args=(root, barrier, out))
        process.start()
        outs.append(out)
        processes.append(process)
    for process in processes:
        process.join(240)
        assert process.exitcode == 0
    errors = [line for out in outs for line in out.read_text().splitlines() if line]
    assert errors == []
    for root in roots:
        assert all((root / f"d{tree}" / "model" / "files").is_dir() for tree in range(TREES))
