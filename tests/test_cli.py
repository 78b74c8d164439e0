"""The ``asynchub`` CLI in a subprocess (``python -m asynchub``) against a local mirror."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from asynchub._cli.main import EXIT_CODES, exit_code_for, main
from asynchub._demo.zoo import ZooModel, build_zoo
from asynchub._exceptions import (
    ConfigError,
    HTTPStatusError,
    InsufficientSpaceError,
    IntegrityError,
    ManifestNotFoundError,
    MirrorsExhaustedError,
    ModelNotFoundError,
    OfflineError,
    TransferError,
    UntrustedRepoError,
)
from tests.conftest import REPO_PREFIX
from tests.mirror import Fault, MirrorServer

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "/{owner}/{repo}/{ref}/"


def _env(base_url: str, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHUB_")}
    env.update(
        ASYNCHUB_MANIFEST_URL=base_url + TEMPLATE + "ONNX_HUB_MANIFEST.json",
        ASYNCHUB_FILE_URLS=base_url + TEMPLATE + "{path}",
        ASYNCHUB_CACHE_DIR=str(cache),
        ASYNCHUB_DISABLE_PROGRESS_BARS="1",
        ASYNCHUB_CHUNK_SIZE="64K",
    )
    env.update(extra)
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asynchub", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def server(mirror_root: Path) -> Iterator[MirrorServer]:
    with MirrorServer(mirror_root).running() as running:
        yield running


@pytest.fixture
def env(server: MirrorServer, tmp_path: Path) -> dict[str, str]:
    return _env(server.url, tmp_path / "cache")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_list_and_info_json(env: dict[str, str], zoo_manifest: list[dict[str, Any]]) -> None:
    entries = _json(_run(env, "list", "--json"))
    assert [(e["model"], e["opset"]) for e in entries] == [
        (e["model"], e["opset_version"]) for e in zoo_manifest
    ]
    text = _json(_run(env, "list", "--tag", "TEXT", "--json"))
    assert [e["model"] for e in text] == ["NanoText"]
    table = _run(env, "list", "--tag", "vision")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == [
        "MODEL",
        "OPSET",
        "SIZE",
    ]
    assert "6 entries, 4 models" in table.stdout

    info = _json(_run(env, "info", "tinynet", "--json"))
    assert (info["model"], info["opset"], info["opsets"]) == ("TinyNet", 13, [7, 12, 13])
    assert info["cached_path"] is None
    assert (
        _json(_run(env, "--repo", "onnx/models", "info", "TinyNet", "--opset", "7", "--json"))[
            "opset"
        ]
        == 7
    )


def test_download_prints_verified_paths(env: dict[str, str]) -> None:
    proc = _run(env, "download", "TinyNet")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path.is_file() and path.name.startswith(_sha(path))
    proc = _run(env, "download", "NanoText", "--with-test-data")
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip())
    assert (folder / "model.onnx").is_file() and list(folder.glob("test_data_set_*"))
    assert _json(_run(env, "info", "TinyNet", "--json"))["cached_path"] == str(path)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["download", "NoSuchNet"], 3, "No models found with name NoSuchNet"),
        (["info", "TinyNet", "--opset", "5"], 3, "Valid opsets: [7, 12, 13]"),
        (["prefetch", "--tag", "vision", "--limit-rate", "fast"], 2, "--limit-rate"),
        (["prefetch"], 2, "say what to prefetch"),
        (["frobnicate"], 2, "invalid choice"),
        (["--offline", "download", "TinyNet"], 8, "offline"),
        (["--offline", "prefetch", "--all"], 8, "offline"),
        (["--repo", "someone/else", "download", "TinyNet"], 6, "not trusted"),
    ],
)
def test_errors_have_their_exit_codes(
    env: dict[str, str], mirror_root: Path, args: list[str], code: int, message: str
) -> None:
    if "someone/else" in args:  # a repo the mirror serves but nobody trusts
        shutil.copytree(mirror_root / REPO_PREFIX, mirror_root / "someone" / "else" / "main")
    if args[0] == "--offline":
        assert _run(env, "list").returncode == 0  # the manifest is cached, the files are not
    proc = _run(env, *args)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_exit_code_table_and_help() -> None:
    assert exit_code_for(ConfigError("x")) == 2
    assert exit_code_for(ModelNotFoundError("x")) == 3
    assert exit_code_for(IntegrityError("x")) == 4
    assert exit_code_for(TransferError("x")) == 5
    assert exit_code_for(MirrorsExhaustedError("x", [("u", IntegrityError("bad"))])) == 4
    assert exit_code_for(UntrustedRepoError("x")) == 6
    assert exit_code_for(InsufficientSpaceError(28, "full")) == 7
    assert exit_code_for(OfflineError("x")) == 8
    try:
        raise ManifestNotFoundError("no manifest") from TransferError("connection refused")
    except ManifestNotFoundError as exc:
        assert exit_code_for(exc) == 5
    try:
        raise ManifestNotFoundError("no manifest") from HTTPStatusError("gone", status=404)
    except ManifestNotFoundError as exc:
        assert exit_code_for(exc) == 3
    assert main(["--help"]) == 0
    assert set(EXIT_CODES) == {0, 1, 2, 3, 4, 5, 6, 7, 8, 130}
    proc = subprocess.run(
        [sys.executable, "-m", "asynchub", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "exit codes:" in proc.stdout and "130" in proc.stdout and "mindspore" in proc.stdout


def test_prefetch_with_a_failing_file_completes_the_others(
    server: MirrorServer, env: dict[str, str]
) -> None:
    server.add_fault(Fault(kind="status", path="*tinynet-13.onnx", status=404, times=None))
    proc = _run(env, "prefetch", "--tag", "vision", "--with-test-data", "--json")
    assert proc.returncode == 1, proc.stderr
    result = _json(proc)
    failed = [i for i in result["items"] if i["status"] == "failed"]
    assert [(i["model"], i["kind"]) for i in failed] == [("TinyNet", "model")]
    assert "404" in failed[0]["error"] and failed[0]["exit_code"] == 5
    assert result["ok"] == len(result["items"]) - 1 >= 6
    for item in result["items"]:
        if item["status"] != "failed":
            assert Path(item["path"]).exists()
    text = _run(env, "prefetch", "--tag", "vision", "--with-test-data")
    assert text.returncode == 1
    assert "FAILED TinyNet (opset 13) model" in text.stdout


def test_prefetch_ctrl_c_keeps_partials_and_rerun_fetches_the_rest(tmp_path: Path) -> None:
    repo = tmp_path / "mirror" / REPO_PREFIX
    build_zoo(repo, [ZooModel(f"Big{c}", 12, ("big",), size=1_500_000) for c in "AB"])
    total = sum(p.stat().st_size for p in repo.rglob("*.onnx"))
    with MirrorServer(tmp_path / "mirror", rate_limit=600_000).running() as slow:
        env = _env(slow.url, tmp_path / "cache")
        proc = subprocess.Popen(
            [sys.executable, "-m", "asynchub", "prefetch", "--tag", "big"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while slow.served_bytes("*.onnx") < total // 4 and time.monotonic() < deadline:
            time.sleep(0.02)  # polling a condition, bounded by the deadline
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        _out, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 5, "Ctrl-C must stop quickly"
        assert proc.returncode == 130, err
        assert "interrupted" in err and "run the same command again to resume" in err
        assert list((tmp_path / "cache").rglob("*.partial"))
        before = slow.served_bytes("*.onnx")
        rerun = _run(env, "prefetch", "--tag", "big", "--json")
        assert rerun.returncode == 0, rerun.stderr
        served_again = slow.served_bytes("*.onnx") - before
    result = _json(rerun)
    assert result["bytes_fetched"] < result["bytes_planned"] == total
    assert served_again == result["bytes_fetched"] < total
    for item in result["items"]:
        assert _sha(Path(item["path"])) == item["sha256"]


def test_limit_rate_holds_within_15_percent(env: dict[str, str]) -> None:
    cap = 512_000  # decimal units: 512K = 512,000 bytes/s
    proc = _run(
        env,
        "prefetch",
        "--all",
        "--all-opsets",
        "--with-test-data",
        "--json",
        "--limit-rate",
        "512K",
        "--max-connections",
        "8",
    )
    assert proc.returncode == 0, proc.stderr
    result = _json(proc)
    assert result["bytes_fetched"] > 1_000_000
    rate = result["bytes_fetched"] / result["elapsed"]
    assert 0.85 * cap <= rate <= 1.15 * cap, f"{rate:.0f} B/s against a cap of {cap}"


def test_cache_path_ls_verify_prune(env: dict[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert _run(env, "cache", "path").stdout.strip() == str(cache)
    assert _run(env, "prefetch", "--all", "--with-test-data").returncode == 0
    listing = _json(_run(env, "cache", "ls", "--json"))
    files = [f for f in listing if f["kind"] == "file"]
    assert {f["model"] for f in files} == {
        "TinyNet",
        "TinyNet-preproc",
        "MicroNet",
        "NanoText",
        "LegacyNet",
    }
    assert any(f["kind"] == "extracted" for f in listing)

    good = _json(_run(env, "cache", "verify", "--json"))
    assert good["checked"] == len(files) and good["bad"] == []
    victim = Path(next(f["path"] for f in files if f["model"] == "MicroNet"))
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    proc = _run(env, "cache", "verify", "--json")
    assert proc.returncode == 4
    assert [b["path"] for b in _json(proc)["bad"]] == [str(victim)]

    stale = victim.with_name(victim.name + ".999-deadbeef.partial")
    stale.write_bytes(b"x" * 10)
    orphan = cache / "validated" / "gone" / (("ab" * 32) + "_old-model.onnx")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"y" * 20)
    for path in (stale, orphan):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    dry = _json(_run(env, "cache", "prune", "--dry-run", "--json"))
    assert sorted(r["path"] for r in dry["removed"]) == sorted([str(stale), str(orphan)])
    assert stale.exists() and orphan.exists()
    done = _run(env, "cache", "prune")
    assert done.returncode == 0 and "removed 2 items" in done.stdout
    assert not stale.exists() and not orphan.exists() and not orphan.parent.exists()
    assert all(Path(f["path"]).exists() for f in files)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_mirror_output_served_by_a_plain_static_server(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "site"
    proc = _run(env, "mirror", str(out), "--all", "--all-opsets", "--with-test-data", "--json")
    assert proc.returncode == 0, proc.stderr
    report = _json(proc)
    manifest = json.loads((out / REPO_PREFIX / "ONNX_HUB_MANIFEST.json").read_text())
    assert report["entries"] == len(manifest) == 7
    micro = next(e for e in manifest if e["model"] == "MicroNet")
    assert "model_with_data_path" not in micro["metadata"]
    for entry in manifest:
        assert _sha(out / REPO_PREFIX / entry["model_path"]) == entry["metadata"]["model_sha"]
    text = _run(env, "mirror", str(out), "--tag", "text")
    assert text.returncode == 0 and "ASYNCHUB_FILE_URLS" in text.stdout
    assert len(json.loads((out / REPO_PREFIX / "ONNX_HUB_MANIFEST.json").read_text())) == 7

    handler = partial(_QuietHandler, directory=str(out))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        second = _env(f"http://127.0.0.1:{httpd.server_address[1]}", tmp_path / "cache2")
        fleet = _run(second, "prefetch", "--all", "--all-opsets", "--with-test-data", "--json")
        assert fleet.returncode == 0, fleet.stderr
        result = _json(fleet)
        assert result["failed"] == 0 and result["bytes_fetched"] == result["bytes_total"]
        got = _run(second, "download", "TinyNet", "--opset", "12", "--with-test-data")
        assert got.returncode == 0 and (Path(got.stdout.strip()) / "model.onnx").is_file()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_the_command_runs_the_cycle_collector_less_and_main_leaves_it_alone(
    tmp_path: Path,
) -> None:
    """The ``asynchub`` process (``command``) freezes what is alive once it starts and runs
    young collections every 10,000 allocations; ``main``, which a program may call in its own
    process, changes nothing of the collector."""
    code = (
        "import gc, json, sys\n"
        "from asynchub._cli.main import YOUNG_THRESHOLD, command, main\n"
        "before = gc.get_threshold()\n"
        f"args = ['cache', 'path', '--cache-dir', {str(tmp_path)!r}]\n"
        "by_main = main(args)\n"
        "after_main, frozen_main = gc.get_threshold(), gc.get_freeze_count()\n"
        "sys.argv = ['asynchub', *args]\n"
        "by_command = command()\n"
        "print(json.dumps({'before': before, 'after_main': after_main,\n"
        "                  'frozen_main': frozen_main, 'by_main': by_main,\n"
        "                  'by_command': by_command, 'after': gc.get_threshold(),\n"
        "                  'frozen': gc.get_freeze_count(), 'young': YOUNG_THRESHOLD}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["by_main"] == out["by_command"] == 0
    assert out["after_main"] == out["before"] and out["frozen_main"] == 0
    assert out["after"] == [out["young"], 10, 10]
    assert out["frozen"] > 1000  # the modules and the parser
