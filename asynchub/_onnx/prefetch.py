"""Bulk prefetch: fetch a selection of a manifest under one connection budget.

``await hub.prefetch(tags=["vision"])`` (or ``models=[...]``, or ``all=True``) plans every
file first, then downloads what is missing and returns a :class:`PrefetchResult` with one
:class:`PrefetchItem` (path or error) per selected file. Running it again fetches only what is
still missing. Choices:

* **Selection.** Tags match as in ``list_models`` (any case, an entry matches if ANY tag
  matches); model names match exactly, ignoring case; ``tags`` and ``models`` together select
  the union; ``all=True`` takes the whole manifest. Without ``all_opsets`` only the largest
  opset of each selected model name is kept (as ``load`` would pick it). An unknown model name,
  or tags that match nothing, raise before anything is written: a typo should not quietly
  prefetch nothing.
* **Planning.** Totals are known before the first byte moves: ``bytes_total`` is the size of
  the selection (each distinct file once), ``bytes_planned`` what was not in the cache at plan
  time. One ``planned`` progress event per file to fetch is emitted up front, so bars and
  callbacks have fixed totals. Free space is checked against what is still missing (partial
  files already on disk count as written); :class:`InsufficientSpaceError` is raised before
  anything is written unless ``check_space=False``. Archives to extract count twice (the
  extracted size is not in the manifest; the archive size is a lower bound for it).
* **One budget.** The run goes through the hub's own :class:`Engine`: one connection
  limiter, one bandwidth cap (``config.max_connections``, ``config.limit_rate``) and one table
  of downloads in flight, shared with every other call on the hub (a ``load`` of a file the
  prefetch is fetching joins that download). A CLI run's ``--max-connections`` and
  ``--limit-rate`` are the settings of the hub that command builds.
  At most ``max_connections`` files are in flight at once (a file needs at least one
  connection, so more would only queue), and they start in this order: files with a resumable
  partial first (they finish soonest and free their partial's disk space), then largest first.
  Largest-first is the classic longest-job-first schedule: big files start while every
  connection is free and get split into parallel Range chunks by the engine, and the many
  small files fill the remaining connections and the tail of the run, so a run does not end
  with one big file trickling over a single connection.
* **Dedup.** Files with the same SHA-256 are fetched once: entries that share a cache path
  share one download, and the same bytes under another path are hard-linked (or copied, where
  links are not possible) from the verified copy.
* **Isolation.** A failure is recorded in that file's item; it never cancels the other files.
  Cancellation (Ctrl-C) does stop everything; partial files stay on disk and a later run
  resumes them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio

from .._cache.layout import commit, ensure_dir, new_partial_path, partials_for, remove_quietly
from .._engine.engine import Engine, FileJob
from .._exceptions import (
    ConfigError,
    HubError,
    InsufficientSpaceError,
    ModelNotFoundError,
    OfflineError,
)
from .._progress.events import ProgressEvent
from .._progress.units import format_rate
from .._progress.units import format_size as human_bytes
from .manifest import ModelInfo, filter_models
from .urls import DEFAULT_REPO, RepoSpec

if TYPE_CHECKING:
    from .._hub.client import AsyncHub

__all__ = ["PrefetchItem", "PrefetchResult", "human_bytes", "prefetch", "select_entries"]

log = logging.getLogger("asynchub")

ItemKind = Literal["model", "test_data"]
ItemStatus = Literal["fetched", "cached", "linked", "failed"]


@dataclass(frozen=True)
class PrefetchItem:
    """One selected file: the model of an entry, or its test-data archive.

    ``status`` is ``fetched`` (bytes came over the network in this run), ``cached`` (it was
    already in the cache), ``linked`` (the same bytes were already fetched under another path
    and were linked or copied) or ``failed`` (``error`` says why). ``path`` is the cached file,
    or for extracted test data the directory holding ``model.onnx`` and ``test_data_set_*``.
    """

    model: str
    opset: int
    kind: ItemKind
    name: str
    sha256: str | None
    size: int | None
    status: ItemStatus
    path: Path | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        what = "model" if self.kind == "model" else "test data"
        return f"{self.model} (opset {self.opset}) {what}"


@dataclass(frozen=True)
class PrefetchResult:
    """What a prefetch did. ``ok`` and ``failed`` are the items that succeeded / failed.

    ``bytes_total``: size of the selection, each distinct file once. ``bytes_planned``: bytes
    of the files that were not in the cache at plan time (the sum of the ``planned`` progress
    totals). ``bytes_fetched``: bytes that came over the network in this run (less than
    ``bytes_planned`` when partial files were resumed). ``elapsed``: seconds, plan included.
    """

    repo: str
    items: tuple[PrefetchItem, ...]
    bytes_total: int
    bytes_planned: int
    bytes_fetched: int
    elapsed: float
    files_planned: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> tuple[PrefetchItem, ...]:
        return tuple(item for item in self.items if item.error is None)

    @property
    def failed(self) -> tuple[PrefetchItem, ...]:
        return tuple(item for item in self.items if item.error is not None)

    @property
    def rate(self) -> float:
        """Bytes per second over the network (0 when nothing was fetched)."""
        return self.bytes_fetched / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        """A few human-readable lines: counts, bytes, time, speed, and each failure."""
        counts = {status: 0 for status in ("fetched", "cached", "linked", "failed")}
        for item in self.items:
            counts[item.status] += 1
        parts = [f"{counts['fetched']} fetched", f"{counts['cached']} already cached"]
        if counts["linked"]:
            parts.append(f"{counts['linked']} linked (same SHA-256)")
        parts.append(f"{counts['failed']} failed")
        lines = [
            f"{len(self.items)} files from {self.repo} ({human_bytes(self.bytes_total)}): "
            + ", ".join(parts),
            f"downloaded {human_bytes(self.bytes_fetched)} of {human_bytes(self.bytes_planned)}"
            f" planned in {self.elapsed:.2f} s ({format_rate(self.rate)})",
        ]
        lines.extend(self.notes)
        for item in self.failed:
            lines.append(f"FAILED {item.describe()} [{item.name}]: {item.error}")
        return "\n".join(lines)


# --- selection -------------------------------------------------------------------------------


def select_entries(
    entries: Sequence[ModelInfo],
    *,
    tags: list[str] | None = None,
    models: list[str] | None = None,
    all: bool = False,
    all_opsets: bool = False,
) -> list[ModelInfo]:
    """The entries a prefetch (or mirror) selects, in manifest order (rules in the module
    docstring). Raises ``ConfigError`` when nothing is asked for and ``ModelNotFoundError``
    for an unknown model name or tags that match nothing."""
    if isinstance(models, str):
        raise ConfigError(f"models must be a list of names, e.g. [{models!r}], not a string")
    if not all and tags is None and models is None:
        raise ConfigError(
            "say what to prefetch: tags=[...], models=[...] or all=True "
            "(on the command line: --tag, --model or --all)"
        )
    if all:
        chosen = list(entries)
    else:
        wanted: set[int] = set()
        if tags is not None:
            by_tag = filter_models(entries, tags=tags)
            if tags and not by_tag:
                known = sorted({t.lower() for e in entries for t in e.tags})
                import difflib  # only to word an error

                close = {c for t in tags for c in difflib.get_close_matches(t.lower(), known)}
                hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
                raise ModelNotFoundError(
                    f"No models found with tags {tags}{hint}. "
                    "Run `asynchub list` (or list_models()) to see the tags."
                )
            wanted.update(id(e) for e in by_tag)
        for name in models or []:
            matching = filter_models(entries, model=name)
            if not matching:
                names = {e.model.lower(): e.model for e in entries}
                import difflib  # only to word an error

                near = difflib.get_close_matches(name.lower(), list(names), n=3)
                hint = f" (did you mean {', '.join(names[c] for c in near)}?)" if near else ""
                raise ModelNotFoundError(
                    f"No models found with name {name}{hint}. "
                    "Run `asynchub list` (or list_models()) to see the models."
                )
            wanted.update(id(e) for e in matching)
        chosen = [e for e in entries if id(e) in wanted]
    if all_opsets:
        return chosen
    best: dict[str, ModelInfo] = {}
    for entry in chosen:
        key = entry.model.lower()
        if key not in best or entry.opset > best[key].opset:
            best[key] = entry
    keep = {id(e) for e in best.values()}
    return [e for e in chosen if id(e) in keep]


# --- planning --------------------------------------------------------------------------------


@dataclass
class _Want:
    """One selected file of one entry."""

    info: ModelInfo
    kind: ItemKind
    name: str
    sha256: str | None
    size: int | None
    job: FileJob | None = None
    error: BaseException | None = None


@dataclass
class _Group:
    """Every wanted file with one SHA-256: fetched once, then linked to its other paths."""

    sha256: str
    size: int | None
    wants: list[_Want]
    dests: dict[Path, FileJob] = field(default_factory=dict)
    present: set[Path] = field(default_factory=set)
    resumed_bytes: int = 0
    allocated_bytes: int = 0

    @property
    def primary(self) -> FileJob:
        """The job to download: a path already present if any, else the first."""
        for dest, job in self.dests.items():
            if dest in self.present:
                return job
        return next(iter(self.dests.values()))


def _partial_bytes(dest: Path) -> tuple[int, int]:
    """(bytes written by earlier runs, bytes allocated on disk) over the partials of ``dest``."""
    from .._cache.layout import state_path
    from .._engine.resume import ResumeState

    written = allocated = 0
    for partial in partials_for(dest):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, IndexError):
            st = partial.stat()
            allocated = max(allocated, min(st.st_size, st.st_blocks * 512))
            state = ResumeState.from_json(state_path(partial).read_text(encoding="utf-8"))
            written = max(written, sum(state.written))
    return written, allocated


def _inspect(groups: list[_Group], force: bool) -> None:
    """Blocking: which destinations exist and what partials lie beside them."""
    for group in groups:
        for dest in group.dests:
            if not force and _is_complete_file(dest, group.size):
                group.present.add(dest)
            written, allocated = _partial_bytes(dest)
            group.resumed_bytes = max(group.resumed_bytes, written)
            group.allocated_bytes = max(group.allocated_bytes, allocated)


def _is_complete_file(path: Path, size: int | None) -> bool:
    """A cheap presence check for planning (size only); the engine verifies what it uses."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        os.path.isfile(path) and not os.path.islink(path) and (size is None or st.st_size == size)
    )


