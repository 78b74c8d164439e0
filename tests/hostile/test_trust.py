"""Row 3: an untrusted repo with no terminal and no allowlist entry → a clear error at once;
never a prompt, never a hang, no model file requested.

The client runs in a child process whose stdin is a pipe the parent keeps open and never
writes to (a prompt would block on it forever), ``/dev/null``, or closed; the parent's wait is
bounded, so a hang fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_PREFIX
from tests.hostile.helpers import ChildRun, finish_child, start_child
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(90)

REPO = "someone/zoo"


@pytest.fixture
def served(mirror_root: Path) -> Iterator[MirrorServer]:
    (mirror_root / "someone" / "zoo").mkdir(parents=True)
    (mirror_root / "someone" / "zoo" / "main").symlink_to(mirror_root / REPO_PREFIX)
    with MirrorServer(mirror_root).running() as server:
        yield server


def _close_stdin() -> None:
    os.close(0)


STDINS: dict[str, dict[str, Any]] = {
    "open-pipe-never-written": {"stdin": subprocess.PIPE},
    "dev-null": {"stdin": subprocess.DEVNULL},
    "closed": {"stdin": subprocess.DEVNULL, "preexec_fn": _close_stdin},
}


def _run(server: MirrorServer, tmp_path: Path, stdin: str, **args: Any) -> ChildRun:
    payload = {"base_url": server.url, "cache_dir": str(tmp_path / "cache"), "repo": REPO}
    payload.update(args)
    proc = start_child("trust", payload, **STDINS[stdin])
    return finish_child(proc, timeout=45)  # stdin stays open until the child has exited


def _assert_refused(run: ChildRun, server: MirrorServer) -> None:
    assert run.returncode == 0, run.stderr
    assert run.result is not None, run.stdout + run.stderr
    assert run.result["error"] == "UntrustedRepoError", run.result
    message = run.result["message"]
    assert "someone/zoo:main" in message and "not trusted" in message
    assert "trust_repo=True" in message and "ASYNCHUB_TRUSTED_REPOS" in message
    assert "[y/n]" not in run.stderr and "[y/n]" not in run.stdout, "a prompt was shown"
    assert not [r.path for r in server.requests if not r.path.endswith(".json")]


@pytest.mark.parametrize("stdin", sorted(STDINS))
@pytest.mark.parametrize("api", ["sync", "async"])
def test_untrusted_repo_without_terminal_fails_fast(
    api: str, stdin: str, served: MirrorServer, tmp_path: Path
) -> None:
    run = _run(served, tmp_path, stdin, api=api)
    _assert_refused(run, served)


@pytest.mark.parametrize(
    "trusted",
    [["someone/other"], ["someone/zoo:dev"], ["someone/zo"], ["someone"], ["zoo"]],
    ids=str,
)
def test_allowlist_entries_for_other_repos_or_refs_do_not_trust(
    trusted: list[str], served: MirrorServer, tmp_path: Path
) -> None:
    run = _run(served, tmp_path, "open-pipe-never-written", config={"trusted_repos": trusted})
    _assert_refused(run, served)


@pytest.mark.parametrize("trusted", [["someone/zoo"], ["SomeOne/Zoo:main"]], ids=str)
def test_allowlisted_repo_loads_without_asking(
    trusted: list[str], served: MirrorServer, tmp_path: Path
) -> None:
    run = _run(served, tmp_path, "open-pipe-never-written", config={"trusted_repos": trusted})
    assert run.result == {"error": None}, run.stdout + run.stderr
    assert "[y/n]" not in run.stderr
    assert any(r.path.endswith(".onnx") for r in served.requests)
