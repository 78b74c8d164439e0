"""``asynchub demo``: the whole hub, end to end, on a fresh machine with only loopback.

Steps: build the default generated zoo (:mod:`asynchub._demo.zoo`) in a temporary directory, serve
it with :class:`~asynchub._demo.static_server.StaticMirror` on 127.0.0.1 in the GitHub-like layout
(``<root>/onnx/models/main/...``), point a fresh :class:`HubConfig` at it (built directly, so
the user's ``ASYNCHUB_*`` sources are never read), list the zoo, prefetch all of it, download
one model with its test data, run it with ``onnx.reference.ReferenceEvaluator`` and compare
with ``output_0.pb``, then time a warm (cached) load.

Choices: the cache is a temporary directory unless ``cache_dir`` is given (it should then be a
scratch directory: the demo's ``onnx/models`` manifest replaces any cached one there until the
next online use). The model run is ``TinyNet`` (the zoo's default pick, three opsets). Nothing
is printed here; every line goes through ``emit`` (the CLI passes ``print``).

``serve=True`` (``asynchub demo --serve``) keeps the mirror up instead of running the steps and
prints the two ``export`` lines that point any asynchub at it, so the CLI and the library can
be tried against it from another shell; it serves until cancelled.
"""

from __future__ import annotations

import glob
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from .._cli.support import format_models
from .._config import HubConfig
from .._exceptions import IntegrityError
from .._hub.client import AsyncHub
from .._progress.events import ProgressCallback
from .._progress.units import format_rate, format_size
from .static_server import StaticMirror
from .zoo import build_zoo, default_zoo

__all__ = ["DEMO_MODEL", "run_demo"]

DEMO_MODEL = "TinyNet"
REPO_DIR = ("onnx", "models", "main")


def _rate(nbytes: float, seconds: float) -> str:
    return format_rate(nbytes / seconds) if seconds > 0 else "-"


def _tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def _check_outputs(model_dir: Path) -> tuple[str, float]:
    """Run the model on its test data and compare with ``output_0.pb`` (blocking)."""
    model = onnx.load(str(model_dir / "model.onnx"))
    data_dir = sorted(model_dir.glob("test_data_set_*"))[0]
    inputs: dict[str, np.ndarray] = {}
    for path in sorted(glob.glob(str(data_dir / "input_*.pb"))):
        tensor = onnx.load_tensor(path)
        inputs[tensor.name or model.graph.input[len(inputs)].name] = numpy_helper.to_array(tensor)
    expected = [
        numpy_helper.to_array(onnx.load_tensor(p))
        for p in sorted(glob.glob(str(data_dir / "output_*.pb")))
    ]
    started = time.perf_counter()
    outputs = ReferenceEvaluator(model).run(None, inputs)
    seconds = time.perf_counter() - started
    try:
        for got, want in zip(outputs, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    except (AssertionError, ValueError) as exc:
        raise IntegrityError(f"the model's output does not match {data_dir}: {exc}") from None
    shapes = ", ".join(str(tuple(np.shape(o))) for o in outputs)
    return shapes, seconds


async def run_demo(
    *,
    cache_dir: Path | None = None,
    emit: Callable[[str], None],
    progress: ProgressCallback | None = None,
    limit_rate: int | None = None,
    max_connections: int = 16,
    serve: bool = False,
) -> None:
    """Run the demo (see the module docstring); raises a ``HubError`` if a step fails.

    ``serve=True`` only builds and serves the zoo, prints the two environment lines that point
    asynchub at it and serves until cancelled (the CLI cancels on Ctrl-C or SIGTERM)."""

    with tempfile.TemporaryDirectory(prefix="asynchub-demo-") as tmp:
        root = Path(tmp) / "mirror"
        repo_dir = root.joinpath(*REPO_DIR)
        started = time.perf_counter()
        manifest = await anyio.to_thread.run_sync(build_zoo, repo_dir, default_zoo())
        zoo_bytes = await anyio.to_thread.run_sync(_tree_bytes, repo_dir)
        emit(
            f"built a zoo of {len(manifest)} ONNX models ({format_size(zoo_bytes)} with test "
            f"data) in {time.perf_counter() - started:.2f} s at {repo_dir}"
        )
        with StaticMirror(root) as server:
            emit(f"serving it at {server.url}/onnx/models/main/ (a static HTTP server)")
            if serve:
                emit(
                    "use it from another shell (stop with Ctrl-C):\n"
                    f"export ASYNCHUB_MANIFEST_URL='{server.url}/{{owner}}/{{repo}}/{{ref}}/"
                    "ONNX_HUB_MANIFEST.json'\n"
                    f"export ASYNCHUB_FILE_URLS='{server.url}/{{owner}}/{{repo}}/{{ref}}/{{path}}'"
                )
                await anyio.sleep_forever()
            config = HubConfig(
                cache_dir=cache_dir or Path(tmp) / "cache",
                manifest_url=f"{server.url}/{{owner}}/{{repo}}/{{ref}}/ONNX_HUB_MANIFEST.json",
                file_urls=(f"{server.url}/{{owner}}/{{repo}}/{{ref}}/{{path}}",),
                limit_rate=limit_rate,
                max_connections=max_connections,
            )
            emit(f"cache: {config.cache_dir}\n")
            async with AsyncHub(config, progress=progress) as hub:
                await _steps(hub, emit)


async def _steps(hub: AsyncHub, emit: Callable[[str], None]) -> None:
    emit("$ asynchub list")
    emit(format_models(await hub.list_models()) + "\n")

    emit("$ asynchub prefetch --all --all-opsets --with-test-data")
    result = await hub.prefetch(all=True, all_opsets=True, with_test_data=True, extract=False)
    emit(result.summary() + "\n")
    if result.failed:
        raise result.failed[0].error or IntegrityError("prefetch failed")

    emit(f"$ asynchub download {DEMO_MODEL} --with-test-data")
    started = time.perf_counter()
    model_dir = Path(await hub.download_model_with_test_data(DEMO_MODEL))
    emit(f"{model_dir}  ({time.perf_counter() - started:.3f} s: cached archive, extracted)")
    shapes, run_s = await anyio.to_thread.run_sync(_check_outputs, model_dir)
    emit(
        f"ran {DEMO_MODEL} with onnx.reference.ReferenceEvaluator on test_data_set_0 in "
        f"{run_s * 1000:.1f} ms: output {shapes} matches output_0.pb\n"
    )

    info = await hub.get_model_info(DEMO_MODEL)
    started = time.perf_counter()
    proto = await hub.load(DEMO_MODEL)
    warm = time.perf_counter() - started
    size = info.model_bytes or 0
    emit(
        f"warm load of {DEMO_MODEL} (opset {info.opset}, {format_size(size)}, from the cache, "
        f"SHA-256 re-verified): {warm * 1000:.1f} ms, graph {proto.graph.name!r} with "
        f"{len(proto.graph.node)} nodes\n"
    )
    emit(
        f"demo OK: fetched {format_size(result.bytes_fetched)} in {len(result.items)} files in "
        f"{result.elapsed:.2f} s ({_rate(result.bytes_fetched, result.elapsed)}) over loopback; "
        "every file SHA-256 verified before it was cached"
    )
