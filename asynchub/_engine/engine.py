"""The transfer engine: verified files into the cache, in parallel, resumable, shared.

:meth:`Engine.fetch` turns a :class:`FileJob` (mirror URLs, SHA-256, size, cache path) into a
verified file at ``job.dest``. The per-mirror mechanics (probe, Range chunks, retries,
watchdog) live in :mod:`asynchub._engine.ranged`; this module owns what surrounds them:

* **Cache hits.** A ``dest`` that verifies (size + SHA-256, hashed in a worker thread) is
  returned at once with a ``cached`` event and no request. One that does not is deleted (under
  the lock) and fetched again. With ``config.offline`` anything else is an
  :class:`OfflineError`: the engine never touches the network.
* **Sharing.** In one process, concurrent ``fetch`` calls for the same ``dest`` share one
  download (an in-flight table per event loop). A waiter that is cancelled only stops waiting.
  If the task that runs the download is cancelled, the download stops with its resume state
  saved and the next waiter takes over, continuing from the partial file.
* **Processes.** A per-file lock (``<dest>.lock``, :mod:`asynchub._cache.locks`: ``flock`` plus
  a holder record with a renewed lease) makes N processes, on one machine or on many sharing
  the cache, download a file once: the others wait, then find the verified file. The lock is
  tried in a worker thread every 20 ms growing to 0.5 s (a blocking acquire would pin a
  thread and could not be cancelled); a waiter logs the holder and how long it waited, and
  goes on without the lock (downloading in parallel) when the holder is gone, stopped or
  stopped renewing, or after ``config.lock_timeout``. Correctness never depends on the lock
  (unique partial names, final hash, atomic rename). Without the lock (``use_locks=False`` or
  a waiter that went on) nothing of another live writer is touched: no resume, only the
  partials of dead writers are deleted.
* **Resume.** Under the lock, a partial left by an earlier run (error, cancellation, Ctrl-C,
  SIGKILL) is adopted when its state matches (:mod:`.resume`); its finished prefix is
  hashed again once and only the missing bytes are fetched (with ``If-Range``).
* **Space.** A new partial is preallocated with ``os.posix_fallocate``, so a full disk fails at
  the start with :class:`InsufficientSpaceError` instead of after minutes of transfer. While
  bytes arrive, the partial is flushed to disk every 64 MiB hashed (:func:`_writeback`), so
  the fsync before the rename has little left to do.
* **Unknown size.** A job without a size is probed like any other (a ranged ``GET`` of the
  first chunk): a ``206`` tells the size (the partial is preallocated then) and the file is
  chunked, resumed and verified as if the size had been given; a server that answers without
  any size gets one plain ``GET`` (:mod:`asynchub._engine.whole`). A partial of an earlier run tells
  the size too (the one its state recorded).
* **Integrity.** The hash cursor's digest and the size are checked before the atomic rename
  (``_cache.commit``). A mismatch starts the file over (on the next mirror if there is one);
  a second mismatch raises :class:`IntegrityError`; the partial is deleted. The same rule holds
  for files of unknown size.
* **Leftovers.** A failed or cancelled download keeps its partial (for the next run to resume)
  only when it holds bytes, resume is possible (locks on) and the failure was not about the
  bytes themselves (integrity, disk); otherwise nothing is left beside the final name.
* **Mirrors.** Connection failures, 404/410, a wrong size or a wrong SHA-256 move on to the next
  URL; when every URL failed, :class:`MirrorsExhaustedError` lists each (url, error).
* **Budget.** One ``anyio.CapacityLimiter(max_connections)`` and one bandwidth
  :class:`TokenBucket` per engine (per event loop) bound every connection of every file, so a
  bulk prefetch runs ``fetch`` for many jobs in one task group (or calls :meth:`fetch_many`).

Chunk size: ``config.chunk_size`` (16 MiB) for files of at least ``config.min_split_size``
(4 MiB); smaller files are one request with no separate probe. Which range each connection
fetches (lowest offset first, tapering, work stealing) is :mod:`asynchub._engine.schedule`'s call.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .._cache.layout import (
    commit,
    ensure_dir,
    file_matches,
    new_partial_path,
    remove_quietly,
    state_path,
    translate_oserror,
)
from .._cache.locks import CacheLock, may_adopt, remove_abandoned
from .._cache.locks import claim as claim_partial
from .._config import HubConfig
from .._descriptors import DEFAULT as DEFAULT_DESCRIPTORS
from .._descriptors import PER_CONNECTION, reserve
from .._exceptions import (
    CacheError,
    HubError,
    InsufficientSpaceError,
    IntegrityError,
    MirrorsExhaustedError,
    OfflineError,
    TransferError,
)
from .._loops import PerLoop
from .._progress.events import ProgressCallback, ProgressEvent
from .._transport.base import Transport
from .batch import WriteQueue
from .context import file_threads
from .hashing import HashCursor
from .locking import file_lock, new_lock
from .mapped import mappable
from .ranged import Context, FileDownload, Unranged, collapse_group
from .ratelimit import TokenBucket
from .resume import ChunkPlan, ResumeState, find_resumable
from .slots import HostSlots
from .whole import stream_whole

__all__ = ["Engine", "FileJob"]

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger("asynchub")

#: Mirror errors spelled out in a MirrorsExhaustedError's message (each cut in its middle
#: to 400 characters, so the URL's start and the error's end stay).
MESSAGE_ERRORS = 4
WRITEBACK = 64 * 1024 * 1024
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


@dataclass(frozen=True)
class FileJob:
    """One file to fetch."""

    #: Manifest path: the label in progress events and logs.
    name: str
    #: Ordered mirror URLs.
    urls: tuple[str, ...]
    #: Expected SHA-256, lower-case hex.
    sha256: str
    #: Expected size in bytes (``None``: unknown, fetched as one stream, still SHA-verified).
    size: int | None
    #: Final cache path; its parent is inside ``config.cache_dir``.
    dest: Path
    #: Runs beside a ranged download of this file, in its task group, until the file is
    #: complete (then it is cancelled): called with the partial file's descriptor and its
    #: :class:`HashCursor`, whose ``hashed`` bytes are written and final under its
    #: ``generation``. E.g. ``load`` parses the model while the rest arrives. It must not
    #: raise (a failure would stop the download) and must only read. Not part of the job's
    #: identity; a download shared with another caller runs the first caller's follower.
    follower: Callable[[int, HashCursor], Coroutine[Any, Any, None]] | None = field(
        default=None, compare=False
    )


@dataclass
class _Shared:
    """A fetch in flight, as the coroutines waiting for it see it."""

    done: anyio.Event = field(default_factory=anyio.Event)
    result: Path | None = None
    error: BaseException | None = None


@dataclass
class _LoopResources:
    """What the engine's downloads share on one event loop."""

    limiter: anyio.CapacityLimiter
    bucket: TokenBucket | None
    host_slots: HostSlots
    threads: anyio.CapacityLimiter = field(default_factory=file_threads)
    inflight: dict[Path, _Shared] = field(default_factory=dict)
    writes: WriteQueue = field(init=False)  # every file's writes, in shared batches

    def __post_init__(self) -> None:
        self.writes = WriteQueue(threads=self.threads)


