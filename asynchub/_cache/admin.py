"""Cache administration: list, verify and prune the cache; write a static mirror.

What lives in a cache directory (see :mod:`._cache`)::

    <root>/_manifests/<owner>/<repo>/<ref>/ONNX_HUB_MANIFEST.json   cached manifests
    <root>/<dirs>/<sha256>_<name>                                  verified files
    <root>/<dirs>/<sha256>_<name without .tar.gz>/                 extracted test data
    <root>/<dirs>/<sha256>_<name>.<pid>-<hex>.partial[.json]       downloads in progress
    <root>/<dirs>/.<extracted dir>.staging-* / .old-*               extraction leftovers

Choices:

* **verify** needs no manifest: every cached file carries its SHA-256 in its name, so each is
  re-hashed (in a thread pool, one thread per core: hashing releases the GIL) and compared to
  its own name. ``delete=True`` removes the bad ones.
* **prune** removes leftovers: partial files (and their resume state) whose final file's lock
  is free and that have not been touched for :data:`GRACE` seconds (a running download holds
  the lock and writes often), extraction staging directories, temporary files, and, when at
  least one manifest is cached, files and extracted directories that no cached manifest
  references. Lock files are kept: removing a lock another process may be waiting on would
  break mutual exclusion, and they are empty. Top-level directories starting with ``_`` or
  ``.`` and the ``mindspore`` tree (other hubs' layouts) are never touched.
* **mirror** writes ``<out>/<owner>/<repo>/<ref>/ONNX_HUB_MANIFEST.json`` (the selected
  entries, merged with entries already there) and each verified file at
  ``<out>/<owner>/<repo>/<ref>/<model_path>`` (copied, atomically; not hard-linked, so an
  edit of a cache file in place can never alter what the mirror serves). Any static HTTP
  server can then serve ``<out>`` with the templates
  ``{base}/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json`` and
  ``{base}/{owner}/{repo}/{ref}/{path}``. Entries whose model failed are left out; the
  test-data fields of an entry are dropped when its archive is not in the mirror, so clients
  get a clear "no test data" error instead of a 404.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from .._exceptions import CacheError, ManifestError
from .._onnx.manifest import ModelInfo, parse_manifest
from .._onnx.urls import DEFAULT_REPO, RepoSpec
from .archive import COMPLETE_MARKER
from .layout import (
    PARTIAL_SUFFIX,
    STATE_SUFFIX,
    cache_path,
    lock_path,
    sha256_file,
    translate_oserror,
)

if TYPE_CHECKING:
    from .._hub.client import AsyncHub
    from .._hub.prefetch import PrefetchResult

__all__ = [
    "GRACE",
    "CachedFile",
    "MirrorReport",
    "PruneReport",
    "VerifyReport",
    "cached_manifests",
    "list_cache",
    "prune_cache",
    "verify_cache",
    "write_mirror",
]

log = logging.getLogger("asynchub")

#: Leftovers touched less than this many seconds ago are kept by prune (they may be in use).
GRACE = 60.0
MANIFESTS_DIR = "_manifests"
MANIFEST_NAME = "ONNX_HUB_MANIFEST.json"
_CACHED = re.compile(r"^([0-9a-f]{64})_(.+)$")
_SKIP_TOP = ("mindspore",)
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


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


@dataclass(frozen=True)
class MirrorReport:
    out_dir: Path
    repo_dir: Path
    manifest: Path
    files: tuple[Path, ...]
    entries: int
    prefetch: PrefetchResult
    bytes_written: int = 0
    notes: tuple[str, ...] = field(default=())


# --- scanning --------------------------------------------------------------------------------


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk`` of the hub's own part of the cache (links never followed)."""
    if not root.is_dir():
        return
    for current, dirs, files in os.walk(root, followlinks=False):
        here = Path(current)
        if here == root:
            dirs[:] = [d for d in dirs if not d.startswith(("_", ".")) and d not in _SKIP_TOP]
        yield here, dirs, files