def _free_space(directory: Path) -> int:
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _check_space(cache_dir: Path, needed: int) -> None:
    free = _free_space(cache_dir)
    if needed > free:
        raise InsufficientSpaceError(
            errno.ENOSPC,
            f"this prefetch needs {human_bytes(needed)} more in {cache_dir} but only "
            f"{human_bytes(free)} is free; free some space or choose another cache directory "
            "(--cache-dir / ASYNCHUB_CACHE_DIR), or pass check_space=False / --no-space-check "
            "to go ahead anyway",
        )


def _link_or_copy(source: Path, dest: Path, root: Path) -> None:
    """Publish ``dest`` as a copy of the verified ``source`` (hard link where possible)."""
    ensure_dir(root, dest.parent)
    tmp = new_partial_path(dest)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        commit(tmp, dest)
    finally:
        remove_quietly(tmp)


# --- the run ---------------------------------------------------------------------------------


async def prefetch(
    hub: AsyncHub,
    *,
    tags: list[str] | None = None,
    models: list[str] | None = None,
    all: bool = False,
    repo: str = DEFAULT_REPO,
    all_opsets: bool = False,
    with_test_data: bool = False,
    extract: bool = True,
    force_reload: bool = False,
    check_space: bool = True,
    silent: bool = False,
    trust_repo: bool = False,
) -> PrefetchResult:
    """Fetch a selection of ``repo`` into the cache (see the module docstring).

    ``with_test_data`` adds each entry's test-data archive (entries without one are noted in
    the result); ``extract`` (default) unpacks them as ``download_model_with_test_data`` does.
    ``force_reload`` downloads everything again. ``check_space=False`` skips the free-space
    check. ``silent`` / ``trust_repo`` are as for ``load``.
    """
    started = time.perf_counter()
    entries = select_entries(
        await hub.manifest(repo), tags=tags, models=models, all=all, all_opsets=all_opsets
    )
    await hub.onnx_source.check_trust(RepoSpec.parse(repo), silent=silent, trust_repo=trust_repo)
    wants, notes = _wants(hub, entries, repo, with_test_data)
    groups = _group(wants)
    await hub.run_blocking(_inspect, groups, force_reload)

    missing = [g for g in groups if len(g.present) < len(g.dests)]
    to_fetch = [g for g in missing if not g.present]
    bytes_total = sum(g.size or 0 for g in groups)
    bytes_planned = sum(g.size or 0 for g in to_fetch)
    needed = sum(max(0, (g.size or 0) - g.allocated_bytes) for g in to_fetch)
    needed += sum(
        (g.size or 0) * (len(g.dests) - len(g.present) - (0 if g.present else 1)) for g in missing
    )
    if with_test_data and extract:
        needed += sum(g.size or 0 for g in to_fetch if any(w.kind == "test_data" for w in g.wants))
    if check_space and needed:
        await hub.run_blocking(_check_space, hub.config.cache_dir, needed)

    fetched_bytes = 0
    done_names: set[str] = set()
    names = {g.primary.name for g in to_fetch}

    def count(event: ProgressEvent) -> None:
        nonlocal fetched_bytes
        if event.name not in names:
            return  # another call's file on the same engine
        if event.kind == "transfer":
            fetched_bytes += event.nbytes
        elif event.kind == "done":
            done_names.add(event.name)

    if hub.progress is not None and not hub.config.offline:
        try:
            for group in to_fetch:
                hub.progress(ProgressEvent("planned", group.primary.name, total=group.size))
        except Exception:
            log.exception("the progress callback failed on a 'planned' event")

    engine = hub.engine
    order = sorted(missing, key=lambda g: (g.resumed_bytes == 0, -(g.size or 0)))
    files_at_once = anyio.CapacityLimiter(max(1, hub.config.max_connections))
    results: dict[int, tuple[ItemStatus, Path | None, BaseException | None]] = {}

    async def run_group(group: _Group) -> None:
        async with files_at_once:
            await _fetch_group(hub, engine, group, force_reload, extract, done_names, results)

    with engine.observe(count):
        async with anyio.create_task_group() as tg:
            for group in order:
                tg.start_soon(run_group, group)

    missing_ids = {id(g) for g in missing}
    for group in groups:
        if id(group) in missing_ids:
            continue
        for want in group.wants:
            assert want.job is not None
            path = await _finish_item(hub, want, want.job.dest, extract, force_reload, results)
            if path is not None:
                results.setdefault(id(want), ("cached", path, None))

    items = tuple(_item(want, results) for want in wants)
    result = PrefetchResult(
        repo=repo,
        items=items,
        bytes_total=bytes_total,
        bytes_planned=bytes_planned,
        bytes_fetched=fetched_bytes,
        elapsed=time.perf_counter() - started,
        files_planned=len(to_fetch),
        notes=tuple(notes),
    )
    log.info("prefetch %s: %s", repo, result.summary().replace("\n", "; "))
    return result


