"""Cache administration: list, verify and prune the cache, whatever source wrote it.

What lives in a cache directory (see :mod:`.layout`)::

    <root>/_manifests/...                                          cached documents (``_*``)
    <root>/<ns>/_cards/...                                         a namespace's documents
    <root>/<dirs>/<sha256>_<name>                                  verified files
    <root>/<dirs>/<sha256>_<name without .tar.gz>/                 extracted test data
    <root>/<dirs>/<sha256>_<name>.<pid>-<hex>.partial[.json]       downloads in progress
    <root>/<dirs>/.<extracted dir>.staging-* / .old-*               extraction leftovers

The functions take the sources (:class:`CacheOwner`, in practice every registered
:class:`~asynchub._hub.source.SourceSpec`) as an argument: this layer knows no source by name.

Choices:

* **verify** needs no document: every cached file carries its SHA-256 in its name, so each is
  re-hashed (in a thread pool, one thread per core: hashing releases the GIL) and compared to
  its own name. ``delete=True`` removes the bad ones.
* **prune** removes leftovers: partial files (and their resume state) whose final file's lock
  is free and whose writer is gone (a dead process of this host, or :data:`GRACE` seconds
  untouched: see :mod:`.locks`), extraction staging directories, temporary files of gone
  writers (manifest writes under ``_manifests`` included), and files and extracted
  directories that no cached document references, in each namespace whose source named at
  least one file (a source that cannot tell keeps all of its files). Lock files delete
  themselves on release; prune removes one only by taking it. Top-level directories starting
  with ``_`` or ``.`` are never touched, except that ``_manifests`` is searched for
  temporary files of gone writers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .._config import default_host_id
from .._exceptions import CacheError
from .archive import COMPLETE_MARKER
from .layout import (
    PARTIAL_SUFFIX,
    STATE_SUFFIX,
    lock_path,
    sha256_file,
    translate_oserror,
)
from .locks import CacheLock, is_abandoned

__all__ = [
    "GRACE",
    "CacheOwner",
    "MIN_SHA_PREFIX",
    "CachedFile",
    "FileRef",
    "PruneReport",
    "VerifyReport",
    "list_cache",
    "prune_cache",
    "remove_cached",
    "select_cached",
    "verify_cache",
]

log = logging.getLogger("asynchub")

#: Leftovers touched less than this many seconds ago are kept by prune (they may be in use).
GRACE = 60.0
_CACHED = re.compile(r"^([0-9a-f]{64})_(.+)$")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class FileRef:
    """What a source's cached document says of a cached file: the model it belongs to, its
    opset (where the format has one) and its role (``model``, ``test_data``, ``asset``)."""

    model: str
    opset: int | None
    role: str


class CacheOwner(Protocol):
    """What the administration needs from a source (:class:`~asynchub._hub.source.SourceSpec`
    has it): the top-level folder it owns (``""``: the root) and the files its cached
    documents name (``None``: it cannot tell, so prune keeps its files)."""

    @property
    def cache_namespace(self) -> str: ...

    @property
    def references(self) -> Callable[[Path], Mapping[Path, FileRef] | None]: ...


@dataclass(frozen=True)
class CachedFile:
    """One verified file (or extracted test-data directory) in the cache."""

    path: Path
    rel: str  # relative to the cache root, POSIX
    sha256: str
    size: int
    kind: str  # "file" | "extracted"
    model: str | None = None
    opset: int | None = None
    role: str | None = None  # "model" | "test_data" when a cached manifest names it


@dataclass(frozen=True)
class VerifyReport:
    checked: int
    bytes_checked: int
    bad: tuple[tuple[Path, str], ...]
    deleted: tuple[Path, ...] = ()


@dataclass(frozen=True)
class PruneReport:
    removed: tuple[tuple[Path, str, int], ...]  # (path, reason, bytes)
    dry_run: bool
    kept_in_use: tuple[Path, ...] = ()

    @property
    def bytes(self) -> int:
        return sum(size for _, _, size in self.removed)


# --- scanning --------------------------------------------------------------------------------


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk`` of the cache's files (links never followed): top-level folders starting
    with ``_`` or ``.`` (cached documents, tools' own data) and, inside a namespace, its
    ``_`` folders are skipped."""
    if not root.is_dir():
        return
    for current, dirs, files in os.walk(root, followlinks=False):
        here = Path(current)
        if here == root or here.parent == root:
            dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        yield here, dirs, files


@dataclass
class _Refs:
    """The references of every owner; ``known``: the namespaces whose owner could tell."""

    files: dict[Path, FileRef]
    known: set[str]
    namespaces: set[str]

    def namespace_of(self, root: Path, path: Path) -> str:
        top = path.relative_to(root).parts[0]
        return top if top in self.namespaces else ""

    def prunable(self, root: Path, path: Path) -> bool:
        """Unreferenced, in a namespace whose owner knows its files and named some."""
        return path not in self.files and self.namespace_of(root, path) in self.known