def _preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes so a full disk fails now (blocking)."""
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:  # pragma: no cover - platforms without posix_fallocate
            os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            os.ftruncate(fd, size)
            return
        raise translate_oserror(exc, f"reserving {size} bytes for a download") from exc


def _check_space(job: FileJob, size: int) -> None:
    """Refuse a size the cache's file system cannot hold (blocking)."""
    import shutil  # rarely needed: most sizes are known and preallocated instead

    try:
        free = shutil.disk_usage(job.dest.parent).free
    except OSError as exc:
        raise translate_oserror(exc, f"checking the free space for {job.name}") from exc
    if size > free:
        raise InsufficientSpaceError(
            errno.ENOSPC,
            f"no space left for {job.name}: its server says {size} bytes, {free} are free in "
            f"{job.dest.parent}; free disk space or set another cache dir",
        )


def _open_partial(partial: Path, size: int | None, fresh: bool) -> int:
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | (os.O_CREAT | os.O_EXCL if fresh else 0)
    try:
        fd = os.open(partial, flags, 0o644)
    except OSError as exc:
        raise translate_oserror(exc, f"creating {partial}") from exc
    if fresh and size:
        try:
            _preallocate(fd, size)
        except BaseException:
            os.close(fd)
            remove_quietly(partial)
            raise
    return fd