def _wants(
    hub: AsyncHub, entries: list[ModelInfo], repo: str, with_test_data: bool
) -> tuple[list[_Want], list[str]]:
    spec = RepoSpec.parse(repo)
    wants: list[_Want] = []
    without_data: list[str] = []
    for info in entries:
        files: list[tuple[ItemKind, str, str | None, int | None]] = [
            ("model", info.model_path, info.model_sha, info.model_bytes)
        ]
        if with_test_data:
            if info.model_with_data_path:
                files.append(
                    (
                        "test_data",
                        info.model_with_data_path,
                        info.model_with_data_sha,
                        info.model_with_data_bytes,
                    )
                )
            else:
                without_data.append(f"{info.model} (opset {info.opset})")
        for kind, path, sha, size in files:
            want = _Want(info, kind, path, sha.lower() if sha else None, size)
            try:
                want.job = hub.onnx_source.file_job(spec, path, sha, size)
            except HubError as exc:
                want.error = exc
            wants.append(want)
    notes = []
    if without_data:
        notes.append(f"no test data in the manifest for: {', '.join(without_data)}")
    return wants, notes


def _group(wants: list[_Want]) -> list[_Group]:
    groups: dict[str, _Group] = {}
    for want in wants:
        if want.job is None:
            continue
        group = groups.get(want.job.sha256)
        if group is None:
            group = groups[want.job.sha256] = _Group(want.job.sha256, want.size, [])
        group.wants.append(want)
        group.dests.setdefault(want.job.dest, want.job)
    return list(groups.values())


