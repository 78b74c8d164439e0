"""Safe extraction of the hub's test-data archives (``.tar.gz`` or plain ``.tar``).

onnx.hub extracted these archives with ``tarfile.extractall``, a path-traversal hole before
onnx 1.16.2 (CVE-2024-5187). The ``filter="data"`` of :mod:`tarfile` is not used either: on
some Python versions it can be walked around with chains of links (the CVE-2025-4517 class).
This module does not ask :mod:`tarfile` to write anything; it only reads members and writes
what it accepts itself.

Choices:

* **Only regular files and directories** are written. Symbolic links, hard links (also with an
  empty name or target), devices, FIFOs, sparse files and every other type make the whole
  archive an :class:`~asynchub._exceptions.ArchiveError`: the hub's archives never need them,
  so one is a sign of a hostile or broken file, not something to skip silently.
* **Names** are checked as raw strings before any use: absolute names, ``..`` segments,
  backslashes, NUL bytes, drive letters (``C:``) and the reserved completion-marker name are
  refused; ``.`` and empty segments are dropped. A directory member whose name is empty after
  that (``./``, written by ``tar -C dir .``) stands for the extraction root and is skipped;
  any other member with an empty name is refused. A second member with the same normalised
  name is refused (no member can overwrite another).
* **Files** are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode ``0o644`` (the
  archive's modes, owners and times are ignored: no set-uid or executable bits from a
  download), filled from the archive in 1 MiB blocks and ``fsync``-ed; directories get mode
  ``0o755``. Before each file is written its parent directory is resolved and must lie inside
  the staging directory (a second guard behind the name checks).
* **Limits** (:class:`ExtractLimits`): member count, bytes per member, bytes in all, and the
  ratio of decompressed to compressed bytes. The ratio is checked while bytes flow, on the
  whole decompressed stream (tar headers included, so header bombs count too), once more than
  1 MiB has been decompressed (tiny archives may legitimately compress headers very well).
* **Atomic publication**: members go into a fresh staging directory beside the target
  (``.<target>.staging-<random>``, mode ``0o700`` while filling); a marker file
  (``.asynchub-complete``) is written last; then, under an inter-process lock
  (``.<target>.lock`` beside it), the staging directory is renamed to the target. A target
  that already holds the marker is used as is; one without it (an interrupted run, a directory
  onnx.hub extracted) is renamed aside, replaced, then removed. When two processes extract the
  same archive at once, the second to publish finds the first one's complete target, removes
  its own staging directory and uses the target. On any error the staging directory is
  removed; nothing outside it is ever written.
* **Interrupted extractions** (SIGKILL, power loss) leave their staging directory behind. A
  staging directory is ``flock``-ed by its extractor for as long as it works (the kernel drops
  the lock when the process dies), and it gets its ``.staging-`` name only once locked; so
  every call first removes the staging directories whose lock is free (and the
  ``.<target>.old-*`` directories a killed publisher set aside). A live extraction's directory
  is never touched.
* **Header sizes are bounded before** :mod:`tarfile` **reads them** (see
  :mod:`.tarbounds`): a GNU long-name/long-link or PAX header of at most 64 KiB, at most 8 in
  front of one member, 16 MiB in all; sparse members are refused at their header. Member
  names are then at most 4096 characters with segments of at most 255 UTF-8 bytes.
* Messages quote member names cut to 100 characters, whatever the archive holds.
* The stream is read to its very end after the last member, so the gzip trailer (CRC-32 and
  length) is always checked.
* Read errors (a truncated or corrupt gzip or tar) become ``ArchiveError``; write errors
  become :class:`~asynchub._exceptions.CacheError` (``ENOSPC`` →
  :class:`~asynchub._exceptions.InsufficientSpaceError`).

Everything here blocks; async callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import os
import re
import secrets
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .._config import default_host_id
from .._exceptions import ArchiveError, CacheError, ConfigError
from .layout import MAX_SEGMENT_BYTES, fsync_dir, lock_path, translate_oserror
from .locks import CacheLock
from .tarbounds import BoundedTarInfo, LimitExceeded, header_budget

if sys.platform != "win32":
    import fcntl

__all__ = [
    "COMPLETE_MARKER",
    "ExtractLimits",
    "extract_archive",
    "extract_test_data",
    "find_model_dir",
]

log = logging.getLogger("asynchub")

#: Written last into the staging directory; a target holding it is complete.
COMPLETE_MARKER = ".asynchub-complete"
#: Copy block size for member data.
_BLOCK = 1024 * 1024
#: Decompressed bytes allowed before the compression ratio is enforced.
_RATIO_GRACE = 1024 * 1024
#: Tar headers and padding allowed per member on top of the member bytes.
_HEADER_ALLOWANCE = 8 * 1024
#: How long a publisher waits for another one holding the lock (renames only, so short).
_LOCK_TIMEOUT = 120.0
_REGULAR_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
#: Longest member name accepted, in characters (``PATH_MAX``).
_MAX_NAME_CHARS = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what one archive may unpack to.

    The defaults fit the hub's largest test-data archives with room to spare while still
    refusing archive bombs: 10 000 members, 4 GiB per member, 8 GiB in all, and at most 200
    decompressed bytes per compressed byte (trained weights and test tensors compress less
    than 10:1; runs of zeros compress about 1000:1).
    """

    max_members: int = 10_000
    max_total_bytes: int = 8 * 1024**3
    max_member_bytes: int = 4 * 1024**3
    max_ratio: float = 200.0

    def __post_init__(self) -> None:
        for name in ("max_members", "max_total_bytes", "max_member_bytes", "max_ratio"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"ExtractLimits.{name} must be positive, got {value!r}")


