"""asynchub inside a busy async service: the event loop stays responsive, a burst of ``aload``
calls shares one session and one download per file, cancellation is prompt and resumable, and
the hub's lifecycle works across event loops and while work is in flight.

Servers are real (127.0.0.1); models are real ONNX files from :mod:`asynchub._demo.zoo`. The loop
lag bounds here are deliberately loose (a busy 2-core CI machine must not flake); the exact
figures for a 256 MB model come from ``benchmarks/loop_lag.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import filelock
import numpy as np
import onnx
import psutil
import pytest

import asynchub
from asynchub._cache.layout import lock_path
from asynchub._demo.static_server import StaticMirror
from asynchub._demo.zoo import ZooModel, build_zoo
from asynchub._exceptions import HubClosedError, HubError, IntegrityError
from asynchub._hub.client import AsyncHub
from asynchub._progress.events import ProgressEvent
from tests.conftest import REPO_PREFIX, mirror_config
from tests.mirror import Fault, MirrorServer

MiB = 1024 * 1024
SMALL_MODELS = [f"Svc{i}" for i in range(10)]
BAD_MODEL = "Svc9"  # the mirror corrupts every byte range of it: SHA-256 never matches
BIG_MODEL = "LayerSvc"  # 64 MB in 16 layers: the loop-lag test (the benchmark: 256 MB)
RESUME_MODEL = "ResumeNet"  # 8 MB, fetched slowly to be cancelled half way


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def service_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mirror tree (``<root>/onnx/models/main/...``) with the models of this module."""
    root = tmp_path_factory.mktemp("service-mirror")
    models = [
        ZooModel(name, 13, ("service", f"group{i % 3}"), size=150_000 + 20_000 * i)
        for i, name in enumerate(SMALL_MODELS)
    ]
    models.append(ZooModel(RESUME_MODEL, 13, ("resume",), size=8 * MiB, test_data=False))
    manifest = build_zoo(root / REPO_PREFIX, models)
    manifest.append(_add_model(root, BIG_MODEL, _layered_model(16, 1024)))  # 16 x 4 MiB
    (root / REPO_PREFIX / "ONNX_HUB_MANIFEST.json").write_text(json.dumps(manifest))
    return root


def _add_model(root: Path, name: str, model: onnx.ModelProto) -> dict[str, Any]:
    """Write ``model`` into the mirror tree; its manifest entry."""
    rel = f"validated/big/{name.lower()}/model/{name.lower()}-13.onnx"
    data = model.SerializeToString()
    target = root / REPO_PREFIX / rel
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    return {
        "model": name,
        "model_path": rel,
        "onnx_version": "1.14",
        "opset_version": 13,
        "metadata": {
            "model_sha": hashlib.sha256(data).hexdigest(),
            "model_bytes": len(data),
            "tags": ["big"],
        },
    }


