"""The example services (``examples/service.py`` on aiohttp, ``examples/service_fastapi.py`` on
FastAPI + uvicorn), each in its own process on 127.0.0.1, driven over HTTP: a load answers
``202`` at once and runs in the background while ``/healthz`` keeps answering within 100 ms,
the status endpoint shows its progress, predictions are right, every error is JSON, and
SIGTERM cancels a load in flight promptly."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
EXAMPLES = ROOT / "examples"
MiB = 1024 * 1024
LARGE = "HeavyNet"  # 32 MB, at 4 x 6 MiB/s: over 1 s of download
SMALL = "PetiteNet"
#: Generous: a health check normally answers in ~2 ms; this only catches a service whose loop
#: waits for the download or the parse (seconds), even on a busy shared machine.
HEALTH_LIMIT = 0.500
HAS_FASTAPI = all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn"))
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None

pytestmark = pytest.mark.timeout(120)


@dataclass
class Service:
    url: str
    mirror: MirrorServer
    proc: asyncio.subprocess.Process
    cache: Path
    script: str


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


@pytest.fixture(
    params=[
        "service.py",
        pytest.param(
            "service_fastapi.py",
            marks=pytest.mark.skipif(not HAS_FASTAPI, reason="fastapi/uvicorn not installed"),
        ),
    ]
)
async def service(
    request: pytest.FixtureRequest, example_root: Path, tmp_path: Path
) -> AsyncIterator[Service]:
    """The mirror (in this process, 6 MiB/s per connection) and a service (a subprocess)."""
    async with MirrorServer(example_root, rate_limit=6 * MiB) as mirror:
        cache = tmp_path / "cache"
        env = dict(os.environ)
        env.update(
            ASYNCHUB_MANIFEST_URL=mirror.url + "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json",
            ASYNCHUB_FILE_URLS=mirror.url + "/{owner}/{repo}/{ref}/{path}",
            ASYNCHUB_CACHE_DIR=str(cache),
            ASYNCHUB_MAX_CONNECTIONS="4",
            ASYNCHUB_CHUNK_SIZE="8MiB",
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / request.param),
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
            yield Service(line.split()[-1], mirror, proc, cache, request.param)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with anyio.move_on_after(10):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
        assert proc.returncode in _clean_exit(request.param), stderr
        assert "Traceback" not in stderr, stderr


def _clean_exit(script: str) -> set[int]:
    """Exit statuses of a clean stop on SIGTERM: uvicorn re-raises the signal once it has shut
    down (so a supervisor sees how it ended); the aiohttp service returns 0."""
    return {0, -signal.SIGTERM} if "fastapi" in script else {0}


async def _json(response: aiohttp.ClientResponse) -> Any:
    assert response.content_type == "application/json", await response.text()
    return await response.json()


async def _wait_state(http: aiohttp.ClientSession, url: str, name: str, state: str) -> Any:
    with anyio.fail_after(60):
        while True:
            async with http.get(f"{url}/models/{name}") as answer:
                body = await _json(answer)
            if body["state"] == state:
                return body
            assert body["state"] != "failed", body
            await anyio.sleep(0.02)


async def test_background_load_health_and_predictions(service: Service, example_root: Path) -> None:
    url = service.url
    health: list[tuple[float, dict[str, Any]]] = []
    seen_bytes: list[int] = []
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/models") as answer:
            assert answer.status == 200
            listed = {entry["model"]: entry for entry in await _json(answer)}
        assert set(listed) == {SMALL, LARGE}
        assert listed[LARGE]["bytes"] > 30 * MiB and listed[LARGE]["state"] == "absent"

        started = time.perf_counter()
        async with http.post(f"{url}/models/{LARGE.lower()}/load") as answer:
            took = time.perf_counter() - started
            assert answer.status == 202, await answer.text()
            body = await _json(answer)
            assert answer.headers["Location"] == f"/models/{LARGE}"
        assert body["model"] == LARGE and body["state"] == "loading"
        assert took < 1.0, f"POST load took {took:.2f} s: it must not wait for the download"

        with anyio.fail_after(60):
            while True:
                t0 = time.perf_counter()
                async with http.get(url + "/healthz") as answer:
                    body = await _json(answer)
                health.append((time.perf_counter() - t0, body))
                async with http.get(f"{url}/models/{LARGE}") as answer:
                    status = await _json(answer)
                if status["state"] == "ready":
                    break
                assert status["state"] == "loading", status
                seen_bytes.append(status["bytes"])
                await anyio.sleep(0.02)

        during = [(took, body) for took, body in health if LARGE.lower() in body["loading"]]
        slowest = max(took for took, _ in health)
        assert len(during) >= 10, f"only {len(during)} health checks while loading"
        timings = ", ".join(f"{took * 1e3:.0f}" for took, _ in health)
        assert slowest <= HEALTH_LIMIT, f"slowest /healthz took {slowest * 1e3:.1f} ms: {timings}"
        assert seen_bytes == sorted(seen_bytes) and seen_bytes[-1] > seen_bytes[0]
        assert status["total"] and status["total"] > 30 * MiB
        assert status["engine"] == ("onnxruntime" if HAS_ORT else "onnx.reference")
        assert service.mirror.served_bytes("*" + LARGE.lower() + "*.onnx") > 30 * MiB
        async with http.post(f"{url}/models/{LARGE}/load") as answer:
            assert answer.status == 200 and (await _json(answer))["state"] == "ready"

        # The small model: 409 until loaded, then a right answer.
        manifest = json.loads((example_root / REPO_PREFIX / "ONNX_HUB_MANIFEST.json").read_text())
        small_entry = next(e for e in manifest if e["model"] == SMALL)
        features = small_entry["metadata"]["io_ports"]["inputs"][0]["shape"][1]
        x = np.linspace(-1, 1, 2 * features, dtype=np.float32).reshape(2, features)
        feeds = {"inputs": {NETWORK_INPUT: x.tolist()}}
        async with http.post(f"{url}/models/{SMALL}/predict", json=feeds) as answer:
            assert answer.status == 409
            error = (await _json(answer))["error"]
            assert error["type"] == "NotLoaded" and f"/models/{SMALL}/load" in error["message"]
        async with http.post(f"{url}/models/{SMALL}/load") as answer:
            assert answer.status == 202
        await _wait_state(http, url, SMALL, "ready")
        async with http.post(f"{url}/models/{SMALL}/predict", json=feeds) as answer:
            assert answer.status == 200, await answer.text()
            got = np.asarray((await _json(answer))["outputs"][NETWORK_OUTPUT], dtype=np.float32)
        reference = ReferenceEvaluator(str(example_root / REPO_PREFIX / small_entry["model_path"]))
        np.testing.assert_allclose(got, reference.run(None, {NETWORK_INPUT: x})[0], rtol=1e-5)

        async with http.get(url + "/healthz") as answer:
            assert sorted((await _json(answer))["loaded"]) == sorted([LARGE.lower(), SMALL.lower()])


async def test_every_error_is_json(service: Service) -> None:
    url = service.url
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/models/NoSuchNet/load") as answer:
            assert answer.status == 404
            error = (await _json(answer))["error"]
            assert error["type"] == "ModelNotFoundError" and "NoSuchNet" in error["message"]
        async with http.get(f"{url}/models/NoSuchNet") as answer:
            assert answer.status == 404 and (await _json(answer))["error"]
        async with http.get(f"{url}/nowhere") as answer:
            assert answer.status == 404 and (await _json(answer))["error"]["message"]
        async with http.post(f"{url}/models/{SMALL}/predict", data=b"not json") as answer:
            assert answer.status == 400
            assert "inputs" in (await _json(answer))["error"]["message"]
        async with http.post(f"{url}/models/{SMALL}/load") as answer:
            assert answer.status == 202
        await _wait_state(http, url, SMALL, "ready")
        async with http.post(
            f"{url}/models/{SMALL}/predict", json={"inputs": {"nope": [[1.0]]}}
        ) as answer:
            assert answer.status == 400
            error = (await _json(answer))["error"]
            assert error["type"] == "BadInputs" and NETWORK_INPUT in error["message"]


async def test_sigterm_cancels_a_load_in_flight(service: Service) -> None:
    service.mirror.rate_limit = 512 * 1024  # 32 MB would take over 10 s
    url = service.url
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/models/{LARGE}/load") as answer:
            assert answer.status == 202
        with anyio.fail_after(30):
            while True:
                async with http.get(f"{url}/models/{LARGE}") as answer:
                    status = await _json(answer)
                if status["bytes"] > 0:
                    break
                await anyio.sleep(0.02)
    started = time.perf_counter()
    service.proc.send_signal(signal.SIGTERM)
    with anyio.fail_after(10):
        await service.proc.wait()
    took = time.perf_counter() - started
    assert service.proc.returncode in _clean_exit(service.script)
    assert took < 3.0, f"SIGTERM took {took:.1f} s to stop a load in flight"
    served = service.mirror.served_bytes("*" + LARGE.lower() + "*.onnx")
    assert served < 16 * MiB, "the download went on"
    finals = [p for p in service.cache.rglob("*.onnx") if LARGE.lower() in p.name]
    assert not finals, finals  # nothing unverified under a final name; the partial stays
