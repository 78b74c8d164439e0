"""Room in the descriptor table is made before a download needs it (asynchub._descriptors): the
kernel's table of a fresh process (``FDSize`` in ``/proc/self/status``) holds 1024 slots once
asynchub has made its loop, and an engine's for its connection budget; nothing is left open,
no open descriptor is replaced, a closed standard input stays closed, and the soft limit is
respected. Each case runs in a fresh interpreter (a table never shrinks)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists() or "FDSize" not in Path("/proc/self/status").read_text(),
    reason="the descriptor table's size is read from Linux's /proc/self/status",
)

PRELUDE = """
import json, os, sys
def fdsize():
    for line in open('/proc/self/status'):
        if line.startswith('FDSize:'):
            return int(line.split()[1])
def open_fds():
    return sorted(int(n) for n in os.listdir('/proc/self/fd'))
"""

SOFT, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)


def _child(code: str, *, stdin: int | None = subprocess.DEVNULL) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + code],
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_making_asynchubs_loop_grows_the_table_first_and_leaves_nothing_open() -> None:
    out = _child(
        "before, fds = fdsize(), open_fds()\n"
        "from asynchub._loops import loop_factory\n"
        "make = loop_factory('asyncio')\n"
        "middle = fdsize()\n"
        "loop = make()\n"
        "after = fdsize()\n"
        "loop.close()\n"
        "print(json.dumps({'before': before, 'middle': middle, 'after': after,\n"
        "                  'same': open_fds() == fds}))\n"
    )
    assert out["before"] == out["middle"] < 1024  # only making the loop reserves
    assert out["after"] >= min(1024, SOFT)
    assert out["same"] is True


def test_an_open_descriptor_at_the_top_is_kept() -> None:
    top = min(1023, SOFT - 1)
    out = _child(
        f"fd = os.open('/dev/null', os.O_RDONLY); os.dup2(fd, {top}); os.close(fd)\n"
        f"ino = os.fstat({top}).st_ino; fds = open_fds()\n"
        "from asynchub._descriptors import reserve\n"
        "room = reserve(1024)\n"
        f"print(json.dumps({{'kept': os.fstat({top}).st_ino == ino, 'same': open_fds() == fds,\n"
        "                  'size': fdsize(), 'room': room}))\n"
    )
    assert out["kept"] is True and out["same"] is True
    assert out["size"] >= top  # the table already reached it
    assert out["room"] in (0, min(1024, SOFT))  # no free number left: nothing done


def test_with_standard_input_closed_it_stays_closed() -> None:
    out = _child(
        "os.close(0)\n"
        "from asynchub._descriptors import reserve\n"
        "room = reserve(1024)\n"
        "try:\n"
        "    os.fstat(0); closed = False\n"
        "except OSError:\n"
        "    closed = True\n"
        "print(json.dumps({'closed': closed, 'size': fdsize(), 'room': room}))\n",
        stdin=None,
    )
    assert out["closed"] is True
    assert out["room"] == min(1024, SOFT)
    assert out["size"] >= min(1024, SOFT)


def test_the_soft_limit_is_respected() -> None:
    out = _child(
        "import resource\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))\n"
        "from asynchub._descriptors import reserve\n"
        "room = reserve(1024)\n"
        "print(json.dumps({'room': room, 'size': fdsize()}))\n"
    )
    assert out["room"] == 300
    assert 300 <= out["size"] < 1024


@pytest.mark.skipif(HARD != resource.RLIM_INFINITY and HARD < 4096, reason="hard limit < 4096")
def test_an_engine_makes_room_for_its_connection_budget(tmp_path: Path) -> None:
    out = _child(
        "import resource\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))\n"
        "from asynchub import HubConfig\n"
        "from asynchub._engine.engine import Engine\n"
        "before = fdsize()\n"
        f"config = HubConfig(cache_dir={str(tmp_path)!r}, max_connections=300,\n"
        "                   max_connections_per_host=300)\n"
        "Engine(config, transport=None)\n"
        "print(json.dumps({'before': before, 'after': fdsize()}))\n"
    )
    assert out["before"] < 1024
    assert out["after"] >= 8 * 300