def _not_a_file(path: Path) -> bool:
    """Something other than a regular file or a symlink (which is replaced, never followed)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISLNK(mode))


def _look(root: Path, job: FileJob, force: bool) -> bool:
    """Create the file's directory; whether a verified copy is there already (blocking)."""
    ensure_dir(root, job.dest.parent)
    return not force and file_matches(job.dest, job.sha256, job.size)


def _look_and_lock(
    config: HubConfig, job: FileJob, force: bool
) -> tuple[bool, CacheLock | None, tuple[bool, bool, bool] | None]:
    """The usual start of a file in one worker-thread call (blocking): whether a verified copy
    is there (:func:`_look`); if not, its lock, taken if it is free, and then the look again
    under it (:func:`_look_again`)."""
    if _look(config.cache_dir, job, force):
        return True, None, None
    if config.offline or not config.use_locks:
        return False, None, None
    lock = new_lock(config, job.dest)
    if not lock.try_acquire():
        return False, lock, None
    return False, lock, _look_again(job, force)


def _look_again(job: FileJob, force: bool) -> tuple[bool, bool, bool]:
    """Under the lock (blocking): whether a verified copy is there now, whether something
    that is not a file holds the name, whether anything does."""
    if not force and file_matches(job.dest, job.sha256, job.size):
        return True, False, True
    return False, _not_a_file(job.dest), os.path.lexists(job.dest)


async def _writeback(fd: int, cursor: HashCursor, sync: Callable[[int], None] = _datasync) -> None:
    """Flush the partial to disk (``os.fdatasync`` in a worker thread) each time another
    :data:`WRITEBACK` bytes (64 MiB) are hashed, so the fsync before the rename has little
    left to do: the disk works while the network does (measured here: 1 GiB fsync-ed at the
    end took 0.17-0.25 s, in 64 MiB steps during the download ~0.02 s at the end). Runs until
    cancelled; a failure only stops it (the final fsync reports real disk errors)."""
    synced = 0
    while True:
        await cursor.moved()
        synced = min(synced, cursor.hashed)  # a reset starts the count again
        if cursor.hashed - synced < WRITEBACK:
            continue
        synced = cursor.hashed
        try:
            await anyio.to_thread.run_sync(sync, fd)
        except OSError as exc:
            log.debug("early writeback of a partial download failed: %s", exc)
            return


def _finish(
    fd: int, partial: Path, dest: Path, size: int, fsync: Callable[[int], None] = os.fsync
) -> None:
    """Check the size, close ``fd``, then publish (blocking)."""
    try:
        actual = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if actual != size:
        raise IntegrityError(f"{partial} holds {actual} bytes, expected {size}")
    commit(partial, dest, fsync=fsync)
    remove_quietly(state_path(partial))