def cached_manifests(root: Path) -> list[tuple[str, list[ModelInfo]]]:
    """Every manifest cached under ``root/_manifests`` as ``(repo, entries)``; unreadable
    ones are skipped with a warning."""
    base = root / MANIFESTS_DIR
    found: list[tuple[str, list[ModelInfo]]] = []
    if not base.is_dir():
        return found
    for path in sorted(base.rglob(MANIFEST_NAME)):
        parts = path.relative_to(base).parts[:-1]
        repo = f"{parts[0]}/{parts[1]}:{'/'.join(parts[2:]) or 'main'}" if len(parts) >= 2 else "?"
        try:
            found.append((repo, parse_manifest(path.read_bytes(), source=str(path))))
        except (OSError, ManifestError) as exc:
            log.warning("skipping the unreadable cached manifest %s: %s", path, exc)
    return found


def _references(root: Path) -> dict[Path, tuple[str, int, str]]:
    refs: dict[Path, tuple[str, int, str]] = {}
    for _, entries in cached_manifests(root):
        for e in entries:
            with contextlib.suppress(CacheError):
                if e.model_sha:
                    refs[cache_path(root, e.model_path, e.model_sha)] = (e.model, e.opset, "model")
                if e.model_with_data_path and e.model_with_data_sha:
                    dest = cache_path(root, e.model_with_data_path, e.model_with_data_sha)
                    refs[dest] = (e.model, e.opset, "test_data")
    return refs


def _is_leftover_name(name: str) -> bool:
    return name.endswith((PARTIAL_SUFFIX, STATE_SUFFIX, ".tmp", ".lock"))


def _archive_of(directory: Path) -> list[Path]:
    return [directory.with_name(directory.name + suffix) for suffix in _ARCHIVE_SUFFIXES]


def list_cache(root: Path) -> list[CachedFile]:
    """Verified files and extracted directories in the cache, sorted by path. Blocking."""
    refs = _references(root)
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
            model, opset, role = refs.get(path, (None, None, None))
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
            model, opset, _ = refs.get(archive, (None, None, None)) if archive else (None,) * 3
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


# --- verify ----------------------------------------------------------------------------------


