"""CLI completeness: --version, bare ``asynchub``, global options after every command,
``download`` of several models with ``--json``, ``cache rm``, ``cache ls`` grouped per model,
messages that speak CLI, empty ``list`` results with suggestions, retry warnings and
``demo --serve``. Every test runs ``python -m asynchub`` in a subprocess against a local mirror.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asynchub import __version__
from tests.mirror import Fault, MirrorServer
from tests.test_cli import ROOT, TEMPLATE, _env, _json, _run

pytestmark = pytest.mark.timeout(90)

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def server(mirror_root: Path) -> Iterator[MirrorServer]:
    with MirrorServer(mirror_root).running() as running:
        yield running


@pytest.fixture
def env(server: MirrorServer, tmp_path: Path) -> dict[str, str]:
    return _env(server.url, tmp_path / "cache")


def test_version_and_bare_command_prints_help() -> None:
    proc = _run(dict(os.environ), "--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"asynchub {__version__}"
    bare = _run(dict(os.environ))
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.startswith("usage: asynchub")
    for command in ("list", "download", "prefetch", "cache", "demo", "mindspore"):
        assert re.search(rf"^\s+{command}\s", bare.stdout, re.MULTILINE), command
    assert "error" not in bare.stderr


def test_help_shows_the_real_default_cache_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCHUB_", "ONNX_HOME"))}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    env["COLUMNS"] = "500"  # argparse wraps at hyphens too: keep the path on one line
    proc = _run(env, "download", "--help")
    assert proc.returncode == 0
    assert str(tmp_path / "xdg" / "onnx" / "hub") in proc.stdout
    assert "get_dir()" not in proc.stdout and "HubConfig" not in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--offline"],
        ["info", "TinyNet", "--offline", "--json"],
        ["cache", "ls", "--offline"],
        ["cache", "path", "-q"],
        ["mindspore", "info", "mindspore/1.10/nothing_here", "--offline"],
        ["mindspore", "download", "mindspore/1.10/nothing_here", "-q", "--offline"],
    ],
)
def test_global_options_are_accepted_after_every_command(
    env: dict[str, str], args: list[str]
) -> None:
    assert _run(env, "list").returncode == 0  # caches the manifest
    proc = _run(env, *args)
    assert "unrecognized arguments" not in proc.stderr, proc.stderr
    assert proc.returncode != 2, proc.stderr
    if args[0] == "mindspore":
        assert proc.returncode == 8, proc.stderr  # offline and the card is not cached
        assert "offline" in proc.stderr


def test_cache_dir_after_the_command_wins(env: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "other-cache"
    proc = _run(env, "cache", "path", "--cache-dir", str(other))
    assert proc.returncode == 0 and proc.stdout.strip() == str(other)
    proc = _run(env, "download", "TinyNet", "--cache-dir", str(other))
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(other)


def test_download_several_models_as_json(server: MirrorServer, env: dict[str, str]) -> None:
    proc = _run(env, "download", "TinyNet", "NanoText", "--json")
    assert proc.returncode == 0, proc.stderr
    items = _json(proc)
    assert [i["model"] for i in items] == ["TinyNet", "NanoText"]
    for item in items:
        path = Path(item["path"])
        assert path.is_file()
        assert item["sha"] == _sha(path) and path.name.startswith(item["sha"])
        assert item["size"] == path.stat().st_size
        assert item["mirror"].startswith(server.url)
        assert isinstance(item["seconds"], float) and 0 <= item["seconds"] < 60
    again = _json(_run(env, "download", "TinyNet", "--json"))
    assert again[0]["path"] == items[0]["path"]
    assert again[0]["mirror"] is None  # served from the cache
    plain = _run(env, "download", "TinyNet", "NanoText")
    assert plain.stdout.split() == [i["path"] for i in items]


def test_download_several_models_one_unknown_fails_with_its_code(env: dict[str, str]) -> None:
    proc = _run(env, "download", "TinyNet", "NoSuchNet", "--json")
    assert proc.returncode == 3, proc.stderr
    assert "NoSuchNet" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cache_rm_by_model_and_by_sha(env: dict[str, str], tmp_path: Path) -> None:
    tiny = Path(_run(env, "download", "TinyNet", "--with-test-data").stdout.strip())
    nano = Path(_run(env, "download", "NanoText").stdout.strip())
    assert tiny.is_dir() and nano.is_file()
    proc = _run(env, "cache", "rm", "tinynet")
    assert proc.returncode == 0, proc.stderr
    assert "TinyNet" in proc.stdout
    left = [p for p in (tmp_path / "cache").rglob("*_tinynet-13*") if p.suffix != ".lock"]
    assert not tiny.exists() and not left
    assert nano.is_file()
    proc = _run(env, "cache", "rm", nano.name[:12])
    assert proc.returncode == 0, proc.stderr
    assert not nano.exists()
    missing = _run(env, "cache", "rm", "NoSuchNet")
    assert missing.returncode == 3
    assert "asynchub cache ls" in missing.stderr
    ambiguous = _run(env, "cache", "rm", "ab")
    assert ambiguous.returncode == 2
    assert "at least 8" in ambiguous.stderr


def test_cache_ls_groups_files_per_model(env: dict[str, str]) -> None:
    assert _run(env, "prefetch", "--model", "TinyNet", "--model", "NanoText",
                "--with-test-data").returncode == 0
    proc = _run(env, "cache", "ls")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    heads = [i for i, line in enumerate(lines) if not line.startswith(" ") and line.strip()]
    models = [lines[i].split()[0] for i in heads[:-1]]  # the last line is the total
    assert models == ["NanoText", "TinyNet"]
    tiny = lines[heads[1] : heads[2]]
    assert any("test data" in line for line in tiny[1:])
    assert all(line.startswith("  ") for line in tiny[1:])
    assert not any(re.search(r"[0-9a-f]{64}", line) for line in lines)  # shortened
    assert "…" in proc.stdout
    assert "MB" in lines[-1] or "kB" in lines[-1]


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["list", "--model", "tinynte"], "TinyNet"),
        (["list", "--model", "nano"], "NanoText"),
        (["list", "--tag", "visoin"], "vision"),
    ],
)
def test_empty_list_suggests_close_names_and_fails(
    env: dict[str, str], args: list[str], suggestion: str
) -> None:
    proc = _run(env, *args)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert suggestion in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("args", "extra_env", "says", "never"),
    [
        (["download", "NoSuchNet"], {}, "asynchub list", "list_models()"),
        (["info", "TinyNet", "--opset", "5"], {}, "--opset", "opset="),
        (["prefetch", "--all", "--max-connections", "0"], {}, "--max-connections", "HubConfig"),
        (["list"], {"ASYNCHUB_MAX_CONNECTIONS": "0"}, "ASYNCHUB_MAX_CONNECTIONS", "HubConfig"),
        (["list"], {"ASYNCHUB_CHUNK_SIZE": "huge"}, "ASYNCHUB_CHUNK_SIZE", "HubConfig"),
    ],
)
def test_messages_speak_cli(
    env: dict[str, str], args: list[str], extra_env: dict[str, str], says: str, never: str
) -> None:
    proc = _run({**env, **extra_env}, *args)
    assert proc.returncode in (2, 3), proc.stderr
    assert says in proc.stderr
    assert never not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_retry_waves_are_warning_lines(server: MirrorServer, env: dict[str, str]) -> None:
    server.add_fault(Fault(kind="status", path="*tinynet-13.onnx", status=503, times=2))
    proc = _run(env, "download", "TinyNet")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "retry" in line.lower()]
    assert 1 <= len(warnings) <= 2, proc.stderr
    assert all(line.startswith("asynchub: warning:") for line in warnings)
    assert "503" in warnings[0]
    quiet = _run(env, "download", "TinyNet", "--force", "-q")
    assert quiet.returncode == 0 and "retry" not in quiet.stderr.lower()


def test_mirror_failover_is_one_warning_line(server: MirrorServer, env: dict[str, str]) -> None:
    first = server.url + "/gone" + TEMPLATE + "{path}"  # 404 for every file
    env = {**env, "ASYNCHUB_FILE_URLS": f"{first},{env['ASYNCHUB_FILE_URLS']}"}
    proc = _run(env, "download", "NanoText")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # not one line from the log and one from the CLI
    assert lines[0].startswith("asynchub: warning: retrying")
    assert "404" in lines[0] and "next mirror" in lines[0]


def _read_until(proc: subprocess.Popen[str], pattern: str, deadline: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line matching {pattern!r} in {lines}")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_demo_serve_keeps_the_mirror_running_until_stopped(
    tmp_path: Path, stop: signal.Signals
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHUB_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asynchub", "demo", "--serve", "--cache-dir", str(tmp_path / "c")],
        env=base,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _read_until(proc, r"^export ASYNCHUB_FILE_URLS=", time.monotonic() + 60)
        exports = dict(
            re.match(r"^export (\w+)='(.*)'$", line).groups()  # type: ignore[union-attr]
            for line in lines
            if line.startswith("export ")
        )
        assert set(exports) == {"ASYNCHUB_MANIFEST_URL", "ASYNCHUB_FILE_URLS"}
        client = {**base, **exports, "ASYNCHUB_CACHE_DIR": str(tmp_path / "client")}
        listed = _run(client, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert "TinyNet" in {e["model"] for e in json.loads(listed.stdout)}
        fetched = _run(client, "download", "TinyNet")
        assert fetched.returncode == 0 and Path(fetched.stdout.strip()).is_file()
        assert proc.poll() is None  # still serving
        proc.send_signal(stop)
        assert proc.wait(timeout=15) in (0, 130)
        after = _run(client, "--offline", "list")
        assert after.returncode == 0  # the manifest was cached while it ran
        gone = _run(client, "download", "NanoText")
        assert gone.returncode == 5, gone.stderr  # the mirror is down now
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