@pytest.fixture(scope="module")
def entries(service_root: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((service_root / REPO_PREFIX / "ONNX_HUB_MANIFEST.json").read_text())
    return {entry["model"]: entry for entry in data}


def model_file(root: Path, entry: dict[str, Any]) -> Path:
    return root / REPO_PREFIX / entry["model_path"]


@pytest.fixture
async def service_mirror(service_root: Path) -> AsyncIterator[MirrorServer]:
    async with MirrorServer(service_root) as server:
        yield server


class Ticker:
    """Wakes every ``period`` seconds and records how late each wake-up was."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.lateness: list[float] = []

    async def run(self) -> None:
        due = time.perf_counter() + self.period
        while True:
            await anyio.sleep(max(0.0, due - time.perf_counter()))
            now = time.perf_counter()
            self.lateness.append(now - due)
            due = now + self.period

    def quantile(self, q: float) -> float:
        ordered = sorted(self.lateness)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def progress_trigger(name_part: str, threshold: int) -> tuple[anyio.Event, Callable[..., None]]:
    """An event set once ``threshold`` bytes of a file whose name contains ``name_part``
    arrived, and the progress callback that sets it."""
    reached = anyio.Event()
    seen = [0]

    def callback(event: ProgressEvent) -> None:
        if event.kind == "transfer" and name_part in event.name:
            seen[0] += event.nbytes
            if seen[0] >= threshold:
                reached.set()

    return reached, callback


def client_connections(port: int) -> list[Any]:
    """Open TCP connections of this process to ``127.0.0.1:port`` (client side)."""
    return [
        conn
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    ]


# ----------------------------------------------------------------------------- 1. loop lag
@pytest.mark.timeout(60)
async def test_event_loop_stays_responsive_during_a_large_aload(
    service_root: Path, entries: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    entry = entries[BIG_MODEL]
    # A stdlib mirror on its own threads (no GIL held while they wait or send), so the lag
    # measured is the client's; 4 connections at 24 MiB/s each make the load last ~0.7 s.
    with StaticMirror(service_root, rate_limit=24 * MiB) as server:
        config = mirror_config(
            server.url,
            tmp_path / "cache",
            chunk_size=8 * MiB,
            min_split_size=4 * MiB,
            max_connections=4,
        )
        async with AsyncHub(config) as hub:
            await hub.list_models()
            ticker = Ticker()
            async with anyio.create_task_group() as group:
                group.start_soon(ticker.run)
                started = time.perf_counter()
                model = await hub.load(BIG_MODEL)
                elapsed = time.perf_counter() - started
                group.cancel_scope.cancel()
    assert model.graph.initializer, "the model was parsed"
    assert any(config.cache_dir.rglob(f"{entry['metadata']['model_sha']}_*.onnx"))
    p50, p99, worst = ticker.quantile(0.5), ticker.quantile(0.99), max(ticker.lateness)
    report = (
        f"{elapsed:.2f} s, {len(ticker.lateness)} ticks, lateness p50 {p50 * 1e3:.1f} ms, "
        f"p99 {p99 * 1e3:.1f} ms, max {worst * 1e3:.1f} ms"
    )
    print(report)
    # Blocking work on the loop (hashing 64 MB, writing it, parsing it) would leave the
    # ticker stuck for most of the load; off the loop it keeps ticking. Typical figures here:
    # p99 2-5 ms, max 3-10 ms; the bounds leave room for a machine busy with other work.
    blocked = sum(ticker.lateness)
    assert blocked <= 0.5 * elapsed, f"the loop was blocked {blocked:.2f} s; {report}"
    assert p99 <= 0.080, report
    assert worst <= 0.300, report


# ----------------------------------------------------------------------------- 2. a burst
@pytest.mark.timeout(60)
async def test_fifty_concurrent_aloads_share_session_and_downloads(
    service_root: Path,
    service_mirror: MirrorServer,
    entries: dict[str, dict[str, Any]],
    tmp_path: Path,
) -> None:
    bad_path = entries[BAD_MODEL]["model_path"]
    service_mirror.add_fault(Fault("corrupt", path=f"*/{bad_path}", times=None))
    config = mirror_config(service_mirror.url, tmp_path / "cache", max_connections=4)
    names = [SMALL_MODELS[i % len(SMALL_MODELS)] for i in range(50)]
    outcomes: dict[int, onnx.ModelProto | BaseException] = {}
    peak_connections: list[int] = [0]
    local_ports: set[int] = set()

    async def watch_connections() -> None:
        while True:
            conns = client_connections(service_mirror.port)
            peak_connections[0] = max(peak_connections[0], len(conns))
            local_ports.update(conn.laddr.port for conn in conns)
            await anyio.sleep(0.002)

    async def one(index: int, name: str, hub: AsyncHub) -> None:
        try:
            outcomes[index] = await hub.load(name)
        except HubError as exc:
            outcomes[index] = exc

    async with AsyncHub(config) as hub, anyio.create_task_group() as outer:
        outer.start_soon(watch_connections)
        async with anyio.create_task_group() as group:
            for index, name in enumerate(names):
                group.start_soon(one, index, name, hub)
        outer.cancel_scope.cancel()

    assert len(outcomes) == 50
    expected = {
        name: onnx.load(str(model_file(service_root, entries[name])))
        for name in SMALL_MODELS
        if name != BAD_MODEL
    }
    for index, name in enumerate(names):
        outcome = outcomes[index]
        if name == BAD_MODEL:
            assert isinstance(outcome, IntegrityError), outcome
            assert "SHA-256 mismatch" in str(outcome)
        else:
            assert isinstance(outcome, onnx.ModelProto), (name, outcome)
            assert outcome == expected[name], name
    # Each good file crossed the wire exactly once, the manifest was fetched once.
    for name in expected:
        path = entries[name]["model_path"]
        assert (
            service_mirror.served_bytes(f"*/{path}") == entries[name]["metadata"]["model_bytes"]
        ), name
    assert len(service_mirror.requests_for("*/ONNX_HUB_MANIFEST.json")) == 1
    # One session, one connection budget: never more than max_connections sockets at once,
    # and few sockets overall (a session per call would open one per request).
    assert 1 <= peak_connections[0] <= config.max_connections, peak_connections
    assert len(local_ports) <= 2 * config.max_connections, sorted(local_ports)
    file_requests = [r for r in service_mirror.requests if r.path.endswith(".onnx")]
    assert len(file_requests) > len(local_ports), "connections were reused"


# ----------------------------------------------------------------------------- 3. cancel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["timeout", "cancel_prefetch"])
async def test_cancel_is_prompt_and_resumes(
    service_root: Path, entries: dict[str, dict[str, Any]], tmp_path: Path, how: str
) -> None:
    entry = entries[RESUME_MODEL]
    size = entry["metadata"]["model_bytes"]
    chunk = 2 * MiB
    reached, callback = progress_trigger("resumenet", 2 * MiB)
    async with MirrorServer(service_root, rate_limit=1 * MiB) as server:
        config = mirror_config(
            server.url,
            tmp_path / "cache",
            max_connections=4,
            chunk_size=chunk,
            min_split_size=chunk,
            stall_timeout=10.0,
        )
        async with AsyncHub(config, progress=callback) as hub:
            await hub.list_models()
            stopped: list[float] = []
            cancelled_at: list[float] = []
            caught: list[BaseException] = []
            handles: dict[str, Any] = {}

            async def fetch() -> None:
                try:
                    if how == "timeout":
                        async with asyncio.timeout(None) as deadline:
                            handles["deadline"] = deadline
                            await hub.load(RESUME_MODEL)
                    else:
                        with anyio.CancelScope() as scope:
                            handles["scope"] = scope
                            await hub.prefetch(models=[RESUME_MODEL])
                except TimeoutError as exc:
                    caught.append(exc)
                finally:
                    stopped.append(time.perf_counter())

            async with anyio.create_task_group() as group:
                group.start_soon(fetch)
                await reached.wait()
                cancelled_at.append(time.perf_counter())
                if how == "timeout":
                    handles["deadline"].reschedule(asyncio.get_running_loop().time())
                else:
                    handles["scope"].cancel()
            cancel_to_stop = stopped[0] - cancelled_at[0]
            if how == "timeout":
                assert caught and isinstance(caught[0], TimeoutError)
            assert cancel_to_stop <= 1.0, f"stopping took {cancel_to_stop:.3f} s"

            # Files and locks: a partial and its resume state are left, nothing is held.
            dest_dir = config.cache_dir / Path(entry["model_path"]).parent
            partials = list(dest_dir.glob("*.partial"))
            assert len(partials) == 1, list(dest_dir.iterdir())
            state = json.loads(partials[0].with_name(partials[0].name + ".json").read_text())
            written = sum(min(chunk, size - int(i) * chunk) for i in state["finished"]) + sum(
                state["partial"].values()
            )
            assert 0 < written < size
            open_files = {Path(f.path) for f in psutil.Process().open_files()}
            assert partials[0] not in open_files
            final = (
                config.cache_dir
                / Path(entry["model_path"]).parent
                / (f"{entry['metadata']['model_sha']}_{Path(entry['model_path']).name}")
            )
            lock = filelock.FileLock(str(lock_path(final)), is_singleton=False)
            lock.acquire(timeout=0)  # raises filelock.Timeout if still held
            lock.release()
            # Connections of the cancelled requests are closed (bounded poll: sockets close
            # on the next loop iterations).
            for _ in range(200):
                if not client_connections(server.port):
                    break
                await anyio.sleep(0.005)
            assert not client_connections(server.port)

            # Awaiting the same model again resumes: only the missing bytes are asked for.
            before = len(server.requests)
            model = await hub.load(RESUME_MODEL)
            again = server.requests[before:]
        expected = onnx.load(str(model_file(service_root, entry)))
        assert model == expected
        file_requests = [r for r in again if r.path.endswith(".onnx")]
        assert file_requests and all(r.range is not None for r in file_requests)
        assert any(r.range is not None and r.range[0] % chunk != 0 for r in file_requests), [
            r.range for r in file_requests
        ]
        assert sum(r.body_bytes for r in file_requests) == size - written
        assert not list(dest_dir.glob("*.partial*"))


# ----------------------------------------------------------------------------- 4. loops
def test_module_functions_work_across_event_loops(
    service_root: Path,
    entries: dict[str, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two ``asyncio.run`` calls in a row with the module-level API and one default hub."""
    with MirrorServer(service_root).running() as server:
        monkeypatch.setenv(
            "ASYNCHUB_MANIFEST_URL", server.url + "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json"
        )
        monkeypatch.setenv("ASYNCHUB_FILE_URLS", server.url + "/{owner}/{repo}/{ref}/{path}")
        monkeypatch.setenv("ASYNCHUB_CACHE_DIR", str(tmp_path / "cache"))

        async def first() -> tuple[int, onnx.ModelProto]:
            listed = await asynchub.alist_models(tags=["service"])
            return len(listed), await asynchub.aload("Svc0")

        async def second() -> tuple[onnx.ModelProto, onnx.ModelProto]:
            # new downloads on a new loop, through the same default hub
            fresh = await asynchub.aload("Svc1")
            forced = await asynchub.aload("Svc0", force_reload=True)
            return fresh, forced

        count, svc0 = asyncio.run(first())
        svc1, svc0_again = asyncio.run(second())
        svc0_third = asyncio.run(asynchub.aload("Svc0"))
        served = server.served_bytes(f"*/{entries['Svc0']['model_path']}")
    assert count == len(SMALL_MODELS)
    assert svc0 == svc0_again == svc0_third
    assert svc1 == onnx.load(str(model_file(service_root, entries["Svc1"])))
    assert served == 2 * entries["Svc0"]["metadata"]["model_bytes"]  # once + force_reload


# ----------------------------------------------------------------------------- 5. closing
@pytest.mark.timeout(60)
async def test_closing_the_hub_cancels_work_in_flight(
    service_root: Path, entries: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    entry = entries[RESUME_MODEL]
    reached, callback = progress_trigger("resumenet", 1 * MiB)
    outcome: list[BaseException | onnx.ModelProto] = []
    finished_at: list[float] = []
    async with MirrorServer(service_root, rate_limit=1 * MiB) as server:
        config = mirror_config(
            server.url, tmp_path / "cache", chunk_size=2 * MiB, min_split_size=2 * MiB
        )

        async def load(hub: AsyncHub) -> None:
            try:
                outcome.append(await hub.load(RESUME_MODEL))
            except HubError as exc:
                outcome.append(exc)
            finished_at.append(time.perf_counter())

        async with anyio.create_task_group() as group:
            async with AsyncHub(config, progress=callback) as hub:
                group.start_soon(load, hub)
                await reached.wait()
                closing = time.perf_counter()
            closed = time.perf_counter()
        assert hub.closed
        assert closed - closing <= 1.0, f"closing took {closed - closing:.3f} s"
        assert len(outcome) == 1 and isinstance(outcome[0], HubClosedError), outcome
        assert finished_at[0] <= closed, "aclose waited for the cancelled load"
        assert list((config.cache_dir / Path(entry["model_path"]).parent).glob("*.partial"))
        with pytest.raises(HubClosedError, match="closed"):
            await hub.load(RESUME_MODEL)
        with pytest.raises(HubClosedError):
            async with hub:
                pass
        # A new hub on the same cache resumes the partial and finishes the file.
        async with AsyncHub(config) as fresh:
            model = await fresh.load(RESUME_MODEL)
    assert model == onnx.load(str(model_file(service_root, entry)))


# ----------------------------------------------------------------------------- parsing
def _layered_model(layers: int, width: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.random((width, width), dtype=np.float32), f"w{i}")
        for i in range(layers)
    ]
    weights.insert(1, numpy_helper.from_array(np.float32([0.5]), "small"))
    nodes, current = [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"h{i}"]))
        current = f"h{i}"
    nodes.append(helper.make_node("Mul", [current, "small"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "layered",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_piecewise_parse_equals_onnx_load(
    service_root: Path, entries: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The loader asynchub uses equals ``onnx.load``: large initializers in order, a graph
    written in two pieces (the zoo's big models), external data, tiny files, and a broken
    file fails the same way."""
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import convert_model_to_external_data

    from asynchub._onnx.parse import SPLIT_BYTES, load_model

    layered = tmp_path / "layered.onnx"
    onnx.save(_layered_model(4, 1024), str(layered))  # 4 MiB initializers around a tiny one
    external_dir = tmp_path / "external"
    external_dir.mkdir()
    with_external = _layered_model(2, 600)
    convert_model_to_external_data(with_external, location="weights.bin", size_threshold=1024)
    onnx.save(with_external, str(external_dir / "model.onnx"))
    cases = [
        layered,
        external_dir / "model.onnx",
        model_file(service_root, entries[RESUME_MODEL]),  # graph field written twice
        model_file(service_root, entries["Svc0"]),  # smaller than SPLIT_BYTES
    ]
    for path in cases:
        expected = onnx.load(str(path))
        got = load_model(path)
        assert got == expected, path
    assert layered.stat().st_size > 4 * SPLIT_BYTES
    assert [t.name for t in load_model(layered).graph.initializer] == [
        "w0",
        "small",
        "w1",
        "w2",
        "w3",
    ]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(layered.read_bytes()[: 3 * SPLIT_BYTES])
    with pytest.raises(DecodeError):
        onnx.load(str(broken))
    with pytest.raises(DecodeError):
        load_model(broken)