def verify_cache(
    root: Path,
    *,
    delete: bool = False,
    workers: int | None = None,
    on_file: Callable[[CachedFile, str | None], None] | None = None,
) -> VerifyReport:
    """Re-hash every cached file against the SHA-256 in its name. ``on_file(file, problem)``
    is called as each finishes (``problem`` is None when it is good). Blocking."""
    files = [f for f in list_cache(root) if f.kind == "file"]
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
    lock = filelock.FileLock(str(path), thread_local=False, is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except (filelock.Timeout, OSError):
        return False
    lock.release()
    return True


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


def prune_cache(root: Path, *, dry_run: bool = False, grace: float = GRACE) -> PruneReport:
    """Remove leftovers (see the module docstring). ``dry_run`` only reports. Blocking."""
    refs = _references(root)
    have_manifests = bool(refs)
    now = time.time()
    found: list[tuple[Path, str]] = []
    in_use: list[Path] = []
    for here, dirs, files in _walk(root):
        for name in files:
            path = here / name
            if name.endswith((PARTIAL_SUFFIX, STATE_SUFFIX)):
                if _age(path, now) < grace or not _lock_is_free(_final_of_partial(path)):
                    in_use.append(path)
                else:
                    found.append((path, "partial download"))
            elif name.endswith(".tmp"):
                if _age(path, now) >= grace:
                    found.append((path, "temporary file"))
            elif (
                have_manifests
                and _CACHED.match(name)
                and not name.endswith(".lock")
                and path not in refs
            ):
                found.append((path, "not referenced by any cached manifest"))
        for name in list(dirs):
            path = here / name
            if name.startswith(".") and (".staging-" in name or ".old-" in name):
                dirs.remove(name)
                if _age(path, now) >= grace:
                    found.append((path, "extraction leftover"))
            elif _CACHED.match(name) and (path / COMPLETE_MARKER).is_file():
                dirs.remove(name)
                if have_manifests and not any(a in refs for a in _archive_of(path)):
                    found.append((path, "extracted data of an unreferenced archive"))
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
    if not dry_run:
        _remove_empty_dirs(root)
    return PruneReport(tuple(removed), dry_run, tuple(in_use))


def _remove_empty_dirs(root: Path) -> None:
    for here, _dirs, _files in sorted(_walk(root), key=lambda t: len(t[0].parts), reverse=True):
        if here != root:
            with contextlib.suppress(OSError):
                here.rmdir()  # only succeeds when empty


# --- mirror ----------------------------------------------------------------------------------


def _publish_copy(source: Path, target: Path, sha256: str | None) -> bool:
    """Place ``source`` (verified, of SHA-256 ``sha256``) at ``target`` atomically; False when
    the same bytes were already there."""
    if sha256 and target.is_file() and not target.is_symlink():
        st = target.stat()
        if st.st_size == source.stat().st_size and sha256_file(target) == sha256:
            return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


def _write_manifest(path: Path, entries: list[dict[str, Any]]) -> None:
    existing: list[dict[str, Any]] = []
    if path.is_file():
        try:
            existing = [
                e.raw_model_info for e in parse_manifest(path.read_bytes(), source=str(path))
            ]
        except ManifestError as exc:
            log.warning("replacing the unreadable mirror manifest %s: %s", path, exc)
    new_paths = {e["model_path"] for e in entries}
    merged = [e for e in existing if e.get("model_path") not in new_paths] + entries
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _mirror_files(
    repo_dir: Path, result: PrefetchResult, entries: list[ModelInfo]
) -> tuple[list[Path], int, list[dict[str, Any]]]:
    written: list[Path] = []
    nbytes = 0
    by_name = {(i.model, i.opset, i.kind): i for i in result.items}
    manifest: list[dict[str, Any]] = []
    for info in entries:
        model_item = by_name.get((info.model, info.opset, "model"))
        if model_item is None or model_item.path is None:
            continue
        raw = json.loads(json.dumps(info.raw_model_info))
        data_item = by_name.get((info.model, info.opset, "test_data"))
        pairs = [(model_item.path, info.model_path, model_item.sha256)]
        if data_item is not None and data_item.path is not None and info.model_with_data_path:
            pairs.append((data_item.path, info.model_with_data_path, data_item.sha256))
        else:
            for key in ("model_with_data_path", "model_with_data_sha", "model_with_data_bytes"):
                raw.get("metadata", {}).pop(key, None)
        for source, rel, sha in pairs:
            target = repo_dir.joinpath(*rel.split("/"))
            try:
                if _publish_copy(source, target, sha):
                    nbytes += source.stat().st_size
            except OSError as exc:
                raise translate_oserror(exc, f"writing {target}") from exc
            written.append(target)
        manifest.append(raw)
    return written, nbytes, manifest


async def write_mirror(
    hub: AsyncHub, out_dir: Path, *, repo: str = DEFAULT_REPO, **selection: Any
) -> MirrorReport:
    """Prefetch ``selection`` (as :func:`~asynchub._hub.prefetch.prefetch`; archives are kept
    packed) and write it in the mirror layout under ``out_dir`` (see the module docstring)."""
    from .._hub.prefetch import prefetch, select_entries

    spec = RepoSpec.parse(repo)
    selection["extract"] = False
    result = await prefetch(hub, repo=repo, **selection)
    entries = select_entries(
        await hub.manifest(repo),
        tags=selection.get("tags"),
        models=selection.get("models"),
        all=bool(selection.get("all")),
        all_opsets=bool(selection.get("all_opsets")),
    )
    repo_dir = Path(out_dir).joinpath(spec.owner, spec.name, *spec.ref.split("/"))
    files, nbytes, manifest = await hub.run_blocking(_mirror_files, repo_dir, result, entries)
    manifest_path = repo_dir / MANIFEST_NAME
    try:
        await hub.run_blocking(_write_manifest, manifest_path, manifest)
    except OSError as exc:
        raise translate_oserror(exc, f"writing {manifest_path}") from exc
    return MirrorReport(
        out_dir=Path(out_dir),
        repo_dir=repo_dir,
        manifest=manifest_path,
        files=tuple(files),
        entries=len(manifest),
        prefetch=result,
        bytes_written=nbytes,
    )
