"""Locks and leftovers for caches shared by processes and by machines (NFS, GlusterFS, CephFS).

A lock says who holds it, expires when its holder stops renewing it, and never makes a waiter
hang: correctness never depends on it (unique partial names, the final SHA-256 check and the
atomic rename keep the cache right); the lock only saves bandwidth.

**The lock file** ``F.lock`` beside a final file ``F``:

* Mutual exclusion is ``flock`` on the file (GlusterFS, CephFS, Lustre and NFSv4 pass it to
  every client; two FUSE mounts of one GlusterFS volume block each other). The kernel (or the
  filesystem server, when a client machine disappears) releases it when the holder dies.
* Its content is the holder's record, JSON: ``host`` (``HubConfig.host_id``), ``pid``,
  ``started`` (the process's start time, which tells a reused pid apart), ``acquired`` and
  ``renewed`` (wall clock), ``token``. The holder rewrites it every ``lease / 4`` seconds from
  a thread (the *lease renewal*; one thread per process renews every lock it holds, so a
  prefetch of 60 files starts no thread per file), so a stopped process (Ctrl-Z, a frozen
  container, a host that vanished with the lock still granted) stops renewing it.
* It is deleted on release, while still locked; a waiter that locked a file it had opened
  just before checks that the path still names that file (same inode) and tries again
  otherwise, so deleting it never lets two processes hold the lock at once. A cache left
  after a run holds only final files.
* Why not the ``filelock`` library (used before): it keeps the lock file forever, has no
  holder record and no lease; those three are the point here.

**A waiter** (:class:`LockWait`) polls the lock and, while it waits, logs (logger
``asynchub``, INFO) the holder and how long it has waited, once at first and then every 30 s.
It stops waiting and downloads *in parallel* (to its own partial file, without touching any
other process's files) when:

* the holder is on this host and its process is gone, has another start time (reused pid) or
  is stopped (``T`` in ``/proc/<pid>/stat``): the holder cannot finish soon;
* the holder's record has not changed for ``lease`` seconds measured on the waiter's own
  monotonic clock (no clock skew between machines matters): a stopped process or a dead host;
* it has waited ``timeout`` seconds in all (``None``: no limit while the holder renews).

**Partial files** are named ``F.<host>-<pid>-<hex>.partial`` (:func:`owner_tag`). A partial is
*abandoned* (:func:`is_abandoned`) when its writer is on this host and that process is gone,
or when neither it nor its resume state was modified for ``2 * lease`` seconds (a writer on
another host, or a stopped one). Only abandoned partials are touched: those of this host are
adopted (resumed: claimed first by an atomic rename, so two processes never continue the same
one), those of other hosts deleted (:func:`may_adopt` says why); a partial whose writer may
be alive is left alone, whoever we are. The same rule holds for temporary
files (``*.<host>-<pid>-<hex>.tmp``, manifest and resume-state writes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .._exceptions import CacheError

__all__ = [
    "CacheLock",
    "Holder",
    "LockWait",
    "host_tag",
    "is_abandoned",
    "may_adopt",
    "owner_tag",
    "process_alive",
    "remove_abandoned",
    "claim",
    "remove_abandoned_temps",
]

log = logging.getLogger("asynchub")

#: A waiter logs the holder again after this many seconds of waiting.
LOG_EVERY = 30.0
_OLD_TAG = re.compile(r"\.(?P<pid>\d+)-[0-9a-f]+\.(?:partial|tmp)")
_TAG = re.compile(r"\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]+\.(?:partial|tmp)")


def host_tag(host: str) -> str:
    """``host`` reduced to ``[A-Za-z0-9_]`` (it goes into file names between dots and dashes)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", host)[:64] or "host"