async def _fetch_group(
    hub: AsyncHub,
    engine: Engine,
    group: _Group,
    force: bool,
    extract: bool,
    done_names: set[str],
    results: dict[int, tuple[ItemStatus, Path | None, BaseException | None]],
) -> None:
    primary = group.primary
    try:
        if group.present:
            source = primary.dest
        elif hub.config.offline:
            raise OfflineError(
                f"offline mode is on and {primary.name} is not cached; run once with the "
                "network (without --offline / ASYNCHUB_OFFLINE) to fetch it"
            )
        else:
            source = await engine.fetch(primary, force=force)
    except Exception as exc:  # one file's failure is recorded, never propagated
        _log_failure(primary.name, exc)
        for want in group.wants:
            results[id(want)] = ("failed", None, exc)
        return
    fetched = primary.name in done_names
    for dest in group.dests:
        if dest == source or dest in group.present:
            continue
        try:
            await hub.run_blocking(_link_or_copy, source, dest, hub.config.cache_dir)
        except Exception as exc:
            _log_failure(str(dest), exc)
            for want in group.wants:
                if want.job is not None and want.job.dest == dest:
                    results[id(want)] = ("failed", None, exc)
    for want in group.wants:
        if id(want) in results or want.job is None:
            continue
        dest = want.job.dest
        if dest in group.present:
            status: ItemStatus = "cached"
        elif dest == source:
            status = "fetched" if fetched else "cached"
        else:
            status = "linked"
        path = await _finish_item(hub, want, dest, extract, force, results)
        if path is not None:
            results[id(want)] = (status, path, None)


