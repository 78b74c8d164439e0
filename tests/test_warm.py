"""The warm path: ``import asynchub`` stays light, and a cached model is served by the sync API
in the caller's thread (no request, no event loop, no async core), verified before use."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asynchub import Hub, UntrustedRepoError
from asynchub._exceptions import HubClosedError
from tests.conftest import REPO_PREFIX, mirror_config
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)

MODEL = "*tinynet-13.onnx"


def test_import_does_not_load_the_network_stack() -> None:
    heavy = ["aiohttp", "asyncio", "tqdm", "filelock"]
    heavy += ["asynchub._hub.client", "asynchub._engine.engine"]
    code = (
        "import json, sys\nimport asynchub\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n"
        "asynchub.AsyncHub, asynchub.ProgressBars, asynchub.PrefetchResult, asynchub.hub\n"
        "print(json.dumps(sorted(set(asynchub.__all__) - set(dir(asynchub)))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert json.loads(out[0]) == []
    assert json.loads(out[1]) == []  # every public name is reachable (lazily or not)


def test_warm_sync_load_sends_nothing_and_starts_no_loop(mirror_root: Path, tmp_path: Path) -> None:
    with MirrorServer(mirror_root).running() as server:
        config = mirror_config(server.url, tmp_path / "cache")
        with Hub(config) as cold:
            first = cold.load("TinyNet")
        sent = len(server.requests)
        assert sent >= 2  # manifest + model

        with Hub(config) as warm:
            again = warm.load("TinyNet")
            path = warm.download("TinyNet")
            assert warm._async_hub is None  # served in this thread: no async core, no loop
        assert len(server.requests) == sent
        assert again == first
        assert path.is_file() and path.name.endswith("tinynet-13.onnx")


def test_warm_path_verifies_and_falls_back_to_the_full_path(
    mirror_root: Path, tmp_path: Path
) -> None:
    with MirrorServer(mirror_root).running() as server:
        config = mirror_config(server.url, tmp_path / "cache")
        with Hub(config) as hub:
            path = hub.download("TinyNet")
        good = path.read_bytes()
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # same size, wrong SHA-256
        before = len(server.requests_for(MODEL))

        with Hub(config) as hub:
            model = hub.load("TinyNet")
            assert hub._async_hub is not None  # the corrupt copy sent it down the full path
        assert len(server.requests_for(MODEL)) > before
        assert path.read_bytes() == good
        assert model.graph.node


def test_warm_path_keeps_the_trust_rule_and_closed_hubs(mirror_root: Path, tmp_path: Path) -> None:
    with MirrorServer(mirror_root).running() as server:
        config = mirror_config(server.url, tmp_path / "cache")
        shutil.copytree(mirror_root / REPO_PREFIX, mirror_root / "someone" / "else" / "main")
        untrusted = "someone/else:main"
        with Hub(config) as hub:
            hub.download("TinyNet", repo=untrusted, trust_repo=True)
            fetched = len(server.requests_for("*.onnx"))
            with pytest.raises(UntrustedRepoError):
                hub.load("TinyNet", repo=untrusted)  # cached, but never served unasked
            assert hub.load("TinyNet", repo=untrusted, trust_repo=True).graph.node
            assert len(server.requests_for("*.onnx")) == fetched  # served from the cache
        hub = Hub(config)
        hub.close()
        with pytest.raises(HubClosedError):
            hub.load("TinyNet")
        with pytest.raises(HubClosedError):
            hub.list_models()


def test_network_stack_is_imported_off_the_event_loop(tmp_path: Path) -> None:
    """The first request of a fresh process imports aiohttp (~100 ms of blocking work) in a
    worker thread, never on the loop that other tasks share."""
    code = """
import asyncio, http.server, json, sys, threading
from pathlib import Path

seen = []

class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "aiohttp":
            seen.append(threading.current_thread() is threading.main_thread())
        return None

sys.meta_path.insert(0, Spy())

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()

from asynchub._config import HubConfig
from asynchub._transport.aiohttp_transport import AiohttpTransport as Transport

async def main():
    transport = Transport(HubConfig(cache_dir=Path(sys.argv[1])))
    url = f"http://127.0.0.1:{server.server_address[1]}/x"
    async with transport.request(url) as response:
        body = await response.read(100)
    await transport.aclose()
    return body.decode()

body = asyncio.run(main())
server.shutdown()
print(json.dumps({"body": body, "imported_on_loop_thread": seen}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert json.loads(out.splitlines()[-1]) == {"body": "hi", "imported_on_loop_thread": [False]}
