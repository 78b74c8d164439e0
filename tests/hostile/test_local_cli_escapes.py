"""Terminal control sequences from a manifest (tags, io_ports names) or from the command line
are printed escaped by the CLI, never raw: a hostile repo cannot retitle the terminal, hide
lines or fake output. ``--json`` output stays exact JSON (``json`` escapes them itself).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.helpers import ROOT, entry, write_manifest
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(90)

TEMPLATE = "/{owner}/{repo}/{ref}/"
#: Set the window title, clear the screen, a C1 CSI, a bidi override, a bell, a backspace.
EVIL = ["\x1b]0;pwned\x07", "\x1b[2J\x1b[H", "\x9b31m", "\u202egnp.exe", "a\x08b", "\r\x1b[K"]
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\x08", "\r")


@pytest.fixture
def env(
    mirror_root: Path, zoo_manifest: list[dict[str, Any]], tmp_path: Path
) -> Iterator[dict[str, str]]:
    raw = copy.deepcopy(entry(zoo_manifest, "TinyNet", 13))
    raw["metadata"]["tags"] = [f"tag{i}{evil}" for i, evil in enumerate(EVIL)]
    raw["metadata"]["io_ports"] = {
        "inputs": [{"name": f"in{evil}", "type": f"t{evil}", "shape": [1, evil]} for evil in EVIL],
        "outputs": [{"name": "\x1b[8mhidden", "type": "tensor(float)", "shape": [1]}],
    }
    with MirrorServer(mirror_root).running() as server:
        write_manifest(server, [raw])
        base = server.url
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHUB_")}
        environ.update(
            PYTHONPATH=str(ROOT),
            ASYNCHUB_MANIFEST_URL=base + TEMPLATE + "ONNX_HUB_MANIFEST.json",
            ASYNCHUB_FILE_URLS=base + TEMPLATE + "{path}",
            ASYNCHUB_CACHE_DIR=str(tmp_path / "cache"),
            ASYNCHUB_DISABLE_PROGRESS_BARS="1",
        )
        yield environ


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asynchub", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_escaped(text: str) -> None:
    for char in RAW:
        assert char not in text, f"raw {char!r} printed: {text[:400]!r}"


@pytest.mark.parametrize(
    "command", [["list"], ["info", "TinyNet"], ["list", "--tag", "tag1\x1b[2J"]]
)
def test_cli_escapes_control_characters(env: dict[str, str], command: list[str]) -> None:
    proc = _run(env, *command)
    if "--tag" in command:  # no entry has that exact tag: "nothing listed" (exit 3), escaped
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert "tag1\\x1b[2J" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_escaped(proc.stdout)
    _assert_escaped(proc.stderr)
    if command[0] == "info":
        assert "in\\x1b]0;pwned\\x07" in proc.stdout, proc.stdout
        assert "\\x1b[8mhidden" in proc.stdout
    elif len(command) == 1:
        assert "tag0\\x1b]0;pwned\\x07" in proc.stdout, proc.stdout
        assert "\\u202egnp.exe" in proc.stdout


def test_cli_escapes_control_characters_in_errors(env: dict[str, str]) -> None:
    proc = _run(env, "info", "Tiny\x1b]0;pwned\x07Net")
    assert proc.returncode != 0
    _assert_escaped(proc.stdout + proc.stderr)
    assert "Tiny\\x1b]0;pwned\\x07Net" in proc.stderr, proc.stderr


def test_cli_json_output_stays_exact(env: dict[str, str]) -> None:
    proc = _run(env, "info", "TinyNet", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_escaped(proc.stdout)
    data = json.loads(proc.stdout)
    assert sorted(data["tags"]) == sorted(f"tag{i}{e}" for i, e in enumerate(EVIL))


def test_json_text_escaping_keeps_the_document_exact() -> None:
    """The MindSpore CLI prints JSON with ``ensure_ascii=False`` (readable Chinese cards):
    control characters left raw by ``json`` (C1, bidi) become JSON escapes, not Python ones."""
    from asynchub._cli.terminal import printable

    value = {"name": "".join(EVIL), "zh": "模型名称"}
    text = printable(json.dumps(value, ensure_ascii=False), json_text=True)
    _assert_escaped(text)
    assert "模型名称" in text
    assert json.loads(text) == value
