"""What each entry point imports, measured in a fresh child process.

The model stack (onnx, and with it numpy, ml_dtypes and protobuf) costs about a second to
import on a small machine; it is only needed where a ``ModelProto`` is made. The CLI's
``--help`` should import almost nothing (argparse and the package's pure modules). Each test
runs the entry point in a new interpreter against a local mirror and reads ``sys.modules``
afterwards. Timings (``-X importtime``, wall time relative to ``python -c pass``) are printed
for the record, never asserted: they belong to ``benchmarks/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "/{owner}/{repo}/{ref}/"

#: The model stack: imported only where a ModelProto is made.
MODEL_STACK = ("onnx", "numpy", "ml_dtypes", "google.protobuf")
#: What ``asynchub --help`` (and ``import asynchub``) must not import either: the async core
#: and its libraries, the HTTP client, the progress bars, the file locks.
RUNTIME = ("asyncio", "anyio", "aiohttp", "yarl", "multidict", "tqdm", "filelock")

#: Runs a snippet, then writes the names of the imported modules to the file in argv[1].
#: ``SystemExit`` (the CLI's way to return) is caught so the modules are written either way.
CHILD = """
import json, sys
_out = sys.argv.pop(1)
_code = 0
try:
    exec(compile(sys.argv.pop(1), "<entry point>", "exec"))
except SystemExit as exc:
    _code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
with open(_out, "w") as stream:
    json.dump({"code": _code, "modules": sorted(sys.modules)}, stream)