def owner_tag(host: str) -> str:
    """``<host>-<pid>-<hex>``: the unique, owner-telling middle of a partial or temp name."""
    return f"{host_tag(host)}-{os.getpid()}-{os.urandom(4).hex()}"


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (Linux), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def process_started(pid: int) -> float | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), or None where unknown."""
    fields = _proc_stat(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        return float(fields[19])
    except ValueError:
        return None


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a zombie counts as gone)."""
    if pid <= 0:
        return False
    fields = _proc_stat(pid)
    if fields is not None:
        return fields[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_stopped(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] in ("T", "t")


# --------------------------------------------------------------------------- the lock


@dataclass(frozen=True)
class Holder:
    """The record in a lock file."""

    host: str
    pid: int
    started: float | None
    acquired: float
    renewed: float
    token: str

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        return (
            f"process {self.pid} on {self.host} (holding it for {now - self.acquired:.0f} s,"
            f" renewed {max(0.0, now - self.renewed):.0f} s ago)"
        )

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            raw = json.loads(data)
            started = raw.get("started")
            return cls(
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                started=None if started is None else float(started),
                acquired=float(raw["acquired"]),
                renewed=float(raw["renewed"]),
                token=str(raw["token"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
#: Errors of a file deleted under us; GlusterFS answers ESTALE (even to ``close``) for a lock
#: file another mount deleted while we had it open.
_VANISHED = (errno.ENOENT, errno.ESTALE)


class _Renewer:
    """The one thread of a process that rewrites the records of the locks it holds, each every
    ``max(0.05, lease / 4)`` seconds; started with the first lock, it ends when none is left
    (and starts again with the next)."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):  # the child has no renewal thread: start afresh
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._due: dict[CacheLock, float] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, lock: CacheLock) -> None:
        with self._cond:
            self._due[lock] = time.monotonic() + lock.interval
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="asynchub-lease", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def remove(self, lock: CacheLock) -> None:
        with self._cond:
            self._due.pop(lock, None)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._due:
                    self._thread = None
                    return
                now = time.monotonic()
                due = [lock for lock, at in self._due.items() if at <= now]
                for lock in due:
                    self._due[lock] = now + lock.interval
                if not due:
                    self._cond.wait(min(self._due.values()) - now)
                    continue
            for lock in due:  # outside the condition: a slow file system delays no add
                lock.renew()


_RENEWER = _Renewer()


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class CacheLock:
    """An exclusive lock on ``path`` with a holder record renewed every ``lease / 4`` s.

    Blocking calls (file system); async callers run them in worker threads."""

    def __init__(self, path: Path, *, host: str, lease: float) -> None:
        self.path = path
        self.host = host
        self.lease = lease
        self._fd = -1
        self._record: dict[str, object] = {}
        self._write_lock = threading.Lock()

    @property
    def interval(self) -> float:
        """Seconds between two renewals of the record."""
        return max(0.05, self.lease / 4)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def _check_path(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            raise CacheError(
                errno.ELOOP, f"lock path {self.path} is not a regular file; remove it and try again"
            )

    def try_acquire(self) -> bool:
        """Take the lock if it is free (never waits)."""
        if self.held:
            return True
        self._check_path()
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o666)  # the umask decides who else may read it
        except OSError as exc:
            if exc.errno in _VANISHED:  # deleted by a release on another host meanwhile
                return False
            if exc.errno == errno.EEXIST:
                # created by another host between this one's lookup and its create: FUSE file
                # systems (GlusterFS here) answer EEXIST then, although O_EXCL was not asked.
                # That host is taking the lock; the next try opens the file it created.
                return False
            raise CacheError(
                exc.errno or errno.EIO, f"opening the lock {self.path}: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            _close_quietly(fd)
            if exc.errno in _BUSY or exc.errno in _VANISHED:
                return False
            raise CacheError(
                exc.errno or errno.EIO, f"locking {self.path}: {exc.strerror}"
            ) from exc
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            same = False
        if not same:  # released (and deleted) between our open and our flock: try again
            _close_quietly(fd)
            return False
        now = time.time()
        self._record = {
            "host": self.host,
            "pid": os.getpid(),
            "started": process_started(os.getpid()),
            "acquired": now,
            "renewed": now,
            "token": os.urandom(8).hex(),
        }
        self._fd = fd
        self._write_record()
        _RENEWER.add(self)
        return True

    def _write_record(self) -> None:
        data = json.dumps(self._record).encode()
        with self._write_lock:
            if self._fd < 0:
                return
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, data, 0)

    def renew(self) -> None:
        """Rewrite the record with the time now (the lease renewal; nothing once released)."""
        if self.held:
            self._record["renewed"] = time.time()
            self._write_record()

    def release(self) -> None:
        """Delete the lock file (still locked), then unlock it."""
        if not self.held:
            return
        _RENEWER.remove(self)
        with self._write_lock:  # waits for a renewal under way; none writes after
            fd, self._fd = self._fd, -1
            try:
                with contextlib.suppress(OSError):
                    if os.fstat(fd).st_ino == os.lstat(self.path).st_ino:
                        os.unlink(self.path)
            finally:
                _close_quietly(fd)

    def holder(self) -> Holder | None:
        """The record of whoever holds the lock now (None: free, unreadable or being written)."""
        try:
            with open(self.path, "rb") as handle:
                return Holder.parse(handle.read(4096))
        except OSError:
            return None


class LockWait:
    """A waiter's judgement: keep waiting for ``lock``, or go ahead without it (see the module
    docstring). :meth:`verdict` is called between two failed attempts; it logs as it goes."""

    def __init__(self, lock: CacheLock, *, name: str, timeout: float | None) -> None:
        self.lock = lock
        self.name = name
        self.timeout = timeout
        self.start = time.monotonic()
        self._seen: tuple[str, float] | None = None
        self._seen_at = self.start
        self._logged_at: float | None = None

    def waited(self) -> float:
        return time.monotonic() - self.start

    def verdict(self) -> str | None:
        """None to keep waiting, else why the waiter should download without the lock."""
        now = time.monotonic()
        holder = self.lock.holder()
        if holder is not None:
            key = (holder.token, holder.renewed)
            if key != self._seen:
                self._seen, self._seen_at = key, now
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            who = holder.describe() if holder is not None else "another process"
            log.info(
                "%s: waiting for %s, held by %s; waited %.0f s so far",
                self.name, self.lock.path, who, now - self.start,
            )  # fmt: skip
        if holder is not None and holder.host == self.lock.host:
            if not process_alive(holder.pid):
                return f"its holder, process {holder.pid} on this host, is gone"
            started = process_started(holder.pid)
            if holder.started is not None and started is not None and started != holder.started:
                return f"its holder, process {holder.pid}, is gone (the pid was reused)"
            if _process_stopped(holder.pid):
                return f"its holder, process {holder.pid} on this host, is stopped"
        if self._seen is not None and now - self._seen_at >= self.lock.lease:
            return (
                f"its holder has not renewed its lease for {now - self._seen_at:.0f} s"
                f" (lease {self.lock.lease:g} s): it is stopped or its host is gone"
            )
        if self.timeout is not None and now - self.start >= self.timeout:
            return f"waited {now - self.start:.0f} s (the lock timeout)"
        return None


# --------------------------------------------------------------------------- leftovers


def is_abandoned(
    path: Path, *, host: str, stale_after: float, now: float | None = None, locked: bool = False
) -> bool:
    """Whether the writer of a partial or temporary file ``path`` is gone (module docstring).

    ``locked``: the caller holds the file's lock, so a partial of this very process is not
    being written (a cancelled task left it; tasks of one process share downloads).

    Names written before partials carried a host (``F.<pid>-<hex>.partial``) are judged as
    this host's; a name that tells no writer is judged by its age alone."""
    match = _TAG.search(path.name)
    old = _OLD_TAG.search(path.name) if match is None else None
    writer_host, pid = "", 0
    if match is not None:
        writer_host, pid = match.group("host"), int(match.group("pid"))
    elif old is not None:
        writer_host, pid = host_tag(host), int(old.group("pid"))
    if writer_host == host_tag(host):
        if pid == os.getpid():  # ours: abandoned only by a task the lock holder replaces
            return locked
        if not process_alive(pid):
            return True
    now = time.time() if now is None else now
    newest = 0.0
    for candidate in (path, path.with_name(path.name + ".json")):
        with contextlib.suppress(OSError):
            newest = max(newest, os.lstat(candidate).st_mtime)
    return newest > 0 and now - newest >= stale_after


def _siblings(final: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    prefix = final.name + "."
    with contextlib.suppress(OSError):
        for entry in os.scandir(final.parent):
            name = entry.name
            if (
                name.startswith(prefix)
                and name.endswith(suffixes)
                and entry.is_file(follow_symlinks=False)
            ):
                yield Path(entry.path)


def may_adopt(path: Path, *, host: str, stale_after: float, locked: bool = True) -> bool:
    """Whether a partial may be continued here: abandoned, and written on this host.

    A partial another machine wrote is never continued here, only deleted: that machine's
    kernel may still cache pages of it, and once it becomes the final file those stale pages
    are what that machine reads (seen on GlusterFS: after a resume across two mounts, the
    first mount read 3239 stale bytes at the seam of the final file for seconds)."""
    match = _TAG.search(path.name)
    ours = host_tag(host) if match is None else match.group("host")
    return ours == host_tag(host) and is_abandoned(
        path, host=host, stale_after=stale_after, locked=locked
    )


def remove_abandoned(final: Path, *, host: str, stale_after: float) -> int:
    """Delete abandoned partials (with their state) and temporary files beside ``final``;
    safe without the lock (a deletion racing another is harmless). Returns how many."""
    removed = 0
    for path in _siblings(final, (".partial", ".tmp")):
        if is_abandoned(path, host=host, stale_after=stale_after):
            for victim in (path, path.with_name(path.name + ".json")):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(victim)
                    removed += 1
    return removed


def remove_abandoned_temps(directory: Path, *, host: str, stale_after: float) -> int:
    """Delete ``*.tmp`` files in ``directory`` whose writer is gone; returns how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if not entry.name.endswith(".tmp") or not entry.is_file(follow_symlinks=False):
                continue
            if is_abandoned(Path(entry.path), host=host, stale_after=stale_after):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def claim(partial: Path, host: str) -> Path | None:
    """Take over an abandoned ``partial`` (and its state) by renaming it to a name of ours;
    None if another process claimed or deleted it first."""
    stem = partial.name[: -len(".partial")]
    base = stem.rsplit(".", 1)[0]
    mine = partial.with_name(f"{base}.{owner_tag(host)}.partial")
    state = partial.with_name(partial.name + ".json")
    try:
        os.rename(partial, mine)
    except FileNotFoundError:
        return None
    # No state (deleted by a cleaner meanwhile): the caller finds none and starts over.
    with contextlib.suppress(FileNotFoundError):
        os.rename(state, mine.with_name(mine.name + ".json"))
    return mine
