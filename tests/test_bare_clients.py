"""The benchmarks' reference clients fetch what the mirror serves: the bare client moves the
bytes, the bare verified client moves and verifies them and refuses a wrong digest (its
figures are only worth comparing if it really did the work)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from asynchub._demo.static_server import StaticMirror

pytestmark = pytest.mark.timeout(60)
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SIZE = 40 * 1024 * 1024 + 12_345  # pieces of a multiple of 64 KiB: the last one is short
sys.path.insert(0, str(BENCH))
import _bare_verified  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    root = tmp_path_factory.mktemp("root")
    data = (bytes(range(251)) * (SIZE // 251 + 1))[:SIZE]  # 251: no period of a piece
    (root / "model.onnx").write_bytes(data)
    return root, data


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=50, cwd=BENCH)


@pytest.mark.parametrize("connections", [1, 3])
def test_the_verified_client_fetches_and_verifies(served: tuple[Path, bytes], tmp_path: Path,
                                                  connections: int) -> None:
    root, data = served
    out = tmp_path / "out.onnx"
    with StaticMirror(root) as mirror:
        run = _run("_bare_verified.py", mirror.url + "/model.onnx", str(out), str(connections),
                   hashlib.sha256(data).hexdigest())
        requests = mirror.request_count
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == data
    assert json.loads(run.stdout.splitlines()[-1])["bytes"] == SIZE
    piece = _bare_verified.piece_size(SIZE, connections)
    assert piece % 65536 == 0 and SIZE % piece
    assert requests == 1 + -(-SIZE // piece)  # the size, then one request per piece


def test_the_verified_client_refuses_a_wrong_digest(served: tuple[Path, bytes],
                                                    tmp_path: Path) -> None:
    root, _ = served
    with StaticMirror(root) as mirror:
        run = _run("_bare_verified.py", mirror.url + "/model.onnx", str(tmp_path / "out"), "2",
                   "0" * 64)
    assert run.returncode == 1
    assert "expected " + "0" * 64 in run.stderr
    assert "seconds" not in run.stdout


def test_the_bare_client_moves_the_bytes(served: tuple[Path, bytes], tmp_path: Path) -> None:
    root, data = served
    out = tmp_path / "out.onnx"
    with StaticMirror(root) as mirror:
        run = _run("_bare_client.py", mirror.url + "/model.onnx", str(out), "4")
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == data
