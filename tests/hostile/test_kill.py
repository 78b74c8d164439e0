"""Row 9: SIGKILL at random points, then another run.

Each seeded run starts a child process (``tests/hostile/child.py``, public API only) that
fetches a model or its test data from a mirror served by this process and is killed with
SIGKILL at a point chosen from the seed:

``mid-chunk``       the mirror stalls one Range answer after a random number of bytes; once the
                    resume state lists finished chunks, the parent kills the child
``transfer``        the child kills itself at the K-th ``transfer`` progress event
``last-transfer``   ... when the last byte was written to the partial file
``last-verified``   ... when the last byte was hashed, before the atomic rename
``extract``         ... when the extraction's staging directory holds K entries
``state``           ... when it sees a resume-state write (its temporary, or its replacement)

A watcher thread hashes whatever appears under the final cache names during both runs and
must never see a wrong digest. The next run (in this process, through ``Hub``) must succeed,
resume where the kill left a usable state (``mid-chunk``: fewer bytes served than the file
holds), publish exactly the manifest's bytes, and leave no temporary file.

By default 6 seeds run (one per kill point); ``--runslow`` runs all 50.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from asynchub import Hub
from asynchub._cache.archive import COMPLETE_MARKER
from tests.conftest import REPO_PREFIX, mirror_config
from tests.hostile.helpers import (
    entry,
    final_archive,
    final_model,
    finish_child,
    finished_chunks,
    leftovers,
    many_member_archive,
    sha256,
    start_child,
    watching,
    with_archive,
)
from tests.mirror import Fault, MirrorServer

POINTS = ("mid-chunk", "transfer", "last-transfer", "last-verified", "extract", "state")
ALL_RUNS = 50
DEFAULT_RUNS = len(POINTS)
NAME, OPSET = "TinyNet", 13
CHUNK = 64 * 1024
MEMBERS = 300
ARCHIVE_REL = "validated/vision/classification/tinynet/model/tinynet-13-big.tar.gz"
#: Per-answer pace of the mirror: a 64 KiB chunk takes ~60 ms, so kills land mid-transfer.
RATE = 1024 * 1024
CHILD_CONFIG = {"state_interval": 8 * 1024}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        runs = ALL_RUNS if metafunc.config.getoption("--runslow") else DEFAULT_RUNS
        params = [
            pytest.param(seed, marks=[pytest.mark.slow] if seed >= DEFAULT_RUNS else [])
            for seed in range(runs)
        ]
        metafunc.parametrize("seed", params, ids=[f"seed{s}-{POINTS[s % 6]}" for s in range(runs)])


def _prepare(mirror_root: Path, zoo: list[dict[str, Any]]) -> dict[str, Any]:
    """Serve TinyNet-13 with a test-data archive of many members (a slow extraction)."""
    raw = entry(zoo, NAME, OPSET)
    model = (mirror_root / REPO_PREFIX / raw["model_path"]).read_bytes()
    blob = many_member_archive(model, MEMBERS)
    (mirror_root / REPO_PREFIX / ARCHIVE_REL).write_bytes(blob)
    changed = with_archive(raw, ARCHIVE_REL, blob)
    (mirror_root / REPO_PREFIX / "ONNX_HUB_MANIFEST.json").write_text(json.dumps([changed]))
    return changed


def _wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    """Poll a file-system or request-log condition (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _kill_mid_chunk(server: MirrorServer, args: dict[str, Any], rng: random.Random) -> Any:
    chunks = -(-args["size"] // CHUNK)
    stalled_chunk = rng.randrange(1, chunks)
    after = rng.randrange(1, min(CHUNK, args["size"] - stalled_chunk * CHUNK))
    fault = server.add_fault(
        Fault("stall", path="*tinynet-13.onnx", after_bytes=after,
              only_start_above=stalled_chunk * CHUNK - 1)
    )  # fmt: skip
    proc = start_child("kill", {**args, "point": "none"})
    cache = Path(args["cache_dir"])

    def stalled_and_saved() -> bool:
        hit = [r for r in server.requests if r.fault == "stall"]
        return bool(hit) and hit[0].body_bytes >= after and finished_chunks(cache) >= 1

    try:
        _wait_for(stalled_and_saved, "the stalled answer and a saved resume state")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    assert fault.hits == 1
    return proc


def test_sigkill_then_next_run_resumes_or_redoes(
    seed: int,
    mirror_root: Path,
    zoo_manifest: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    rng = random.Random(seed)
    point = POINTS[seed % len(POINTS)]
    raw = _prepare(mirror_root, zoo_manifest)
    size = raw["metadata"]["model_bytes"]
    cache = tmp_path / "cache"
    model_final = final_model(cache, raw)
    archive_final = final_archive(cache, raw)
    expected = {model_final: raw["metadata"]["model_sha"],
                archive_final: raw["metadata"]["model_with_data_sha"]}  # fmt: skip
    extract = point == "extract"
    # a state write is seen by a thread that polls: give it a download of ~0.4 s to watch
    rate = RATE // 4 if point == "state" else RATE
    with MirrorServer(mirror_root, rate_limit=rate).running() as server, watching(expected):
        args: dict[str, Any] = {
            "base_url": server.url,
            "cache_dir": str(cache),
            "model": NAME,
            "opset": OPSET,
            "test_data": extract,
            "size": raw["metadata"]["model_with_data_bytes"] if extract else size,
            "config": CHILD_CONFIG,
        }
        if point == "mid-chunk":
            proc = _kill_mid_chunk(server, args, rng)
        else:
            arg = {"transfer": rng.randint(1, 6), "extract": rng.randint(1, MEMBERS)}.get(point)
            spec = point if arg is None else f"{point}:{arg}"
            proc = start_child("kill", {**args, "point": spec})
        killed = finish_child(proc, timeout=60)
        assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr[-2000:])
        target = archive_final.with_name(archive_final.name.removesuffix(".tar.gz"))
        if (target / COMPLETE_MARKER).exists():
            _assert_extracted(target, raw)
        served_before = server.served_bytes("*tinynet-13.onnx")
        config = mirror_config(server.url, cache, min_split_size=CHUNK)
        with Hub(config) as hub:
            if extract:
                folder = Path(hub.download_model_with_test_data(NAME, opset=OPSET))
            else:
                path = hub.download(NAME, opset=OPSET)
        served_after = server.served_bytes("*tinynet-13.onnx") - served_before
    if extract:
        assert sha256(archive_final.read_bytes()) == raw["metadata"]["model_with_data_sha"]
        _assert_extracted(folder.parent, raw)
    else:
        assert path == model_final
        assert sha256(path.read_bytes()) == raw["metadata"]["model_sha"]
    if point == "mid-chunk":
        assert 0 < served_after < size, f"the next run fetched {served_after} of {size} bytes"
    assert leftovers(cache) == [], "temporary files survived a successful run"


def _assert_extracted(target: Path, raw: dict[str, Any]) -> None:
    model = target / "net" / "model.onnx"
    assert sha256(model.read_bytes()) == raw["metadata"]["model_sha"]
    extras = sorted((target / "net" / "test_data_set_0").iterdir())
    assert len(extras) == MEMBERS
    for path in extras:
        index = int(path.stem.removeprefix("extra_"))
        assert path.read_bytes() == bytes([index % 251]) * 512
