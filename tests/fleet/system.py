"""System services for the fleet tests: apt packages, glusterd, /etc/hosts, a GlusterFS volume.

Every helper undoes exactly what it did and nothing else: a package that was missing is
installed (and left installed: packages are the machine's, not the test's), glusterd is
stopped only if these helpers started it, the ``/etc/hosts`` line is removed only if it was
added here, and the volume, its brick directory and its mounts are this session's own.

Why GlusterFS: the kernel of the test machine has no NFS client or server, while FUSE works;
two FUSE mounts of one GlusterFS volume behave like two hosts sharing one filesystem (POSIX
and BSD locks taken through one mount block the other).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

HOSTS_FILE = Path("/etc/hosts")
#: Host name used for the brick when the machine's own name cannot be (``localhost``...).
FALLBACK_BRICK_HOST = "asynchub-fleet-brick"
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "127.0.0.1", "::1", ""}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` (bounded); raise ``AssertionError`` naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def run(cmd: Sequence[str], *, timeout: float = 120.0, check: bool = True) -> str:
    """Run a command, return its stdout; a failure raises with its output in the message."""
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, env=_c_locale()
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout.strip()} "
            f"{proc.stderr.strip()}"
        )
    return proc.stdout


def _c_locale() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


def why_not_root_with_fuse() -> str | None:
    """The reason the fleet tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (glusterd, mount, apt-get, nginx on its own ports)"
    if not Path("/dev/fuse").exists():
        return "needs FUSE (/dev/fuse is missing) for the GlusterFS client mounts"
    return None


_apt_updated = False


def ensure_packages(packages: Sequence[str], binaries: Sequence[str]) -> None:
    """Install ``packages`` with apt-get when one of ``binaries`` is not on PATH (or /usr/sbin)."""
    global _apt_updated
    if all(which(b) for b in binaries):
        return
    if not _apt_updated:
        run(["apt-get", "update", "-q"], timeout=300)
        _apt_updated = True
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], timeout=600)
    missing = [b for b in binaries if not which(b)]
    if missing:
        raise RuntimeError(f"installed {packages} but {missing} are still not found")


def which(binary: str) -> str | None:
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin:/usr/bin:/bin")


# --------------------------------------------------------------------------- /etc/hosts


def _resolves_to_loopback(name: str) -> bool:
    try:
        return socket.gethostbyname(name) == "127.0.0.1"
    except OSError:
        return False


@contextlib.contextmanager
def loopback_host_name() -> Iterator[str]:
    """A host name (not ``localhost``, not an IP) that resolves to 127.0.0.1.

    The machine's own name, mapped in ``/etc/hosts`` if it is not already; the line is added
    only when absent and removed on exit only if it was added here."""
    name = socket.gethostname().strip()
    if name.lower() in _LOOPBACK_NAMES:
        name = FALLBACK_BRICK_HOST
    if _resolves_to_loopback(name):
        yield name
        return
    line = f"127.0.0.1 {name}  # asynchub fleet tests\n"
    original = HOSTS_FILE.read_text()
    HOSTS_FILE.write_text(original + ("" if original.endswith("\n") else "\n") + line)
    try:
        wait_until(lambda: _resolves_to_loopback(name), f"{name} to resolve to 127.0.0.1", 5)
        yield name
    finally:
        current = HOSTS_FILE.read_text()
        if line in current:
            HOSTS_FILE.write_text(current.replace(line, "", 1))


# --------------------------------------------------------------------------- glusterd


def _glusterd_pids() -> list[int]:
    pids = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "glusterd":
            pids.append(proc.pid)
    return pids


def _glusterd_answers() -> bool:
    return (
        subprocess.run(
            ["gluster", "--mode=script", "volume", "list"],
            capture_output=True,
            timeout=30,
            env=_c_locale(),
        ).returncode
        == 0
    )


@contextlib.contextmanager
def glusterd_running() -> Iterator[None]:
    """glusterd answers inside the block; stopped at the end only if started here."""
    if _glusterd_pids():
        wait_until(_glusterd_answers, "the running glusterd to answer", 60)
        yield
        return
    run(["glusterd"], timeout=60)  # daemonizes
    wait_until(lambda: bool(_glusterd_pids()), "glusterd to start", 30)
    started = _glusterd_pids()
    try:
        wait_until(_glusterd_answers, "glusterd to answer", 60)
        yield
    finally:
        for pid in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).terminate()
        for pid in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).wait(30)


# --------------------------------------------------------------------------- a volume


@dataclass(frozen=True)
class GlusterVolume:
    """A one-brick GlusterFS volume mounted twice: ``mounts[0]`` and ``mounts[1]`` act as two
    hosts sharing one filesystem."""

    name: str
    host: str
    brick: Path
    mounts: tuple[Path, Path]


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


@contextlib.contextmanager
def gluster_volume(workdir: Path, host: str) -> Iterator[GlusterVolume]:
    """Create, start and mount (twice) a volume of our own; undo all of it on exit."""
    name = f"asynchub_fleet_{secrets.token_hex(3)}"
    brick = workdir / "brick"
    mounts = (workdir / "mount-a", workdir / "mount-b")
    brick.mkdir(parents=True)
    for mount in mounts:
        mount.mkdir()
    gluster = ["gluster", "--mode=script", "volume"]
    run([*gluster, "create", name, f"{host}:{brick}", "force"], timeout=120)
    try:
        run([*gluster, "start", name], timeout=120)
        try:
            for mount in mounts:
                run(["mount", "-t", "glusterfs", f"{host}:/{name}", str(mount)], timeout=120)
                wait_until(lambda m=mount: _mounted(m), f"{mount} to be mounted", 30)  # type: ignore[misc]
            yield GlusterVolume(name, host, brick, mounts)
        finally:
            for mount in mounts:
                if (
                    _mounted(mount)
                    and subprocess.run(["umount", str(mount)], capture_output=True).returncode
                ):
                    subprocess.run(["umount", "-l", str(mount)], capture_output=True)
            run([*gluster, "stop", name, "force"], timeout=120, check=False)
    finally:
        run([*gluster, "delete", name], timeout=120, check=False)
        shutil.rmtree(brick, ignore_errors=True)
