"""Cache layout, locks, atomic commit and verification of cached files.

Layout (the same as onnx.hub, so caches are shared both ways)::

    <root>/<dirs of model_path>/<sha256>_<basename of model_path>

Beside a final file ``F`` the engine may keep, while it works:

* ``F.<host>-<pid>-<hex>.partial`` bytes being downloaded (process-unique, tells its writer)
* ``F.<token>.partial.json`` its resume state
* ``F.lock``                 the inter-process lock (:mod:`.locks`), deleted on release

Only :func:`commit` ever creates ``F``, by ``os.replace`` of a file whose size and SHA-256 were
checked, after ``fsync``. Directories inside the cache that are symbolic links are refused, so
nothing is ever written through a planted link.

Functions here block (file system calls); async callers run them in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from .._exceptions import CacheError, InsufficientSpaceError

__all__ = [
    "HASH_BLOCK",
    "DIR_SETTLE",
    "cache_path",
    "commit",
    "ensure_dir",
    "file_matches",
    "fsync_dir",
    "lock_path",
    "new_partial_path",
    "partials_for",
    "remove_quietly",
    "sha256_file",
    "translate_oserror",
    "MAX_BASENAME_BYTES",
    "MAX_SEGMENT_BYTES",
]

#: Longest path segment accepted, in UTF-8 bytes (``NAME_MAX`` of common file systems).
MAX_SEGMENT_BYTES = 255
#: Longest basename of a cached file, in UTF-8 bytes: ``MAX_SEGMENT_BYTES`` minus the 65-byte
#: ``<sha256>_`` prefix minus 50 bytes for the suffixes of the temporaries kept beside it
#: (``.<pid>-<token>.partial.json.<token>.tmp`` takes up to ~45).
MAX_BASENAME_BYTES = MAX_SEGMENT_BYTES - 65 - 50

log = logging.getLogger("asynchub")

#: Read size when hashing files already on disk.
HASH_BLOCK = 1024 * 1024
#: Seconds :func:`ensure_dir` waits for a directory that another host has just created to
#: become visible here (see :func:`_dir_status`).
DIR_SETTLE = 5.0
PARTIAL_SUFFIX = ".partial"
STATE_SUFFIX = ".partial.json"
LOCK_SUFFIX = ".lock"


def translate_oserror(exc: OSError, what: str) -> CacheError:
    """An ``OSError`` as the matching asynchub error (ENOSPC → InsufficientSpaceError)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientSpaceError(
            exc.errno, f"no space left while {what}: free disk space or set another cache dir"
        )
    return CacheError(exc.errno or errno.EIO, f"{what}: {exc.strerror or exc}")


def cache_path(root: Path, rel_path: str, sha256: str) -> Path:
    """``<root>/<dirs of rel_path>/<sha256>_<basename>``; ``rel_path`` must be a validated
    relative POSIX path (the manifest parser guarantees it; this checks again)."""
    pure = PurePosixPath(rel_path)
    if pure.is_absolute() or any(part in {"", ".", ".."} for part in rel_path.split("/")):
        raise CacheError(errno.EINVAL, f"path {rel_path!r} would escape the cache")
    return root.joinpath(*pure.parent.parts, f"{sha256}_{pure.name}")


