"""Shared helpers of the hostile-input and fault tests.

Choices:

* ``DilatedClock`` is the fake clock handed to ``AsyncHub(sleep=..., clock=...)``: time runs
  ``1 / scale`` times faster than the wall clock and every requested sleep is recorded. A
  dilated clock (rather than a frozen one) keeps the engine's stall watchdog meaningful: a
  healthy local request finishes in a few fake milliseconds, a stalled one reaches a 60-second
  stall timeout in well under a second of real time.
* ``leftovers`` names every temporary file the engine or the extractor may leave (partials,
  resume states, state temporaries, staging and set-aside directories); inter-process lock
  files are not temporaries (``filelock`` keeps them on purpose) and are not listed.
* ``watch_final`` hashes whatever appears under a final cache name, from another thread, for
  as long as a run lasts; a wrong digest there would mean unverified bytes were published.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import filelock

from asynchub._cache.layout import cache_path

TEMP_MARKERS = (".partial", ".tmp", ".staging-", ".old-")


def entry(manifest: list[dict[str, Any]], name: str, opset: int | None = None) -> dict[str, Any]:
    """The raw manifest entry for ``name`` (largest opset unless given)."""
    found = [e for e in manifest if e["model"] == name]
    if opset is not None:
        found = [e for e in found if e["opset_version"] == opset]
    return max(found, key=lambda e: e["opset_version"])


def final_model(cache_dir: Path, raw: dict[str, Any]) -> Path:
    return cache_path(cache_dir, raw["model_path"], raw["metadata"]["model_sha"])


def final_archive(cache_dir: Path, raw: dict[str, Any]) -> Path:
    meta = raw["metadata"]
    return cache_path(cache_dir, meta["model_with_data_path"], meta["model_with_data_sha"])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha_file(path: Path) -> str:
    return sha256(path.read_bytes())


def leftovers(root: Path) -> list[str]:
    """Temporary files and directories anywhere under ``root`` (relative paths)."""
    found: list[str] = []
    if not root.exists():
        return found
    for current, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            if any(marker in name for marker in TEMP_MARKERS):
                found.append(os.path.relpath(os.path.join(current, name), root))
    return sorted(found)


def finished_chunks(root: Path) -> int:
    """The most finished chunks any resume state under ``root`` records."""
    best = 0
    for state in root.rglob("*.partial.json"):
        try:
            best = max(best, len(json.loads(state.read_text())["finished"]))
        except (OSError, ValueError, KeyError):
            continue
    return best


def partials(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.partial") if p.is_file())


def lock_is_free(path: Path) -> bool:
    """Whether the inter-process lock file ``path`` can be taken right now."""
    lock = filelock.FileLock(str(path), thread_local=False, is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return False
    lock.release()
    return True


def open_files_under(root: Path) -> list[str]:
    """Paths under ``root`` this process holds open (Linux ``/proc/self/fd``)."""
    prefix = str(root.resolve())
    held: list[str] = []
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith(prefix):
                    held.append(target)
    return held


def served_ranges(requests: list[Any]) -> list[tuple[int, int | None] | None]:
    return [r.range for r in requests]


def write_manifest(mirror: Any, entries: list[dict[str, Any]]) -> None:
    mirror.set_file("onnx/models/main/ONNX_HUB_MANIFEST.json", json.dumps(entries).encode())


# --------------------------------------------------------------------------- fake clock


@dataclass
class DilatedClock:
    """A clock running ``1 / scale`` times faster than the wall clock; sleeps are recorded."""

    scale: float = 0.005
    sleeps: list[float] = field(default_factory=list)
    _start: float = field(default_factory=time.monotonic)

    def clock(self) -> float:
        return (time.monotonic() - self._start) / self.scale

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await anyio.sleep(max(0.0, seconds) * self.scale)

    def waits(self, minimum: float = 0.0) -> list[float]:
        """Recorded sleeps of at least ``minimum`` seconds (the watchdog's polls are short)."""
        return [s for s in self.sleeps if s >= minimum]


# --------------------------------------------------------------------------- a hash watcher


class FinalWatcher:
    """Hashes every version of the watched final files that appears, from a thread."""

    def __init__(self, expected: dict[Path, str]) -> None:
        self.expected = expected
        self.seen: list[tuple[Path, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="final-watcher", daemon=True)

    def _run(self) -> None:
        last: dict[Path, tuple[int, int]] = {}
        while not self._stop.is_set():
            for path in self.expected:
                try:
                    st = os.stat(path)
                    key = (st.st_ino, st.st_mtime_ns)
                    if last.get(path) == key:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                last[path] = key
                self.seen.append((path, sha256(data)))
            self._stop.wait(0.002)

    def wrong(self) -> list[tuple[Path, str]]:
        return [(p, h) for p, h in self.seen if h != self.expected[p]]

    def __enter__(self) -> FinalWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@contextlib.contextmanager
def watching(expected: dict[Path, str]) -> Iterator[FinalWatcher]:
    with FinalWatcher(expected) as watcher:
        yield watcher
    assert not watcher.wrong(), f"unverified bytes under a final name: {watcher.wrong()}"


# --------------------------------------------------------------------------- archives


def many_member_archive(model: bytes, members: int, member_bytes: int = 512) -> bytes:
    """A valid test-data archive (``net/model.onnx`` + ``test_data_set_0``) padded with
    ``members`` extra files, so that extracting it takes measurable time."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:

        def add(name: str, data: bytes | None) -> None:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                return
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("net", None)
        add("net/model.onnx", model)
        add("net/test_data_set_0", None)
        for index in range(members):
            add(f"net/test_data_set_0/extra_{index}.pb", bytes([index % 251]) * member_bytes)
    return buffer.getvalue()


def with_archive(raw: dict[str, Any], rel: str, blob: bytes) -> dict[str, Any]:
    """A copy of a manifest entry whose test-data archive is ``blob`` served at ``rel``."""
    changed = json.loads(json.dumps(raw))
    changed["metadata"]["model_with_data_path"] = rel
    changed["metadata"]["model_with_data_sha"] = sha256(blob)
    changed["metadata"]["model_with_data_bytes"] = len(blob)
    return changed


# --------------------------------------------------------------------------- child processes

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ChildRun:
    returncode: int
    result: dict[str, Any] | None
    stdout: str
    stderr: str


def start_child(mode: str, args: dict[str, Any], **popen: Any) -> Any:
    """Start ``python -m tests.hostile.child mode args`` from the project root."""
    import subprocess
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.hostile.child", mode, json.dumps(args)],
        cwd=ROOT,
        env=env,
        text=True,
        **popen,
    )


def finish_child(proc: Any, timeout: float = 60) -> ChildRun:
    """Wait (bounded) for a child; its stdin is closed only after it exited."""
    import subprocess

    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"the child process hung for {timeout} s") from None
    stdout = proc.stdout.read() if proc.stdout else ""
    stderr = proc.stderr.read() if proc.stderr else ""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    return ChildRun(proc.returncode, result, stdout, stderr)


def run_child(mode: str, args: dict[str, Any], timeout: float = 60, **popen: Any) -> ChildRun:
    return finish_child(start_child(mode, args, **popen), timeout)


async def wait_until(condition: Any, what: str, polls: int = 5000) -> None:
    """Poll ``condition()`` on the event loop every 2 ms, at most ``polls`` times."""
    for _ in range(polls):
        if condition():
            return
        await anyio.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")
