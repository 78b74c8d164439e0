"""Shared fixtures: a generated zoo of real ONNX models served by a local mirror.

``mirror`` serves a GitHub-like layout on 127.0.0.1: ``/<owner>/<repo>/<ref>/<path>`` for the
manifest (``ONNX_HUB_MANIFEST.json``) and every file, so ``hub_config`` only has to point the
two URL templates at it. Every test gets its own cache directory and a clean environment (the
default hubs are reset and ``ONNX_HOME`` points into the test's temp dir).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from asynchub._config import HubConfig
from asynchub._demo.zoo import build_zoo, default_zoo
from asynchub._engine.retry import RetryPolicy
from tests.mirror import MirrorServer

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
REAL_MANIFEST = SHARED_DATA / "ONNX_HUB_MANIFEST.json"
REPO_PREFIX = "onnx/models/main"
KIB = 1024

#: Fast retries for tests: the policy still runs every branch, just with tiny waits.
FAST_RETRY = RetryPolicy(attempts=3, backoff_base=0.001, backoff_cap=0.01, max_retry_after=0.05)

_ENV_VARS = (
    "ONNX_HOME",
    "XDG_CACHE_HOME",
    "ASYNCHUB_CACHE_DIR",
    "ASYNCHUB_MANIFEST_URL",
    "ASYNCHUB_FILE_URLS",
    "ASYNCHUB_OFFLINE",
    "ASYNCHUB_TRUSTED_REPOS",
    "ASYNCHUB_MAX_CONNECTIONS",
    "ASYNCHUB_MAX_CONNECTIONS_PER_HOST",
    "ASYNCHUB_CHUNK_SIZE",
    "ASYNCHUB_LIMIT_RATE",
    "ASYNCHUB_CA_BUNDLE",
    "ASYNCHUB_MINDSPORE_CARD_URL",
    "ASYNCHUB_PROXY",
    "ASYNCHUB_USE_LOCKS",
    "ASYNCHUB_HOST_ID",
    "ASYNCHUB_LOCK_LEASE",
    "ASYNCHUB_LOCK_TIMEOUT",
    *(f"{name}_proxy" for name in ("http", "https", "all", "no")),
    *(f"{name}_PROXY" for name in ("HTTP", "HTTPS", "ALL", "NO")),
    "REQUEST_METHOD",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run tests marked slow in full")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONNX_HOME", str(tmp_path / "onnx_home"))
    monkeypatch.setenv("ASYNCHUB_DISABLE_PROGRESS_BARS", "1")
    _reset_default_hubs()
    yield
    _reset_default_hubs()


def _reset_default_hubs() -> None:
    defaults = sys.modules.get("asynchub._hub.defaults")
    if defaults is not None:
        defaults.reset_defaults()


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default generated zoo (manifest + models + test data), built once."""
    out = tmp_path_factory.mktemp("zoo")
    build_zoo(out, default_zoo())
    return out


@pytest.fixture(scope="session")
def zoo_manifest(zoo_dir: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((zoo_dir / "ONNX_HUB_MANIFEST.json").read_text())
    return data


@pytest.fixture
def mirror_root(zoo_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the zoo in mirror layout (tests may change files in it)."""
    root = tmp_path / "mirror"
    shutil.copytree(zoo_dir, root / REPO_PREFIX)
    return root


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[MirrorServer]:
    """A mirror of ``tmp_path / "root"``, empty: the test puts its files there."""
    (tmp_path / "root").mkdir()
    srv = MirrorServer(tmp_path / "root")
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def mirror(mirror_root: Path) -> AsyncIterator[MirrorServer]:
    server = MirrorServer(mirror_root, hosts=("127.0.0.1",))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def mirror_config(base_url: str, cache_dir: Path, **overrides: Any) -> HubConfig:
    """A config whose manifest and files come from a mirror at ``base_url``."""
    values: dict[str, Any] = {
        "cache_dir": cache_dir,
        "manifest_url": base_url + "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json",
        "file_urls": (base_url + "/{owner}/{repo}/{ref}/{path}",),
        "retry": FAST_RETRY,
        "chunk_size": 64 * KIB,
        "min_split_size": 64 * KIB,
        "stall_timeout": 5.0,
        "connect_timeout": 5.0,
    }
    values.update(overrides)
    return HubConfig(**values)


@pytest.fixture
def hub_config(mirror: MirrorServer, tmp_path: Path) -> HubConfig:
    return mirror_config(mirror.url, tmp_path / "cache")


@pytest.fixture
async def ahub(hub_config: HubConfig) -> AsyncIterator[Any]:
    from asynchub import AsyncHub

    async with AsyncHub(hub_config) as hub:
        yield hub


@pytest.fixture
def real_manifest_bytes() -> bytes:
    if not REAL_MANIFEST.is_file():
        pytest.skip("the real ONNX hub manifest (../shared/data) is not present")
    return REAL_MANIFEST.read_bytes()