async def _finish_item(
    hub: AsyncHub,
    want: _Want,
    dest: Path,
    extract: bool,
    force: bool,
    results: dict[int, tuple[ItemStatus, Path | None, BaseException | None]],
) -> Path | None:
    """The item's final path (extracting test data when asked); records a failure."""
    if id(want) in results:
        return None
    if want.kind != "test_data" or not extract:
        return dest

    from .._cache.archive import extract_test_data  # tarfile and gzip: only for test data

    try:
        extracted: Path = await hub.run_blocking(extract_test_data, dest, force)
    except Exception as exc:
        _log_failure(want.name, exc)
        results[id(want)] = ("failed", None, exc)
        return None
    return extracted


def _log_failure(name: str, exc: BaseException) -> None:
    if isinstance(exc, HubError):
        log.info("prefetch: %s failed: %s", name, exc)
    else:
        log.error("prefetch: %s failed unexpectedly", name, exc_info=exc)


def _item(
    want: _Want, results: dict[int, tuple[ItemStatus, Path | None, BaseException | None]]
) -> PrefetchItem:
    status: ItemStatus
    path: Path | None
    error: BaseException | None
    if want.error is not None:
        status, path, error = "failed", None, want.error
    else:
        status, path, error = results.get(
            id(want), ("failed", None, HubError("not attempted (internal error)"))
        )
    return PrefetchItem(
        model=want.info.model,
        opset=want.info.opset,
        kind=want.kind,
        name=want.name,
        sha256=want.sha256,
        size=want.size,
        status=status,
        path=path,
        error=error,
    )