def _references(root: Path, owners: Sequence[CacheOwner]) -> _Refs:
    refs = _Refs({}, set(), {o.cache_namespace for o in owners if o.cache_namespace})
    for owner in owners:
        found = owner.references(root)
        if found:
            refs.files.update(found)
            refs.known.add(owner.cache_namespace)
    return refs


def _is_leftover_name(name: str) -> bool:
    return name.endswith((PARTIAL_SUFFIX, STATE_SUFFIX, ".tmp", ".lock"))


def _archive_of(directory: Path) -> list[Path]:
    return [directory.with_name(directory.name + suffix) for suffix in _ARCHIVE_SUFFIXES]


def list_cache(root: Path, owners: Sequence[CacheOwner]) -> list[CachedFile]:
    """Verified files and extracted directories in the cache, sorted by path, labelled with
    what the ``owners``' cached documents say of them. Blocking."""
    refs = _references(root, owners).files
    out: list[CachedFile] = []
    for here, dirs, files in _walk(root):
        for name in files:
            match = _CACHED.match(name)
            if match is None or _is_leftover_name(name):
                continue
            path = here / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            ref = refs.get(path)
            model, opset, role = (ref.model, ref.opset, ref.role) if ref else (None, None, None)
            out.append(
                CachedFile(
                    path,
                    path.relative_to(root).as_posix(),
                    match.group(1),
                    st.st_size,
                    "file",
                    model,
                    opset,
                    role,
                )
            )
        for name in list(dirs):
            match = _CACHED.match(name)
            path = here / name
            if match is None or not (path / COMPLETE_MARKER).is_file():
                continue
            dirs.remove(name)  # do not descend into extracted test data
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            archive = next((a for a in _archive_of(path) if a in refs), None)
            ref = refs.get(archive) if archive else None
            model, opset = (ref.model, ref.opset) if ref else (None, None)
            out.append(
                CachedFile(
                    path,
                    path.relative_to(root).as_posix(),
                    match.group(1),
                    size,
                    "extracted",
                    model,
                    opset,
                    "test_data",
                )
            )
    return sorted(out, key=lambda f: f.rel)


# --- remove ----------------------------------------------------------------------------------

_HEX = frozenset("0123456789abcdef")
#: Shortest SHA-256 prefix ``select_cached`` accepts (8 hex digits: 4 billion values, so a
#: prefix that short still names one file in any real cache).
MIN_SHA_PREFIX = 8


def select_cached(root: Path, owners: Sequence[CacheOwner], target: str) -> list[CachedFile]:
    """The cached files of model ``target`` (any case; every opset, test data included, as
    named by the cached manifests), else those whose SHA-256 starts with ``target`` (at least
    :data:`MIN_SHA_PREFIX` hex digits). Blocking."""
    files = list_cache(root, owners)
    wanted = target.strip().lower()
    by_model = [f for f in files if f.model is not None and f.model.lower() == wanted]
    if by_model or len(wanted) < MIN_SHA_PREFIX or not set(wanted) <= _HEX:
        return by_model
    return [f for f in files if f.sha256.startswith(wanted)]


def remove_cached(root: Path, files: list[CachedFile]) -> int:
    """Delete ``files`` (from :func:`select_cached`) and the directories left empty; returns
    the bytes freed. A file another process still has open stays readable to it (POSIX), and
    the next load fetches and verifies it again. Blocking."""
    freed = 0
    for entry in files:
        try:
            if entry.kind == "extracted":
                shutil.rmtree(entry.path)
            else:
                entry.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise translate_oserror(exc, f"removing {entry.path}") from exc
        freed += entry.size
    _remove_empty_dirs(root)
    return freed


# --- verify ----------------------------------------------------------------------------------


def verify_cache(
    root: Path,
    owners: Sequence[CacheOwner],
    *,
    delete: bool = False,
    workers: int | None = None,
    on_file: Callable[[CachedFile, str | None], None] | None = None,
) -> VerifyReport:
    """Re-hash every cached file against the SHA-256 in its name. ``on_file(file, problem)``
    is called as each finishes (``problem`` is None when it is good). Blocking."""
    files = [f for f in list_cache(root, owners) if f.kind == "file"]
    bad: list[tuple[Path, str]] = []
    deleted: list[Path] = []

    def check(entry: CachedFile) -> str | None:
        try:
            actual = sha256_file(entry.path)
        except OSError as exc:
            return f"unreadable: {exc}"
        if actual != entry.sha256:
            return f"SHA-256 is {actual}, its name says {entry.sha256}"
        return None

    threads = workers or max(1, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="asynchub-verify") as ex:
        for entry, problem in zip(files, ex.map(check, files), strict=True):
            if on_file is not None:
                on_file(entry, problem)
            if problem is None:
                continue
            bad.append((entry.path, problem))
            if delete:
                try:
                    entry.path.unlink()
                except OSError as exc:
                    raise translate_oserror(exc, f"deleting {entry.path}") from exc
                deleted.append(entry.path)
    return VerifyReport(len(files), sum(f.size for f in files), tuple(bad), tuple(deleted))