def _quoted(name: str) -> str:
    return repr(name[:100] + "...") if len(name) > 100 else repr(name)


def _unsafe(archive: Path, member: str | None, reason: str) -> ArchiveError:
    where = f"member {_quoted(member)} of {archive}" if member is not None else f"{archive}"
    return ArchiveError(
        f"{where}: {reason}; the archive is unsafe or broken, nothing was extracted"
        " (delete it and download it again)"
    )


class _CountingReader:
    """The raw archive file, counting the compressed bytes read from it."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.count += len(data)
        return data

    def seek(self, offset: int, whence: int = 0, /) -> int:
        raise OSError(errno.ESPIPE, "the archive is read as a stream")


class _GuardedStream:
    """The decompressed tar stream; enforces the ratio and total-size limits as bytes flow."""

    def __init__(
        self, inner: BinaryIO | gzip.GzipFile, raw: _CountingReader, limits: ExtractLimits
    ) -> None:
        self._inner = inner
        self._raw = raw
        self._max_ratio = limits.max_ratio
        self._cap = limits.max_total_bytes + limits.max_members * _HEADER_ALLOWANCE + _RATIO_GRACE
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > _BLOCK:
            size = _BLOCK
        data = self._inner.read(size)
        self.count += len(data)
        if self.count > _RATIO_GRACE and self.count > self._max_ratio * max(self._raw.count, 1):
            raise LimitExceeded(
                f"decompresses to more than {self._max_ratio:g} times its size (a compression bomb)"
            )
        if self.count > self._cap:
            raise LimitExceeded("decompresses to more bytes than the size limit allows")
        return data


def _normalise(archive: Path, member: tarfile.TarInfo) -> tuple[str, ...]:
    """The member name as safe path segments (may be empty for the root directory)."""
    name = member.name
    if len(name) > _MAX_NAME_CHARS:
        raise _unsafe(archive, name, f"name is longer than {_MAX_NAME_CHARS} characters")
    if "\x00" in name or "\\" in name:
        raise _unsafe(archive, name, "name contains a NUL byte or a backslash")
    if name.startswith("/") or _DRIVE.match(name):
        raise _unsafe(archive, name, "name is absolute")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _unsafe(archive, name, "name climbs out of the archive with '..'")
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES for part in parts):
        raise _unsafe(archive, name, f"name has a part longer than {MAX_SEGMENT_BYTES} bytes")
    if parts == (COMPLETE_MARKER,):
        raise _unsafe(archive, name, "name is reserved for the extraction marker")
    return parts


def _describe_type(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "is a symbolic link"
    if member.islnk():
        return "is a hard link"
    if member.ischr() or member.isblk():
        return "is a device file"
    if member.isfifo():
        return "is a FIFO"
    if member.issparse():
        return "is a sparse file"
    return f"has an unsupported type {member.type!r}"


def _check_inside(archive: Path, staging: Path, directory: Path, name: str) -> None:
    staging_real = os.path.realpath(staging)
    real = os.path.realpath(directory)
    if os.path.commonpath([staging_real, real]) != staging_real:
        raise _unsafe(archive, name, "resolves outside the extraction directory")


def _make_dirs(
    archive: Path,
    staging: Path,
    parts: tuple[str, ...],
    name: str,
    created: set[tuple[str, ...]],
) -> None:
    """Create ``staging/parts`` one level at a time, refusing anything but real directories."""
    for depth in range(1, len(parts) + 1):
        prefix = parts[:depth]
        if prefix in created:
            continue
        path = staging.joinpath(*prefix)
        _check_inside(archive, staging, path.parent, name)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise translate_oserror(exc, f"creating {path}") from exc
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            raise _unsafe(archive, name, f"needs {'/'.join(prefix)!r} to be a directory")
        created.add(prefix)


def _write_file(
    archive: Path,
    source: BinaryIO,
    destination: Path,
    name: str,
    expected: int,
) -> int:
    """Copy one member; returns the bytes written (must equal the header's size)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(destination, flags, 0o644)
    except FileExistsError:
        raise _unsafe(archive, name, "would overwrite another member") from None
    except OSError as exc:
        raise translate_oserror(exc, f"creating {destination}") from exc
    written = 0
    try:
        while True:
            try:
                block = source.read(_BLOCK)
            except LimitExceeded:
                raise
            except _READ_ERRORS as exc:
                raise _unsafe(archive, name, f"cannot be read ({exc})") from exc
            if not block:
                break
            written += len(block)
            if written > expected:
                raise _unsafe(archive, name, "holds more bytes than its header says")
            try:
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                raise translate_oserror(exc, f"writing {destination}") from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise translate_oserror(exc, f"writing {destination}") from exc
    finally:
        os.close(fd)
    if written != expected:
        raise _unsafe(archive, name, f"is truncated ({written} of {expected} bytes)")
    return written


def _open_stream(archive: Path, handle: BinaryIO, limits: ExtractLimits) -> _GuardedStream:
    raw = _CountingReader(handle)
    magic = handle.read(6)
    handle.seek(0)
    if magic[:2] == b"\x1f\x8b":
        inner: BinaryIO | gzip.GzipFile = gzip.GzipFile(fileobj=raw, mode="rb")
    elif magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00" or magic[:4] == b"\x28\xb5\x2f\xfd":
        raise _unsafe(archive, None, "uses a compression other than gzip")
    else:
        inner = raw  # type: ignore[assignment]
    return _GuardedStream(inner, raw, limits)


def _after(last: str | None, current: str | None) -> str:
    return f"after member {_quoted(last)}: " if current is None and last is not None else ""


def _extract_into(archive: Path, staging: Path, limits: ExtractLimits) -> None:
    seen: set[tuple[str, ...]] = set()
    created: set[tuple[str, ...]] = {()}
    members = 0
    total = 0
    current: str | None = None  # the member being processed, if any
    last: str | None = None  # the last member processed
    try:
        handle = open(archive, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise translate_oserror(exc, f"opening the archive {archive}") from exc
    try:
        stream = _open_stream(archive, handle, limits)
        with (
            header_budget(),
            tarfile.open(  # type: ignore[call-overload]
                fileobj=stream, mode="r|", tarinfo=BoundedTarInfo
            ) as tar,
        ):
            iterator = iter(tar)
            while True:
                last, current = current or last, None
                member: tarfile.TarInfo | None = next(iterator, None)
                if member is None:
                    break
                current = member.name
                members += 1
                if members > limits.max_members:
                    raise _unsafe(archive, current, f"exceeds {limits.max_members} members")
                parts = _normalise(archive, member)
                if member.isdir():
                    if parts in seen:
                        raise _unsafe(archive, current, "appears twice in the archive")
                    seen.add(parts)
                    _make_dirs(archive, staging, parts, current, created)
                    continue
                if member.type not in _REGULAR_TYPES:
                    raise _unsafe(archive, current, _describe_type(member))
                if not parts:
                    raise _unsafe(archive, current, "has an empty name")
                if parts in seen or parts in created:
                    raise _unsafe(archive, current, "appears twice in the archive")
                seen.add(parts)
                if member.size > limits.max_member_bytes:
                    raise _unsafe(
                        archive, current, f"is larger than {limits.max_member_bytes} bytes"
                    )
                if total + member.size > limits.max_total_bytes:
                    raise _unsafe(
                        archive, current, f"takes the archive over {limits.max_total_bytes} bytes"
                    )
                _make_dirs(archive, staging, parts[:-1], current, created)
                destination = staging.joinpath(*parts)
                _check_inside(archive, staging, destination.parent, current)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - regular members always have data
                    raise _unsafe(archive, current, "has no data")
                total += _write_file(archive, source, destination, current, member.size)
        # Read on to the end of the file: tar stops at its end marker, but gzip checks its
        # CRC and length only in the trailer, so corruption would otherwise go unnoticed.
        last, current = current or last, None
        while stream.read(_BLOCK):
            pass
    except LimitExceeded as exc:
        raise _unsafe(archive, current, _after(last, current) + str(exc)) from None
    except (ArchiveError, CacheError):
        raise
    except _READ_ERRORS as exc:
        reason = f"cannot be read ({type(exc).__name__}: {exc})"
        raise _unsafe(archive, current, _after(last, current) + reason) from exc
    finally:
        handle.close()
    if members == 0:
        raise _unsafe(archive, None, "holds no members")


def _is_complete(target: Path) -> bool:
    try:
        st = os.lstat(target)
        if not stat.S_ISDIR(st.st_mode):
            return False
        return stat.S_ISREG(os.lstat(target / COMPLETE_MARKER).st_mode)
    except OSError:
        return False


def _remove_tree(path: Path) -> None:
    """Remove a directory tree, or a file or link at ``path``; never follows links."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class _PublishTimeout(Exception):
    pass


@contextlib.contextmanager
def _publish_lock(target: Path) -> Iterator[None]:
    """The lock ``.<target>.lock`` (a :class:`.locks.CacheLock`, deleted on release) for the
    renames that publish an extracted directory; held for milliseconds, so polled briefly."""
    lock = CacheLock(
        lock_path(target.with_name(f".{target.name}")), host=default_host_id(), lease=60.0
    )
    deadline = time.monotonic() + _LOCK_TIMEOUT
    delay = 0.005
    while not lock.try_acquire():
        if time.monotonic() > deadline:
            raise _PublishTimeout
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    try:
        yield
    finally:
        lock.release()


def _lock_dir(path: Path) -> int | None:
    """Open ``path`` and take its ``flock`` without waiting; the fd, or None if it is held
    (or cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW)
    except OSError:
        return None
    if sys.platform != "win32":
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
    return fd


def _clean_abandoned(target: Path) -> None:
    """Remove the staging directories of dead extractors beside ``target`` (their ``flock`` is
    free) and the ``.old-*`` directories a killed publisher set aside. No lock file needed: a
    staging directory is locked before it gets its ``.staging-`` name, a dead one never comes
    back to life, and two cleaners removing the same tree is harmless."""
    if sys.platform == "win32":  # pragma: no cover - no flock: leave them
        return
    staging_prefix, old_prefix = f".{target.name}.staging-", f".{target.name}.old-"
    with contextlib.suppress(OSError), os.scandir(target.parent) as entries:
        found = [
            Path(entry.path)
            for entry in entries
            if entry.name.startswith((staging_prefix, old_prefix))
            and entry.is_dir(follow_symlinks=False)
        ]
    for path in found:
        if path.name.startswith(staging_prefix):
            fd = _lock_dir(path)
            if fd is None:
                continue  # its extractor is alive
            os.close(fd)
        log.info("removing %s, left by an interrupted extraction", path)
        _remove_tree(path)


def _new_staging(target: Path) -> tuple[Path, int]:
    """A fresh staging directory beside ``target``, ``flock``-ed by this process before it is
    renamed to its ``.staging-`` name. Returns (directory, the fd holding its lock)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
        fd = _lock_dir(fresh)
        if fd is None:
            _remove_tree(fresh)
            raise OSError(errno.EAGAIN, f"cannot lock the new directory {fresh}")
        staging = fresh.with_name(fresh.name.replace(".new-", ".staging-", 1))
        try:
            os.rename(fresh, staging)
        except OSError:
            os.close(fd)
            _remove_tree(fresh)
            raise
        return staging, fd
    except OSError as exc:
        raise translate_oserror(exc, f"creating a staging directory beside {target}") from exc


def _publish(staging: Path, target: Path) -> Path:
    """Rename a finished staging directory to ``target`` (see the module docstring)."""
    aside: Path | None = None
    try:
        with _publish_lock(target):
            if _is_complete(target):
                log.debug("%s was completed by another extraction; using it", target)
                return target
            if os.path.lexists(target):
                aside = target.with_name(f".{target.name}.old-{secrets.token_hex(6)}")
                os.rename(target, aside)
                log.info("replacing the incomplete directory %s", target)
            os.rename(staging, target)
            fsync_dir(target.parent)
            return target
    except _PublishTimeout as exc:
        raise CacheError(
            errno.ETIMEDOUT,
            f"another process holds the lock for {target} for over {_LOCK_TIMEOUT:g} s;"
            " stop it or remove the directory and try again",
        ) from exc
    except OSError as exc:
        if isinstance(exc, CacheError):
            raise
        raise translate_oserror(exc, f"publishing {target}") from exc
    finally:
        _remove_tree(staging)
        if aside is not None:
            _remove_tree(aside)


def extract_archive(
    archive: Path, target: Path, *, limits: ExtractLimits = ExtractLimits()
) -> Path:
    """Extract ``archive`` (tar or tar.gz) to the directory ``target`` and return ``target``.

    Returns at once if ``target`` is already a complete extraction. Raises
    :class:`~asynchub._exceptions.ArchiveError` for an unsafe or broken archive (the target is
    then left as it was) and :class:`~asynchub._exceptions.CacheError` when the disk fails us.
    Blocking: call it from a worker thread in async code.
    """
    archive = Path(archive)
    target = Path(target)
    _clean_abandoned(target)
    if _is_complete(target):
        return target
    staging, held = _new_staging(target)
    try:
        return _extract_and_publish(archive, staging, target, limits)
    finally:
        os.close(held)  # drops the staging directory's lock


def _extract_and_publish(archive: Path, staging: Path, target: Path, limits: ExtractLimits) -> Path:
    try:
        _extract_into(archive, staging, limits)
        marker = staging / COMPLETE_MARKER
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, f"extracted from {archive.name}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(staging, 0o755)
        fsync_dir(staging)
    except OSError as exc:
        _remove_tree(staging)
        if isinstance(exc, CacheError):
            raise
        raise translate_oserror(exc, f"extracting {archive}") from exc
    except BaseException:
        _remove_tree(staging)
        raise
    return _publish(staging, target)


def find_model_dir(extracted: Path) -> Path:
    """The directory of an extraction that holds the model and its test data.

    The shallowest directory (ties broken by sorted path) holding a ``*.onnx`` file and at
    least one ``test_data_set_*`` directory; failing that, the shallowest holding a ``*.onnx``
    file. Links are never followed. Raises ArchiveError when there is no model at all.
    """
    extracted = Path(extracted)
    with_data: list[tuple[int, tuple[str, ...]]] = []
    model_only: list[tuple[int, tuple[str, ...]]] = []
    for root, dirs, files in os.walk(extracted, followlinks=False):
        rel = Path(root).relative_to(extracted).parts
        has_model = any(
            name.endswith(".onnx")
            and os.path.isfile(os.path.join(root, name))
            and not os.path.islink(os.path.join(root, name))
            for name in files
        )
        if not has_model:
            continue
        has_data = any(
            name.startswith("test_data_set_") and not os.path.islink(os.path.join(root, name))
            for name in dirs
        )
        (with_data if has_data else model_only).append((len(rel), rel))
    for candidates in (with_data, model_only):
        if candidates:
            return extracted.joinpath(*min(candidates)[1])
    raise ArchiveError(
        f"{extracted} holds no .onnx model; the archive is unsafe or broken"
        " (delete it and download it again)"
    )


def _strip_archive_suffix(name: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return PurePosixPath(name).stem


def extract_test_data(archive: Path, force: bool = False) -> Path:
    """Extract a verified test-data archive next to itself (``<sha>_<name>`` without the
    archive suffix; again when ``force``) and return the folder holding ``model.onnx`` and
    ``test_data_set_*``. Blocking."""
    target = archive.with_name(_strip_archive_suffix(archive.name))
    if force and target.exists():
        shutil.rmtree(target, ignore_errors=True)
    return find_model_dir(extract_archive(archive, target))