class Engine:
    """Fetches :class:`FileJob` s under one connection budget (see the module docstring)."""

    def __init__(
        self,
        config: HubConfig,
        transport: Transport,
        *,
        progress: ProgressCallback | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self.config = config
        self.transport = transport
        #: The user's progress callback (the hub keeps it in step with ``AsyncHub.progress``).
        self.progress = progress
        self._sleep = sleep
        self._clock = clock
        #: The file-writing seam: flushes a verified partial before its atomic rename (run in
        #: a worker thread). Injectable so tests can make the disk fail (EIO).
        self._fsync = fsync
        self._per_loop: PerLoop[_LoopResources] = PerLoop(self._new_resources)
        # room for every connection's descriptors now, not while connections open (a wait
        # each time the table grows, see asynchub._descriptors)
        reserve(max(DEFAULT_DESCRIPTORS, PER_CONNECTION * config.max_connections))
        self._callback_failed = False
        self._listeners: list[ProgressCallback] = []

    # ------------------------------------------------------------------ shared resources
    def _new_resources(self) -> _LoopResources:
        bucket = None
        if self.config.limit_rate is not None:
            bucket = TokenBucket(self.config.limit_rate, clock=self._clock, sleep=self._sleep)
        return _LoopResources(
            anyio.CapacityLimiter(self.config.max_connections),
            bucket,
            HostSlots(self.config.max_connections_per_host),
        )

    def _resources(self) -> _LoopResources:
        return self._per_loop.get()

    def _emit(self, event: ProgressEvent) -> None:
        for listener in self._listeners:
            listener(event)
        if self.progress is None:
            return
        try:
            self.progress(event)
        except Exception:
            if not self._callback_failed:
                self._callback_failed = True
                log.exception("the progress callback failed; its later errors are not logged")

    @contextlib.contextmanager
    def observe(self, listener: ProgressCallback) -> Iterator[None]:
        """Also send every progress event to ``listener`` while the block runs.

        How a caller that shares the engine (e.g. a prefetch run beside ``load`` calls) counts
        what happens to its own files: it filters the events by name. The listener must be
        quick and must not raise (it is the caller's own code, not a user callback).
        """
        self._listeners.append(listener)
        try:
            yield
        finally:
            self._listeners.remove(listener)

    def _context(self, res: _LoopResources) -> Context:
        return Context(
            config=self.config,
            transport=self.transport,
            limiter=res.limiter,
            bucket=res.bucket,
            sleep=self._sleep,
            clock=self._clock,
            emit=self._emit,
            host_slot=res.host_slots,
            threads=res.threads,
        )

    # ------------------------------------------------------------------ public API
    async def fetch(self, job: FileJob, *, force: bool = False) -> Path:
        """``job.dest`` holding verified bytes (fetched now, or found in the cache).

        Safe to call concurrently from many tasks: calls for the same ``dest`` share one
        download, and every call shares the engine's connection budget. ``force`` downloads
        again even if ``dest`` verifies (joining a download already in flight).
        """
        res = self._resources()
        while True:
            shared = res.inflight.get(job.dest)
            if shared is None:
                break
            await shared.done.wait()
            if shared.result is not None:
                return shared.result
            if shared.error is not None:
                raise shared.error
            # the coroutine running it was cancelled: take over (resuming its partial)
        shared = _Shared()
        res.inflight[job.dest] = shared
        try:
            shared.result = await self._fetch_owned(job, force, res)
            return shared.result
        except Exception as exc:
            shared.error = exc
            raise
        finally:
            del res.inflight[job.dest]
            shared.done.set()

    async def fetch_many(
        self, jobs: Iterable[FileJob], *, force: bool = False
    ) -> list[Path | HubError]:
        """Fetch every job concurrently under the engine's budget; one result per job, in
        order: its path, or the :class:`HubError` it failed with."""
        job_list = list(jobs)
        results: list[Path | HubError] = [
            TransferError(f"{job.name} was not fetched") for job in job_list
        ]

        async def one(position: int, job: FileJob) -> None:
            try:
                results[position] = await self.fetch(job, force=force)
            except HubError as exc:
                results[position] = exc

        try:
            async with anyio.create_task_group() as group:
                for position, job in enumerate(job_list):
                    group.start_soon(one, position, job)
        except BaseExceptionGroup as exc_group:
            raise collapse_group(exc_group) from None
        return results

    # ------------------------------------------------------------------ one file
    async def _fetch_owned(self, job: FileJob, force: bool, res: _LoopResources) -> Path:
        try:
            return await self._fetch_locked(job, force, res)
        except Exception as exc:
            self._emit(ProgressEvent("failed", job.name, message=str(exc)))
            raise

    async def _fetch_locked(self, job: FileJob, force: bool, res: _LoopResources) -> Path:
        config = self.config
        cached, lock, under = await anyio.to_thread.run_sync(
            _look_and_lock, config, job, force, limiter=res.threads
        )
        if cached:
            self._emit(ProgressEvent("cached", job.name, total=job.size, path=job.dest))
            return job.dest
        if config.offline:
            raise OfflineError(
                f"{job.name} is not in the cache ({job.dest}) and offline mode is on; "
                "fetch it once online, or turn offline mode off (ASYNCHUB_OFFLINE=0)"
            )
        async with file_lock(config, job.name, job.dest, lock=lock) as held:
            # Check again even if the lock was free: another process may have published the
            # file (and released its lock) since the check above.
            if under is None or not held:
                under = await anyio.to_thread.run_sync(_look_again, job, force)
            cached, odd, exists = under
            if cached:
                self._emit(ProgressEvent("cached", job.name, total=job.size, path=job.dest))
                return job.dest
            if odd:
                raise CacheError(
                    errno.EISDIR,
                    f"{job.dest} exists and is not a regular file; asynchub will not replace it."
                    " Move or delete it, then try again",
                )
            if not force and exists:
                log.warning("%s: %s fails verification; fetching it again", job.name, job.dest)
                if held:
                    # Only the lock's holder may delete it; without locks another process may
                    # have just replaced it with good bytes. The atomic rename of the new
                    # verified file replaces it either way.
                    await anyio.to_thread.run_sync(remove_quietly, job.dest)
            if job.size == 0:
                return await self._download_unsized(job, res)
            try:
                return await self._download(job, res, clean=held)
            except Unranged as exc:
                log.info("%s: %s; fetching it as one stream", job.name, exc)
                return await self._download_unsized(job, res)

    async def _download(self, job: FileJob, res: _LoopResources, *, clean: bool) -> Path:
        """A file of known size, or of unknown size whose size the probe tells (a partial of
        an earlier run tells it too: the size its state recorded)."""
        config, size = self.config, job.size
        chunk = config.chunk_size
        if size is not None and size < config.min_split_size:
            chunk = size
        host, stale = config.host_id, 2 * config.lock_lease

        def open_partial() -> tuple[Path, ResumeState | None, int, bool]:
            """The partial to continue (or a new one), its state, an open descriptor, and
            whether the hash may read it back through maps (a new one only: the bytes of an
            earlier run may have to come from the disk, see :mod:`.mapped`)."""
            found: tuple[Path, ResumeState] | None = None
            if clean:
                found = find_resumable(
                    job.dest,
                    sha256=job.sha256,
                    size=size,
                    chunk_size=chunk,
                    clean=True,
                    abandoned=lambda p: may_adopt(p, host=host, stale_after=stale),
                    claim=lambda p: claim_partial(p, host),
                )
            # Leave live writers alone, remove what dead ones (of any host) left.
            remove_abandoned(job.dest, host=host, stale_after=stale)
            partial = found[0] if found else new_partial_path(job.dest, host)
            state = found[1] if found else None
            fd = _open_partial(partial, state.size if state else size, found is None)
            return partial, state, fd, found is None and mappable(fd)

        # one worker-thread call for all of it: many files start at once in a prefetch
        partial, state, fd, mapped = await anyio.to_thread.run_sync(open_partial)
        size = state.size if state is not None else size
        if state is not None:
            plan = ChunkPlan(state.size, chunk, state.written, state.ranges)
        else:  # unknown size: one provisional range, the probe's, until the probe answers
            plan = ChunkPlan(chunk if size is None else size, chunk)
        self._emit(ProgressEvent("planned", job.name, total=size))
        if state is not None and plan.done_bytes:
            log.info("%s: resuming %s (%d of %d bytes)", job.name, partial, plan.done_bytes, size)
            self._emit(ProgressEvent("resumed", job.name, nbytes=plan.done_bytes, total=size))
        download = FileDownload(
            self._context(res),
            name=job.name,
            sha256=job.sha256,
            partial=partial,
            fd=fd,
            plan=plan,
            chunk_size=chunk,
            resumed=state,
            mapped=mapped,
            size_known=size is not None,
            on_size=functools.partial(self._sized, job, fd),
            writes=res.writes,
        )
        try:
            mirror = await self._run_mirrors(job, download)
            owned, fd, size = fd, -1, plan.size
            await anyio.to_thread.run_sync(_finish, owned, partial, job.dest, size, self._fsync)
        except BaseException as exc:
            keep = (
                clean and plan.done_bytes > 0 and not isinstance(exc, (IntegrityError, CacheError))
            )
            with anyio.CancelScope(shield=True):
                if keep and fd >= 0 and plan.complete:
                    # every byte is on disk, not yet verified: the transfer saved no state
                    # (a complete file is published next), so the last one saved is older
                    await download.save_state()
                if fd >= 0:
                    await anyio.to_thread.run_sync(os.close, fd)
                if not keep:
                    await anyio.to_thread.run_sync(remove_quietly, partial, state_path(partial))
            raise
        # What killed writers left beside the file (possible without the lock) goes now.
        await anyio.to_thread.run_sync(
            lambda: remove_abandoned(job.dest, host=host, stale_after=stale)
        )
        log.info("%s: verified and cached at %s (served by %s)", job.name, job.dest, mirror)
        self._emit(ProgressEvent("done", job.name, total=size, path=job.dest, mirror=mirror))
        return job.dest

    async def _sized(self, job: FileJob, fd: int, size: int) -> None:
        """The probe told the size of a file of unknown size: check the free space, then
        reserve it, before anything is planned."""
        await anyio.to_thread.run_sync(_check_space, job, size)
        await anyio.to_thread.run_sync(_preallocate, fd, size)
        self._emit(ProgressEvent("planned", job.name, total=size))

    async def _run_mirrors(self, job: FileJob, download: FileDownload) -> str:
        """Complete and verify the partial, trying the mirrors in order; the serving URL."""
        outcome: list[str] = []
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(download.cursor.run)
                group.start_soon(_writeback, download.fd, download.cursor)
                if job.follower is not None:
                    group.start_soon(job.follower, download.fd, download.cursor)
                outcome.append(await self._try_mirrors(job, download))
                group.cancel_scope.cancel()
        except BaseExceptionGroup as exc_group:
            raise collapse_group(exc_group) from None
        return outcome[0]

    async def _try_mirrors(self, job: FileJob, download: FileDownload) -> str:
        errors: list[tuple[str, BaseException]] = []
        mismatches = 0
        position = 0
        while position < len(job.urls):
            url = job.urls[position]
            try:
                await download.run_mirror(url)
            except CacheError:
                raise
            except HubError as exc:
                errors.append((url, exc))
                self._mirror_failed(job, url, exc, position)
                position += 1
                continue
            digest = await download.cursor.hexdigest(download.plan.size)
            if digest == job.sha256:
                return download.url or url
            mismatches += 1
            error = self._mismatch(job, download.url or url, digest, final=mismatches >= 2)
            errors.append((url, error))
            if mismatches >= 2:
                raise error
            log.warning("%s: %s; starting the file again", job.name, error)
            self._emit(ProgressEvent("retry", job.name, message=str(error)))
            download.restart()
            await download.save_state()
            if position + 1 < len(job.urls):
                position += 1
        raise self._exhausted(job, errors)

    def _mirror_failed(self, job: FileJob, url: str, exc: BaseException, position: int) -> None:
        more = position + 1 < len(job.urls)
        said = str(exc).removeprefix(f"{job.name}: ")
        message = (said if url in said else f"{url} failed: {said}") + (
            "; trying the next mirror" if more else ""
        )
        log.info("%s: %s", job.name, message)  # the CLI shows it (retry event)
        if more:
            self._emit(ProgressEvent("retry", job.name, message=message))

    @staticmethod
    def _mismatch(job: FileJob, url: str, digest: str, *, final: bool) -> IntegrityError:
        what = (
            "the partial download was deleted; try again later, add another mirror "
            "(file_urls), or tell the repo's owner that the file and its manifest disagree"
            if final
            else "retrying from scratch"
        )
        return IntegrityError(
            f"SHA-256 mismatch for {job.name} from {url}: expected {job.sha256}, got {digest}; "
            + what
        )

    @staticmethod
    def _exhausted(job: FileJob, errors: list[tuple[str, BaseException]]) -> HubError:
        def line(url: str, exc: BaseException) -> str:
            text = str(exc) if url in str(exc) else f"{url}: {exc}"
            return text if len(text) <= 400 else text[:200] + "…" + text[-199:]

        lines = "; ".join(line(url, exc) for url, exc in errors[:MESSAGE_ERRORS])
        if len(errors) > MESSAGE_ERRORS:  # the message stays short; ``errors`` holds them all
            lines += f"; and {len(errors) - MESSAGE_ERRORS} more"
        return MirrorsExhaustedError(
            f"every mirror failed for {job.name}: {lines}. ASYNCHUB_FILE_URLS sets the "
            "mirrors to use; what was fetched is kept and resumes on the next try",
            errors,
        )

    async def _download_unsized(self, job: FileJob, res: _LoopResources) -> Path:
        """A file of unknown (or zero) size: one stream per try, hashed as it is written."""
        partial = new_partial_path(job.dest, self.config.host_id)
        fd = await anyio.to_thread.run_sync(_open_partial, partial, None, True)
        ctx = self._context(res)
        self._emit(ProgressEvent("planned", job.name, total=job.size))
        errors: list[tuple[str, BaseException]] = []
        mismatches = 0
        position = 0
        try:
            while position < len(job.urls):
                url = job.urls[position]
                try:
                    size, digest, served = await stream_whole(ctx, job.name, url, fd)
                except CacheError:
                    raise
                except HubError as exc:
                    errors.append((url, exc))
                    self._mirror_failed(job, url, exc, position)
                    position += 1
                    continue
                if digest == job.sha256 and (job.size is None or size == job.size):
                    owned, fd = fd, -1
                    await anyio.to_thread.run_sync(
                        _finish, owned, partial, job.dest, size, self._fsync
                    )
                    log.info("%s: verified and cached at %s (served by %s)", job.name,
                             job.dest, served)  # fmt: skip
                    self._emit(ProgressEvent("done", job.name, total=size, path=job.dest,
                                             mirror=served))  # fmt: skip
                    return job.dest
                mismatches += 1
                error = self._mismatch(job, served, digest, final=mismatches >= 2)
                errors.append((url, error))
                if mismatches >= 2:
                    raise error
                log.warning("%s: %s; starting the file again", job.name, error)
                self._emit(ProgressEvent("retry", job.name, message=str(error)))
                if position + 1 < len(job.urls):
                    position += 1
            raise self._exhausted(job, errors)
        finally:
            if fd >= 0:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(os.close, fd)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_quietly, partial, state_path(partial))