# --- prune -----------------------------------------------------------------------------------


def _lock_is_free(final: Path) -> bool:
    path = lock_path(final)
    if not path.exists():
        return True
    return _lock_is_free_path(path)


def _lock_is_free_path(path: Path) -> bool:
    """Whether nobody holds the lock ``path``; taking and releasing it deletes the file."""
    lock = CacheLock(path, host=default_host_id(), lease=GRACE)
    try:
        if not lock.try_acquire():
            return False
    except (OSError, CacheError):
        return False
    lock.release()
    return True


def _document_temps(root: Path) -> Iterator[Path]:
    """``*.tmp`` files in the top-level ``_*`` folders (cached documents), which
    :func:`_walk` leaves out."""
    with contextlib.suppress(OSError):
        for top in os.scandir(root):
            if not top.name.startswith("_") or not top.is_dir(follow_symlinks=False):
                continue
            for folder, _dirs, names in os.walk(top.path, followlinks=False):
                for name in names:
                    if name.endswith(".tmp"):
                        yield Path(folder) / name


def _abandoned(path: Path, host: str, grace: float, now: float) -> bool:
    """A partial or temporary file whose writer is gone: a dead process of this host at
    once, any other after ``grace`` seconds untouched (:func:`.locks.is_abandoned`)."""
    return is_abandoned(path, host=host, stale_after=grace, now=now)


def _size(path: Path) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if stat.S_ISDIR(st.st_mode):
        return sum(p.lstat().st_size for p in path.rglob("*"))
    return st.st_size


def _age(path: Path, now: float) -> float:
    try:
        return now - os.lstat(path).st_mtime
    except OSError:
        return 0.0


def _final_of_partial(path: Path) -> Path:
    name = path.name
    if name.endswith(STATE_SUFFIX):
        name = name[: -len(".json")]
    stem = name[: -len(PARTIAL_SUFFIX)]
    return path.with_name(stem.rsplit(".", 1)[0])


def prune_cache(
    root: Path,
    owners: Sequence[CacheOwner],
    *,
    dry_run: bool = False,
    grace: float = GRACE,
    host: str | None = None,
) -> PruneReport:
    """Remove leftovers (see the module docstring). ``dry_run`` only reports; ``host`` is this
    machine's ``HubConfig.host_id`` (default: :func:`~asynchub._config.default_host_id`).
    Blocking."""
    host = host or default_host_id()
    refs = _references(root, owners)
    now = time.time()
    found: list[tuple[Path, str]] = []
    in_use: list[Path] = []
    stale_locks: list[tuple[Path, str, int]] = []
    for here, dirs, files in _walk(root):
        for name in files:
            path = here / name
            if name.endswith((PARTIAL_SUFFIX, STATE_SUFFIX)):
                partial = path.with_name(name[: -len(".json")]) if name.endswith(".json") else path
                if not _abandoned(partial, host, grace, now) or not _lock_is_free(
                    _final_of_partial(path)
                ):
                    in_use.append(path)
                else:
                    found.append((path, "partial download"))
            elif name.endswith(".tmp"):
                if _abandoned(path, host, grace, now):
                    found.append((path, "temporary file"))
            elif name.endswith(".lock") and not name.startswith("."):
                if not dry_run and _lock_is_free_path(path):  # taking it deletes it
                    stale_locks.append((path, "lock file of a gone holder", 0))
            elif _CACHED.match(name) and not name.endswith(".lock") and refs.prunable(root, path):
                found.append((path, "not referenced by any cached manifest or card"))
        for name in list(dirs):
            path = here / name
            if name.startswith(".") and (".staging-" in name or ".old-" in name):
                dirs.remove(name)
                if _age(path, now) >= grace:
                    found.append((path, "extraction leftover"))
            elif _CACHED.match(name) and (path / COMPLETE_MARKER).is_file():
                dirs.remove(name)
                archives = _archive_of(path)
                if refs.prunable(root, archives[0]) and not any(a in refs.files for a in archives):
                    found.append((path, "extracted data of an unreferenced archive"))
    for tmp in _document_temps(root):  # manifest and card writes of killed processes
        if _abandoned(tmp, host, grace, now):
            found.append((tmp, "temporary file"))
    removed: list[tuple[Path, str, int]] = []
    for path, reason in found:
        size = _size(path)
        if not dry_run:
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise translate_oserror(exc, f"removing {path}") from exc
        removed.append((path, reason, size))
    removed.extend(stale_locks)
    if not dry_run:
        _remove_empty_dirs(root)
    return PruneReport(tuple(removed), dry_run, tuple(in_use))


def _remove_empty_dirs(root: Path) -> None:
    for here, _dirs, _files in sorted(_walk(root), key=lambda t: len(t[0].parts), reverse=True):
        if here != root:
            with contextlib.suppress(OSError):
                here.rmdir()  # only succeeds when empty
