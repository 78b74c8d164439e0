"""The two seams and the one engine: a third source needs only its own module; a transport can
be injected (an in-memory one here, no socket at all); everything a hub fetches goes through
its one engine (one connection budget, one table of downloads in flight)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anyio
import pytest

from asynchub._cache import admin
from asynchub._cli.main import main as cli_main
from asynchub._demo.zoo import ZooModel, build_zoo
from asynchub._exceptions import IntegrityError, ModelNotFoundError, TransferError
from asynchub._hub.client import AsyncHub
from asynchub._hub.registry import all_sources
from asynchub._transport.base import Transport
from tests import plain_source
from tests.conftest import REPO_PREFIX, mirror_config
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)


def _plain_hub(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """Write a plain hub (index.json + files) under ``root``; returns url path → bytes."""
    index = {}
    served = {}
    for name, data in files.items():
        rel = f"data/{name}.bin"
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        index[name] = {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        served[rel] = data
    (root / "index.json").write_text(json.dumps(index))
    served["index.json"] = (root / "index.json").read_bytes()
    return served


@contextlib.contextmanager
def _registered(base_url: str, printed: list[str]):  # type: ignore[no-untyped-def]
    plain_source.register(base_url, printed)
    try:
        yield
    finally:
        plain_source.unregister()


async def test_a_third_source_needs_only_its_own_module(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    _plain_hub(tmp_path / "mirror", {"alpha": data, "beta": b"b" * 1000})
    printed: list[str] = []
    async with MirrorServer(tmp_path / "mirror") as server:
        config = mirror_config(server.url, tmp_path / "cache")
        with _registered(server.url, printed):
            assert "plain" in [s.name for s in all_sources()]
            async with AsyncHub(config) as hub:
                with anyio.fail_after(30):
                    [path] = await hub.fetch("plain", "alpha")
                    with pytest.raises(ModelNotFoundError):
                        await hub.fetch("plain", "gamma")
            assert path.read_bytes() == data
            assert path.is_relative_to(tmp_path / "cache" / "plain")
            assert path.name.startswith(hashlib.sha256(data).hexdigest() + "_")

            root = tmp_path / "cache"
            owners = all_sources()
            listed = {f.path: f for f in admin.list_cache(root, owners)}
            assert listed[path].model == "alpha"
            report = admin.verify_cache(root, owners)
            assert report.checked == 1 and not report.bad
            stray = root / "plain" / "data" / (("0" * 64) + "_old.bin")
            stray.write_bytes(b"old")
            pruned = admin.prune_cache(root, owners)
            assert [p for p, _, _ in pruned.removed] == [stray]
            assert path.exists()

            assert cli_main(["plain", "alpha"]) == 0
            assert printed == ["alpha"]
    assert "plain" not in [s.name for s in all_sources()]


# -- an in-memory transport ----------------------------------------------------------------
class _Headers(dict[str, str]):
    """Case-insensitive header lookups over lower-case keys."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


class _MemoryResponse:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, url: str) -> None:
        self.status = status
        self.headers: Mapping[str, str] = _Headers({k.lower(): v for k, v in headers.items()})
        self.url = url
        self._body = body

    @property
    def content_length(self) -> int | None:
        return len(self._body)

    async def iter_chunks(self, size: int) -> AsyncIterator[bytes]:
        for start in range(0, len(self._body), size):
            await anyio.lowlevel.checkpoint()
            yield self._body[start : start + size]

    async def read(self, limit: int) -> bytes:
        return self._body[: limit + 1]

    def close(self) -> None:
        pass


class MemoryTransport:
    """Serves a dict of URL → bytes, with single byte ranges (what the engine asks)."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []

    @contextlib.asynccontextmanager
    async def request(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[_MemoryResponse]:
        wanted = (headers or {}).get("Range")
        self.requests.append((url, wanted))
        body = self.files.get(url)
        if body is None:
            yield _MemoryResponse(404, {}, b"", url)
            return
        if wanted is None:
            yield _MemoryResponse(200, {"Content-Length": str(len(body))}, body, url)
            return
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) if last else len(body) - 1, len(body) - 1)
        part = body[start : end + 1]
        yield _MemoryResponse(206, {"Content-Range": f"bytes {start}-{end}/{len(body)}"}, part, url)

    async def aclose(self) -> None:
        pass


async def test_an_injected_transport_serves_every_request(tmp_path: Path) -> None:
    data = os.urandom(500_000)
    served = _plain_hub(tmp_path / "src", {"alpha": data, "bad": b"x" * 1000})
    base = "http://memory.invalid"
    files = {f"{base}/{rel}": body for rel, body in served.items()}
    files[f"{base}/data/bad.bin"] = b"y" * 1000  # bytes that do not match the index
    transport = MemoryTransport(files)
    assert isinstance(transport, Transport)
    config = mirror_config("http://127.0.0.1:9", tmp_path / "cache")
    with _registered(base, []):
        async with AsyncHub(config, transport=transport) as hub:
            with anyio.fail_after(30):
                [path] = await hub.fetch("plain", "alpha")
                with pytest.raises((IntegrityError, TransferError)):
                    await hub.fetch("plain", "bad")
    assert path.read_bytes() == data
    ranges = [r for url, r in transport.requests if url.endswith("alpha.bin")]
    assert len(ranges) > 1 and all(r and r.startswith("bytes=") for r in ranges)
    left = [p.name for p in (tmp_path / "cache" / "plain" / "data").glob("*bad*")]
    assert [name for name in left if not name.endswith(".lock")] == []


# -- one engine per hub -------------------------------------------------------------------
async def test_load_and_prefetch_of_one_file_make_one_download(tmp_path: Path) -> None:
    repo = tmp_path / "mirror" / REPO_PREFIX
    build_zoo(repo, [ZooModel("Shared", 13, ("shared",), size=2_000_000)])
    [model_file] = list(repo.rglob("*.onnx"))
    size = model_file.stat().st_size
    async with MirrorServer(tmp_path / "mirror", rate_limit=2_000_000) as server:
        # Without file locks, only the engine's table of downloads in flight can join the two.
        config = mirror_config(server.url, tmp_path / "cache", max_connections=4, use_locks=False)
        async with AsyncHub(config) as hub:
            results: dict[str, object] = {}

            async def load() -> None:
                results["load"] = await hub.download("Shared")

            async def prefetch() -> None:
                results["prefetch"] = await hub.prefetch(models=["Shared"])

            with anyio.fail_after(45):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(load)
                    tg.start_soon(prefetch)
        assert server.served_bytes("*.onnx") == size
        assert server.peak_in_flight <= 4
    assert Path(str(results["load"])).read_bytes() == model_file.read_bytes()
