"""The event loop of the sync API and the CLI (``HubConfig.event_loop``): uvloop where it is
installed, asyncio's on request, and downloads (ranged, over verified TLS) that work the same
on both."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from asynchub import Hub, HubConfig
from asynchub._exceptions import ConfigError
from asynchub._progress.events import ProgressEvent
from tests.conftest import mirror_config
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _tls_mirror(mirror_root: Path, tmp_path: Path) -> tuple[MirrorServer, Path]:
    """A mirror over HTTPS with a throw-away CA, and that CA's PEM file."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return MirrorServer(mirror_root, ssl_context=server_ctx), pem


@pytest.mark.parametrize("kind", ["auto", "asyncio", "uvloop"])
def test_the_sync_api_runs_on_the_loop_chosen_and_downloads_over_tls(
    kind: str, mirror_root: Path, tmp_path: Path
) -> None:
    if kind == "uvloop" and not HAVE_UVLOOP:
        pytest.skip("uvloop is not installed here")
    loops: set[str] = set()

    def progress(event: ProgressEvent) -> None:  # called on the hub's loop
        loops.add(type(asyncio.get_running_loop()).__module__.split(".")[0])

    mirror, pem = _tls_mirror(mirror_root, tmp_path)
    with mirror.running() as server:
        config = mirror_config(server.url, tmp_path / "cache", ca_bundle=pem, event_loop=kind)
        with Hub(config, progress=progress) as hub:
            path = Path(hub.download("TinyNet", opset=13))
        ranged = [r for r in server.requests_for("*tinynet-13.onnx") if r.range is not None]
    expected = "uvloop" if kind == "uvloop" or (kind == "auto" and HAVE_UVLOOP) else "asyncio"
    assert loops == {expected}
    served = next(mirror_root.rglob("tinynet-13.onnx")).read_bytes()
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(served).digest()
    assert len(ranged) >= 2  # split into ranges (chunks of 64 KiB)


def test_an_unknown_event_loop_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"event_loop must be 'auto', 'asyncio' or 'uvloop'"):
        HubConfig(cache_dir=tmp_path, event_loop="trio")
    env = {"ASYNCHUB_CACHE_DIR": str(tmp_path), "ASYNCHUB_EVENT_LOOP": " AsyncIO "}
    assert HubConfig.from_env(env).event_loop == "asyncio"
    assert HubConfig.from_env(env, event_loop="uvloop").event_loop == "uvloop"


def test_the_command_line_runs_on_the_loop_chosen(mirror_root: Path, tmp_path: Path) -> None:
    """``asynchub download`` with ``ASYNCHUB_EVENT_LOOP=asyncio`` and with the default: both
    fetch and verify the model (the choice reaches the CLI's loop)."""
    served = hashlib.sha256(next(mirror_root.rglob("tinynet-13.onnx")).read_bytes()).hexdigest()
    with MirrorServer(mirror_root).running() as server:
        for kind in ("asyncio", "auto"):
            env = {
                "PATH": "/usr/bin:/bin",
                "ASYNCHUB_CACHE_DIR": str(tmp_path / kind),
                "ASYNCHUB_MANIFEST_URL": server.url
                + "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json",
                "ASYNCHUB_FILE_URLS": server.url + "/{owner}/{repo}/{ref}/{path}",
                "ASYNCHUB_EVENT_LOOP": kind,
            }
            done = subprocess.run(
                [sys.executable, "-m", "asynchub", "download", "TinyNet", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=50,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)
            cached = list((tmp_path / kind).rglob("*.onnx"))
            assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in cached] == [served]


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed here")
@pytest.mark.parametrize("kind", ["auto", "uvloop"])
def test_with_standard_input_closed_the_loop_is_asyncios(kind: str) -> None:
    """libuv aborts the process when it closes a socket numbered 0-2, which a socket gets
    when standard input is closed: then asyncio's loop is made, for ``auto`` and ``uvloop``
    (with a warning for the latter), and a download's sockets work."""
    code = (
        "import asyncio, os\n"
        "from asynchub._loops import loop_factory\n"
        f"loop = loop_factory({kind!r})()\n"
        "async def main():\n"
        "    server = await loop.create_server(asyncio.Protocol, '127.0.0.1', 0)\n"
        "    port = server.sockets[0].getsockname()[1]\n"
        "    _t, _p = await loop.create_connection(asyncio.Protocol, '127.0.0.1', port)\n"
        "    _t.close(); server.close()\n"
        "loop.run_until_complete(main()); loop.close()\n"
        "os.write(1, type(loop).__module__.split('.')[0].encode())\n"
    )
    fine = subprocess.run(
        [sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, timeout=30
    )
    assert fine.stdout.decode() == "uvloop"  # standard input is /dev/null: uvloop is safe
    shut = subprocess.run(
        [sys.executable, "-c", "import os; os.close(0)\n" + code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shut.returncode == 0, shut.stderr
    assert shut.stdout == "asyncio"
    warned = "standard input, output or error is closed" in shut.stderr
    assert warned == (kind == "uvloop")