def ensure_dir(root: Path, directory: Path) -> None:
    """Create ``directory`` (inside ``root``), refusing any component that is a symlink."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        rel = directory.relative_to(root)
    except ValueError:
        raise CacheError(errno.EINVAL, f"{directory} is outside the cache {root}") from None
    except OSError as exc:
        raise translate_oserror(exc, f"creating the cache directory {root}") from exc
    current = root
    for part in rel.parts:
        current = current / part
        st = _dir_status(current)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise CacheError(
                errno.ELOOP,
                f"{current} is a symbolic link or not a directory; refusing to write through it"
                " (remove it and try again)",
            )


def _dir_status(path: Path) -> os.stat_result:
    """``lstat`` of ``path``, created first if it is missing (or found, if another process
    created it meanwhile).

    On a shared file system the answers can disagree for a moment. On GlusterFS (FUSE), with
    two mounts creating the same new directories at once (``tests/fleet/test_dirs_gluster.py``):
    the ``mkdir`` of a directory the other host had just created failed with ``EEXIST`` while
    the ``lstat`` after it still answered ``ENOENT`` (the client's cached lookup), and a
    ``mkdir`` inside it could fail with ``ESTALE`` (a handle the client had not refreshed).
    Those answers are asked again after a short wait (5 ms, doubling up to 0.1 s), for at most
    :data:`DIR_SETTLE` seconds. Blocking, like every cache operation (a worker thread)."""
    deadline = time.monotonic() + DIR_SETTLE
    wait = 0.005
    while True:
        created = False
        try:
            return os.lstat(path)
        except FileNotFoundError:
            try:
                path.mkdir()
                created = True  # its status next, without a wait
            except (FileExistsError, FileNotFoundError):
                pass  # created elsewhere and not visible here yet, or a parent not yet
            except OSError as exc:
                if exc.errno != errno.ESTALE:
                    raise translate_oserror(exc, f"creating {path}") from exc
        except OSError as exc:
            if exc.errno != errno.ESTALE:
                raise translate_oserror(exc, f"looking up {path}") from exc
        if time.monotonic() >= deadline:
            raise CacheError(
                errno.ENOENT,
                f"the cache's file system gave conflicting answers about {path} (there, not"
                f" there, or a stale handle) for {DIR_SETTLE:g} s; try again, and if it"
                " persists check the file system (a network file system's client cache)",
            )
        if not created:
            time.sleep(wait)
            wait = min(2 * wait, 0.1)


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in bounded blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_matches(path: Path, sha256: str, size: int | None) -> bool:
    """Whether ``path`` is a regular file (not a link) with this size and SHA-256."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if size is not None and st.st_size != size:
        return False
    try:
        return sha256_file(path) == sha256.lower()
    except OSError:
        return False


def fsync_dir(directory: Path) -> None:
    """Make a rename or creation inside ``directory`` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(verified: Path, final: Path, *, fsync: Callable[[int], None] = os.fsync) -> None:
    """Atomically publish a verified file: fsync it, ``os.replace`` it, fsync the directory.

    ``fsync`` flushes the file's descriptor (``os.fsync``; injectable so tests can make the
    disk fail). If it fails, nothing is renamed: the error is a :class:`CacheError`."""
    try:
        fd = os.open(verified, os.O_RDONLY)
        try:
            fsync(fd)
        finally:
            os.close(fd)
        os.replace(verified, final)
    except OSError as exc:
        raise translate_oserror(exc, f"publishing {final}") from exc
    fsync_dir(final.parent)


def new_partial_path(final: Path, host: str | None = None) -> Path:
    """A process-unique partial file name beside ``final``:
    ``F.<host>-<pid>-<hex>.partial``, which tells who writes it (see :mod:`.locks`)."""
    from .._config import default_host_id
    from .locks import owner_tag

    return final.with_name(f"{final.name}.{owner_tag(host or default_host_id())}{PARTIAL_SUFFIX}")


def partials_for(final: Path) -> Iterator[Path]:
    """Partial files left beside ``final`` by earlier runs (any process)."""
    prefix = final.name + "."
    with contextlib.suppress(OSError):
        for entry in os.scandir(final.parent):
            if (
                entry.name.startswith(prefix)
                and entry.name.endswith(PARTIAL_SUFFIX)
                and entry.is_file(follow_symlinks=False)
            ):
                yield Path(entry.path)


def state_path(partial: Path) -> Path:
    """The resume-state sidecar of a partial file."""
    return partial.with_name(partial.name + ".json")


def lock_path(final: Path) -> Path:
    return final.with_name(final.name + LOCK_SUFFIX)


def remove_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(path)