"""

#: The CLI as the console script runs it (``python -m asynchub`` runs the same ``main``).
CLI = (
    "import runpy\n"
    "sys.argv = ['asynchub', *ARGS]\n"
    "runpy.run_module('asynchub', run_name='__main__', alter_sys=True)\n"
)


def _env(base_url: str | None, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCHUB_", "ONNX_"))}
    env.update(
        ONNX_HOME=str(cache.parent / "onnx_home"),
        ASYNCHUB_CACHE_DIR=str(cache),
        ASYNCHUB_DISABLE_PROGRESS_BARS="1",
        ASYNCHUB_CHUNK_SIZE="64K",
    )
    if base_url is not None:
        env.update(
            ASYNCHUB_MANIFEST_URL=base_url + TEMPLATE + "ONNX_HUB_MANIFEST.json",
            ASYNCHUB_FILE_URLS=base_url + TEMPLATE + "{path}",
            ASYNCHUB_MINDSPORE_CARD_URL=base_url + "/cards/{uid}.md",
        )
    env.update(extra)
    return env


def run_child(code: str, env: dict[str, str], tmp_path: Path) -> tuple[int, set[str]]:
    """Run ``code`` in a fresh interpreter; its exit code and the modules it imported."""
    out = tmp_path / f"modules-{time.monotonic_ns()}.json"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.is_file(), f"the child failed:\n{done.stdout}\n{done.stderr}"
    result = json.loads(out.read_text())
    return int(result["code"]), set(result["modules"])


def cli(*args: str) -> str:
    return f"ARGS = {list(args)!r}\n" + CLI


def loaded(modules: set[str], roots: tuple[str, ...]) -> list[str]:
    """The modules of ``roots`` (packages and their submodules) found in ``modules``."""
    return sorted(m for m in modules if any(m == r or m.startswith(r + ".") for r in roots))


@pytest.fixture
def server(mirror_root: Path) -> Iterator[MirrorServer]:
    card = _card_with_asset(mirror_root)
    assert card.is_file()
    with MirrorServer(mirror_root).running() as running:
        yield running


def _card_with_asset(root: Path) -> Path:
    """A MindSpore asset card (``cards/test/net.md``) whose one asset is served by the mirror
    (the card's URL is filled in by :func:`_point_card_at`)."""
    data = os.urandom(3000)
    (root / "files").mkdir(exist_ok=True)
    (root / "files" / "net.ckpt").write_bytes(data)
    card = root / "cards" / "test" / "net.md"
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text(
        "# net\n\n---\n\nmodel-name: net\n\nmodule-type: cv-classification\n\n"
        "mindspore-version: 1.10\n\nasset:\n-\n    file-format: ckpt\n"
        "    asset-link: <URL/files/net.ckpt>  \n"
        f"    asset-sha256: {hashlib.sha256(data).hexdigest()}  \n\n"
        "license: Apache2.0\n\nsummary: a test card\n\n---\n",
        encoding="utf-8",
    )
    return card


def _point_card_at(root: Path, base_url: str) -> None:
    card = root / "cards" / "test" / "net.md"
    card.write_text(card.read_text("utf-8").replace("URL/", base_url + "/"), "utf-8")


# ---------------------------------------------------------------------------- nothing heavy
@pytest.mark.parametrize(
    "code",
    [
        "import asynchub",
        "from asynchub import hub",
        "import asynchub as hub; hub.HubConfig, hub.ModelInfo, hub.Hub, hub.HubError",
    ],
)
def test_import_loads_neither_the_model_stack_nor_the_async_core(
    code: str, tmp_path: Path
) -> None:
    _, modules = run_child(code, _env(None, tmp_path / "cache"), tmp_path)
    assert "asynchub" in modules
    assert loaded(modules, MODEL_STACK) == []
    assert loaded(modules, RUNTIME) == []


def test_help_imports_almost_nothing(tmp_path: Path) -> None:
    env = _env(None, tmp_path / "cache")
    code, modules = run_child(cli("--help"), env, tmp_path)
    assert code == 0
    assert loaded(modules, MODEL_STACK) == []
    assert loaded(modules, RUNTIME) == []
    ours = sorted(m for m in modules if m.startswith("asynchub"))
    # The figures, for the record (not asserted): wall time against the bare interpreter and
    # the heaviest imports of --help, with bytecode cached as in an installed package (a
    # private cache: this environment may set PYTHONDONTWRITEBYTECODE).
    timed = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    timed["PYTHONPYCACHEPREFIX"] = str(tmp_path / "pycache")
    print(f"\nasynchub modules imported by --help: {ours}")
    print(_wall_report(timed))
    print(_importtime_report(timed))


def _best_wall(argv: list[str], env: dict[str, str], runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=60, check=True)
        best = min(best, time.perf_counter() - started)
    return best


def _wall_report(env: dict[str, str]) -> str:
    _best_wall([sys.executable, "-m", "asynchub", "--help"], env, runs=1)  # writes bytecode
    bare = _best_wall([sys.executable, "-c", "pass"], env)
    helped = _best_wall([sys.executable, "-m", "asynchub", "--help"], env)
    return (
        f"wall (best of 5): python -c pass {bare * 1e3:.0f} ms, python -m asynchub --help "
        f"{helped * 1e3:.0f} ms ({helped / bare:.1f}x)"
    )


def _importtime_report(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "asynchub", "--help"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        name = parts[-1][1:] if len(parts) == 3 else ""
        # top-level imports only, without the interpreter's own start-up (site, encodings)
        top_level = bool(name) and not name.startswith(" ")
        startup = name.strip() in ("site", "encodings", "_frozen_importlib_external")
        if parts[1:2] and parts[1].strip().isdigit() and top_level and not startup:
            rows.append((int(parts[1]), name.strip()))
    top = sorted(rows, reverse=True)[:8]
    return "heaviest top-level imports of --help after start-up (cumulative us):\n" + "\n".join(
        f"  {us:>8} {name}" for us, name in top
    )


@pytest.mark.parametrize(
    "args",
    [
        ("list", "--json"),
        ("info", "TinyNet"),
        ("download", "TinyNet"),
        ("download", "NanoText", "--with-test-data"),
        ("prefetch", "--tag", "vision"),
        ("cache", "ls"),
        ("cache", "verify"),
        ("mirror", "--model", "MicroNet", "OUT"),
        ("mindspore", "info", "test/net"),
        ("mindspore", "download", "test/net"),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_cli_commands_never_import_the_model_stack(
    args: tuple[str, ...], server: MirrorServer, mirror_root: Path, tmp_path: Path
) -> None:
    _point_card_at(mirror_root, server.url)
    env = _env(server.url, tmp_path / "cache")
    if args[0] == "cache":  # something to list and verify
        first, _ = run_child(cli("download", "TinyNet"), env, tmp_path)
        assert first == 0
    args = tuple(str(tmp_path / "out") if a == "OUT" else a for a in args)
    code, modules = run_child(cli(*args), env, tmp_path)
    assert code == 0
    assert loaded(modules, MODEL_STACK) == []
    if args[0] in ("download", "prefetch", "mirror") or args[:2] == ("mindspore", "download"):
        assert list((tmp_path / "cache").rglob("*_*.*")), "something was downloaded"


@pytest.mark.parametrize(
    "code",
    [
        "import asynchub; print(asynchub.download('TinyNet'))",
        "import asyncio, asynchub; print(asyncio.run(asynchub.adownload('TinyNet')))",
        "import asynchub; print(asynchub.hub.download('TinyNet'))",
        "import asynchub; r = asynchub.prefetch(tags=['vision']); assert not r.failed, r",
        "import asynchub; print(asynchub.download_model_with_test_data('NanoText'))",
        "import asynchub; asynchub.list_models(); asynchub.get_model_info('TinyNet')",
        "from asynchub import mindspore as ms; print(ms.download_weights('test/net'))",
        "import asyncio\nfrom asynchub import mindspore as ms\n"
        "print(asyncio.run(ms.adownload_weights('test/net')))",
    ],
    ids=[
        "download",
        "adownload",
        "hub.download",
        "prefetch",
        "download_model_with_test_data",
        "list_models",
        "mindspore.download_weights",
        "mindspore.adownload_weights",
    ],
)
def test_downloads_never_import_the_model_stack(
    code: str, server: MirrorServer, mirror_root: Path, tmp_path: Path
) -> None:
    _point_card_at(mirror_root, server.url)
    env = _env(server.url, tmp_path / "cache")
    exit_code, modules = run_child(code, env, tmp_path)
    assert exit_code == 0
    assert loaded(modules, MODEL_STACK) == []
    # and a second run (everything cached: the warm path) does not either
    _, warm = run_child(code, env, tmp_path)
    assert loaded(warm, MODEL_STACK) == []


# ---------------------------------------------------------------------- imported when needed
@pytest.mark.parametrize(
    "code",
    [
        "import asynchub; m = asynchub.load('TinyNet'); assert m.graph.node",
        "import asyncio, asynchub; m = asyncio.run(asynchub.aload('TinyNet')); "
        "assert m.graph.node",
        "import asynchub; m = asynchub.load_composite_model('TinyNet', 'TinyNet-preproc'); "
        "assert m.graph.node",
    ],
    ids=["load", "aload", "load_composite_model"],
)
def test_loading_a_model_imports_onnx_when_called(
    code: str, server: MirrorServer, tmp_path: Path
) -> None:
    exit_code, modules = run_child(code, _env(server.url, tmp_path / "cache"), tmp_path)
    assert exit_code == 0
    assert "onnx" in modules


def test_lazy_attributes_do_not_import_the_model_stack(tmp_path: Path) -> None:
    """``AsyncHub``, ``hub`` and ``mindspore`` resolve without the model stack."""
    code = (
        "import asynchub\n"
        "assert asynchub.AsyncHub.__name__ == 'AsyncHub'\n"
        "assert asynchub.hub.load is asynchub.load\n"
        "from asynchub import mindspore\n"
    )
    exit_code, modules = run_child(code, _env(None, tmp_path / "cache"), tmp_path)
    assert exit_code == 0
    assert loaded(modules, MODEL_STACK) == []
