"""The example service (``examples/service.py``) in its own process on 127.0.0.1: it lists the
hub, loads models on first use, runs them, and keeps answering ``/healthz`` within 100 ms while
a large model loads from a rate-limited mirror."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

from asynchub._demo.zoo import NETWORK_INPUT, NETWORK_OUTPUT, ZooModel, build_zoo
from tests.conftest import REPO_PREFIX
from tests.mirror import MirrorServer

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "examples" / "service.py"
MiB = 1024 * 1024
LARGE = "HeavyNet"  # 32 MB, at 4 x 6 MiB/s: over 1 s of download
SMALL = "PetiteNet"
HEALTH_LIMIT = 0.100


@pytest.fixture(scope="module")
def example_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("example-mirror")
    build_zoo(
        root / REPO_PREFIX,
        [
            ZooModel(SMALL, 13, ("demo",), size=50_000),
            ZooModel(LARGE, 13, ("demo", "large"), size=32 * MiB, test_data=False),
        ],
    )
    return root


@pytest.fixture
async def service(example_root: Path, tmp_path: Path) -> AsyncIterator[tuple[str, MirrorServer]]:
    """The mirror (in this process, 6 MiB/s per connection) and the service (a subprocess)."""
    async with MirrorServer(example_root, rate_limit=6 * MiB) as mirror:
        env = dict(os.environ)
        env.update(
            ASYNCHUB_MANIFEST_URL=mirror.url + "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json",
            ASYNCHUB_FILE_URLS=mirror.url + "/{owner}/{repo}/{ref}/{path}",
            ASYNCHUB_CACHE_DIR=str(tmp_path / "cache"),
            ASYNCHUB_MAX_CONNECTIONS="4",
            ASYNCHUB_CHUNK_SIZE="8MiB",
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SERVICE),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            env=env,
            cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            with anyio.fail_after(30):
                line = (await proc.stdout.readline()).decode()
            assert line.startswith("serving on http://127.0.0.1:"), line
            yield line.split()[-1], mirror
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with anyio.move_on_after(10):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        assert proc.returncode == 0, (await proc.stderr.read()).decode() if proc.stderr else ""


@pytest.mark.timeout(90)
async def test_health_answers_while_a_large_model_loads(
    service: tuple[str, MirrorServer], example_root: Path
) -> None:
    url, mirror = service
    health: list[tuple[float, dict[str, Any]]] = []
    loaded: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/models") as response:
            assert response.status == 200
            listed = {entry["model"]: entry for entry in await response.json()}
        assert set(listed) == {SMALL, LARGE}
        assert listed[LARGE]["bytes"] > 30 * MiB and not listed[LARGE]["loaded"]

        async def load_large() -> None:
            async with http.post(f"{url}/models/{LARGE}/load") as answer:
                assert answer.status == 200, await answer.text()
                loaded.append(await answer.json())

        async with anyio.create_task_group() as group:
            group.start_soon(load_large)
            with anyio.fail_after(60):
                while not loaded:
                    started = time.perf_counter()
                    async with http.get(url + "/healthz") as answer:
                        body = await answer.json()
                    health.append((time.perf_counter() - started, body))
                    await anyio.sleep(0.02)

        during = [(took, body) for took, body in health if LARGE.lower() in body["loading"]]
        slowest = max(took for took, _ in health)
        assert len(during) >= 10, f"only {len(during)} health checks while loading"
        timings = ", ".join(f"{took * 1e3:.0f}" for took, _ in health)
        assert slowest <= HEALTH_LIMIT, f"slowest /healthz took {slowest * 1e3:.1f} ms: {timings}"
        assert loaded[0]["engine"] in ("onnxruntime", "onnx.reference")
        large_path = "*" + LARGE.lower() + "*.onnx"
        assert mirror.served_bytes(large_path) > 30 * MiB

        # The small model: loaded on its first predict, and its answer is right.
        manifest = json.loads((example_root / REPO_PREFIX / "ONNX_HUB_MANIFEST.json").read_text())
        small_entry = next(e for e in manifest if e["model"] == SMALL)
        features = small_entry["metadata"]["io_ports"]["inputs"][0]["shape"][1]
        x = np.linspace(-1, 1, 2 * features, dtype=np.float32).reshape(2, features)
        async with http.post(
            f"{url}/models/{SMALL}/predict", json={"inputs": {NETWORK_INPUT: x.tolist()}}
        ) as answer:
            assert answer.status == 200, await answer.text()
            got = np.asarray((await answer.json())["outputs"][NETWORK_OUTPUT], dtype=np.float32)
        reference = ReferenceEvaluator(str(example_root / REPO_PREFIX / small_entry["model_path"]))
        np.testing.assert_allclose(got, reference.run(None, {NETWORK_INPUT: x})[0], rtol=1e-5)

        async with http.get(url + "/healthz") as answer:
            assert sorted((await answer.json())["loaded"]) == sorted([LARGE.lower(), SMALL.lower()])
        async with http.post(
            f"{url}/models/{SMALL}/predict", json={"inputs": {"nope": [[1.0]]}}
        ) as answer:
            assert answer.status == 400
            assert NETWORK_INPUT in await answer.text()
        async with http.post(f"{url}/models/NoSuchNet/load") as answer:
            assert answer.status == 404
            assert "NoSuchNet" in await answer.text()
