"""Big manifests without re-parsing: a name index beside the cached manifest.

A manifest is at most 64 MiB; one near that size (~200,000 entries) took seconds and ~470 MB
to parse and validate, so every warm ``load`` in a new process paid that. A
:class:`ManifestView` answers lookups by name while reading only what they need:

* **Small manifests** (under :data:`INDEX_THRESHOLD`, 1 MiB; the real one is ~320 KB and
  parses in about a millisecond) are parsed whole, as before; no index is written.
* **Big manifests** are parsed and validated whole once, and an index is written beside the
  cached copy (``ONNX_HUB_MANIFEST.json.index``), keyed by the manifest's SHA-256: the byte
  span of every entry, grouped by lower-cased name into :data:`BUCKETS` hash buckets, and the
  sorted list of names (for suggestions). A later lookup hashes the manifest (streaming, ~0.1 s
  for 58 MiB), reads the index header and one bucket, and parses only the entries of that
  name. An index that does not match the manifest's SHA-256 (the manifest changed, a partial
  write) is ignored and rebuilt; the entries read back are validated again and must carry
  the name looked up, else the view falls back to a full parse.
* **From :data:`CHILD_THRESHOLD` (4 MiB) on** that first parse runs in a child process
  (:func:`index_in_child`, :mod:`.index_child`): the child validates the manifest and sends
  back only the index, so this process never holds the parsed entries and its event loop is
  not frozen by the garbage collector sweeping them. A manifest the child finds invalid raises
  the same :class:`ManifestError` as the in-process parse (and so is never cached).
* A misspelt name reads the sorted names and suggests through
  :func:`~asynchub._onnx.manifest.model_not_found` (bounded cost).

The index is a cache of a validated document, never a source of truth: the manifest's own
bytes are always what is parsed. Everything here blocks; async callers use worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

from .._cache.locks import owner_tag
from .._config import default_host_id
from .._exceptions import ManifestError
from .manifest import (
    ModelInfo,
    model_not_found,
    parse_entry,
    parse_manifest,
    parse_manifest_spans,
    select,
)

__all__ = [
    "BUCKETS",
    "CHILD_THRESHOLD",
    "INDEX_THRESHOLD",
    "ManifestView",
    "build_index",
    "index_in_child",
    "index_path",
]

log = logging.getLogger("asynchub")

#: Manifests from this size (bytes) on get an index.
INDEX_THRESHOLD = 1024 * 1024
#: Manifests from this size (bytes) on are validated and indexed in a child process (see
#: :func:`index_in_child`). 4 MiB is about 14,000 entries, eight times the real manifest
#: (~0.5 MB, 184 entries). Measured on 2 shared cores (onnx imported, parse in a worker thread,
#: a 5 ms ticker on the loop): in process, 2 MiB took 0.1 s with a 20 ms worst gap, 4 MiB 0.19 s
#: / 21 ms, 8 MiB 0.61 s / 111 ms; in a child, 4 MiB took 0.29 s / 3 ms and 8 MiB 0.61 s / 8 ms.
#: Below the threshold the child's start (~0.1 s) would cost more than the gaps it saves.
CHILD_THRESHOLD = 4 * 1024 * 1024
#: Longest a child may take before the parse falls back to this process (seconds; a 64 MiB
#: manifest takes ~6 s on one core).
CHILD_TIMEOUT = 300.0
#: What the child runs (``python -I -c``): the package root given on its command line is put
#: first on ``sys.path`` so the child imports this very copy of asynchub.
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from asynchub._onnx.index_child import main; sys.exit(main())"
)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
#: Hash buckets of the index (~50 names per bucket for 200,000 names).
BUCKETS = 4096
_FORMAT = 1
_BLOCK = 1024 * 1024
#: Longest validation message taken from the child (characters).
_MAX_MESSAGE = 1000
#: Longest index header accepted (the bucket offsets: ~40 KB).
_MAX_HEADER = 1024 * 1024


def index_path(manifest_file: Path) -> Path:
    """Where the index of the manifest cached at ``manifest_file`` lives."""
    return manifest_file.with_name(manifest_file.name + ".index")


def _bucket_of(name: str) -> int:
    return zlib.crc32(name.lower().encode("utf-8", "surrogatepass")) % BUCKETS


class _Index:
    """An index checked against a manifest's SHA-256 (see the module docstring): a file
    beside the cached manifest (:meth:`open`), or one just built, in memory (:meth:`from_blob`)."""

    def __init__(
        self,
        read: Callable[[int, int], bytes],
        base: int,
        offsets: list[int],
        names: tuple[int, int],
    ):
        self._read_raw = read
        self.base = base
        self.offsets = offsets
        self.names_span = names

    @staticmethod
    def _header(line: bytes, sha256: str) -> tuple[list[int], tuple[int, int]] | None:
        try:
            header = json.loads(line)
            offsets = header["offsets"]
            names = header["names"]
            valid = (
                header.get("format") == _FORMAT
                and header.get("sha256") == sha256
                and isinstance(offsets, list)
                and len(offsets) == BUCKETS + 1
                and all(isinstance(o, int) for o in offsets)
                and offsets == sorted(offsets)
                and isinstance(names, list)
                and len(names) == 2
                and all(isinstance(n, int) for n in names)
            )
        except (ValueError, KeyError, TypeError):
            return None
        return (offsets, (names[0], names[1])) if valid else None

    @classmethod
    def open(cls, path: Path, sha256: str) -> _Index | None:
        try:
            with open(path, "rb") as handle:
                line = handle.readline(_MAX_HEADER)
        except OSError:
            return None
        header = cls._header(line, sha256)
        if header is None:
            return None

        def read(start: int, end: int) -> bytes:
            with open(path, "rb") as handle:
                handle.seek(start)
                return handle.read(end - start)

        return cls(read, len(line), *header)

    @classmethod
    def from_blob(cls, blob: bytes, sha256: str) -> _Index | None:
        """The index ``blob`` (an index file's bytes) if it is one for ``sha256``."""
        end = blob.find(b"\n", 0, _MAX_HEADER)
        header = cls._header(blob[: end + 1], sha256) if end >= 0 else None
        if header is None or header[1][1] > len(blob) - end - 1:
            return None
        return cls(lambda start, stop: blob[start:stop], end + 1, *header)

    def _read(self, start: int, end: int) -> bytes:
        data = self._read_raw(self.base + start, self.base + end)
        if len(data) != end - start:
            raise ValueError("the index is truncated")
        return data

    def spans(self, name: str) -> list[tuple[int, int, int]]:
        """``(entry index, start, end)`` of every entry named ``name`` (any case)."""
        bucket = _bucket_of(name)
        found = json.loads(self._read(self.offsets[bucket], self.offsets[bucket + 1]))
        return [tuple(span) for span in found.get(name.lower(), [])]

    def names(self) -> list[str]:
        return self._read(*self.names_span).decode("utf-8", "surrogatepass").split("\n")


def build_index(entries: list[ModelInfo], spans: list[tuple[int, int]], sha256: str) -> bytes:
    """The bytes of the index file of a validated manifest (entries and their byte spans)."""
    buckets: list[dict[str, list[list[int]]]] = [{} for _ in range(BUCKETS)]
    by_lower: dict[str, str] = {}
    for number, (info, (start, end)) in enumerate(zip(entries, spans, strict=True)):
        lower = info.model.lower()
        buckets[_bucket_of(lower)].setdefault(lower, []).append([number, start, end])
        by_lower[lower] = info.model
    body: list[bytes] = []
    offsets = [0]
    for bucket in buckets:
        body.append(json.dumps(bucket, separators=(",", ":")).encode())
        offsets.append(offsets[-1] + len(body[-1]))
    names = "\n".join(by_lower[lower] for lower in sorted(by_lower)).encode(
        "utf-8", "surrogatepass"
    )
    header = {
        "format": _FORMAT,
        "sha256": sha256,
        "entries": len(entries),
        "offsets": offsets,
        "names": [offsets[-1], offsets[-1] + len(names)],
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + b"".join(body) + names


def _write(path: Path, data: bytes) -> None:
    """Write the index atomically; a failure only costs the next process a full parse. Like
    the cached documents, the temporary is ``.<name>.<host>-<pid>-<hex>.tmp`` (so the one a
    killed writer leaves is removed with theirs) with mode 0666 minus the umask (readable by
    a group-shared cache's other users)."""
    tmp = path.with_name(f".{path.name}.{owner_tag(default_host_id())}.tmp")
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(tmp, flags, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("could not write the manifest index %s: %s", path, exc)


def index_in_child(data: bytes, source: str) -> bytes | None:
    """Validate the manifest ``data`` and build its index in a child process; the index's
    bytes, or ``None`` when this process must parse it itself (no usable child, or a valid
    manifest that is not UTF-8). Raises :class:`ManifestError` when the manifest is invalid.

    Choice: a child process, not a thread. Parsing a big manifest makes hundreds of thousands
    of objects; even in a worker thread the garbage collector's full passes over them hold
    the GIL, and an async service's event loop froze 0.6-0.9 s during the first ``aload`` of
    a 58 MiB manifest. The child (``sys.executable -I``: no user site, no environment-driven
    imports; see :mod:`.index_child`) returns only the index, a few MB; the hub then parses
    just the entries it looks up. Not ``multiprocessing``: its ``spawn`` and ``forkserver``
    start methods re-import the application's ``__main__``, which a library must not do. A
    frozen application (or an embedding one without ``sys.executable``) has no interpreter to
    start, so it keeps the in-process parse, as it does when the child fails in any way.
    """
    if getattr(sys, "frozen", False) or not sys.executable:
        return None
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _BOOTSTRAP, _PACKAGE_ROOT, source],
            input=data,
            capture_output=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("could not index the manifest %s in a child process: %s", source, exc)
        return None
    kind, _, payload = done.stdout.partition(b"\n")
    if done.returncode != 0 or kind not in (b"index", b"invalid", b"plain"):
        tail = done.stderr[-500:].decode("utf-8", "replace")
        log.debug("the manifest child for %s failed (%s): %s", source, done.returncode, tail)
        return None
    if kind == b"invalid":
        raise ManifestError(payload.decode("utf-8", "replace")[:_MAX_MESSAGE])
    return payload if kind == b"index" else None


class ManifestView:
    """A validated manifest: lookups by name (:meth:`select`) and all entries (:meth:`entries`).

    Build one with :meth:`from_bytes` (a fetched document) or :meth:`from_file` (the cached
    copy); both validate the manifest, or reuse the validation recorded by a matching index.
    """

    def __init__(
        self,
        source: str,
        *,
        entries: list[ModelInfo] | None = None,
        index: _Index | None = None,
        read: Callable[[int, int], bytes] | None = None,
        load: Callable[[], bytes] | None = None,
    ) -> None:
        self.source = source
        self._entries = entries
        self._index = index
        self._read = read
        self._load = load
        self._lock = threading.Lock()
        self._unsaved: tuple[Path, bytes] | None = None

    # -- building --------------------------------------------------------------------------
    @classmethod
    def from_bytes(
        cls, data: bytes, *, source: str, index_file: Path | None = None, defer: bool = False
    ) -> ManifestView:
        """The view of a document in memory; ``index_file`` is where its index is kept.

        With ``defer`` a new index is only written by :meth:`save_index` (the document is
        validated before it is cached, when its directory may not exist yet)."""
        if len(data) < INDEX_THRESHOLD or index_file is None:
            return cls(source, entries=parse_manifest(data, source=source))
        sha = hashlib.sha256(data).hexdigest()

        def read(start: int, end: int) -> bytes:
            return data[start:end]

        index = _Index.open(index_file, sha)
        if index is not None:
            return cls(source, index=index, read=read, load=lambda: data)
        return cls._indexed(data, source, sha, index_file, defer)

    @classmethod
    def from_file(cls, path: Path, *, source: str) -> ManifestView:
        """The view of the manifest cached at ``path`` (``OSError``, ``ManifestError``)."""
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < INDEX_THRESHOLD:
                return cls(source, entries=parse_manifest(handle.read(), source=source))
            digest = hashlib.sha256()
            while block := handle.read(_BLOCK):
                digest.update(block)
        sha = digest.hexdigest()

        def read(start: int, end: int) -> bytes:
            # the manifest is only ever replaced (a new inode), never rewritten in place;
            # a replaced one fails the name check below and the caller rebuilds the view
            with open(path, "rb") as handle:
                handle.seek(start)
                return handle.read(end - start)

        index = _Index.open(index_path(path), sha)
        if index is not None:
            return cls(source, index=index, read=read, load=path.read_bytes)
        return cls._indexed(path.read_bytes(), source, sha, index_path(path), False, read)

    @classmethod
    def _indexed(
        cls,
        data: bytes,
        source: str,
        sha: str,
        index_file: Path,
        defer: bool,
        read: Callable[[int, int], bytes] | None = None,
    ) -> ManifestView:
        """Validate ``data`` and build its index: in a child process from
        :data:`CHILD_THRESHOLD` on, else (or when no child can do it) here."""
        view: ManifestView | None = None
        if len(data) >= CHILD_THRESHOLD:
            blob = index_in_child(data, source)
            index = None if blob is None else _Index.from_blob(blob, sha)
            if blob is not None and index is not None:
                view = cls(
                    source,
                    index=index,
                    read=read or (lambda start, end: data[start:end]),
                    load=lambda: data,
                )
                view._unsaved = (index_file, blob)
        if view is None:
            entries, spans = parse_manifest_spans(data, source=source)
            view = cls(source, entries=entries)
            if spans is not None:
                view._unsaved = (index_file, build_index(entries, spans, sha))
        if not defer:
            view.save_index()
        return view

    def save_index(self) -> None:
        """Write the index built for this manifest, if one waits (blocking; failures only
        cost a later process a full parse)."""
        unsaved, self._unsaved = self._unsaved, None
        if unsaved is not None:
            _write(*unsaved)

    # -- use -------------------------------------------------------------------------------
    @property
    def parsed(self) -> bool:
        """Whether every entry is in memory (then nothing here reads or parses)."""
        return self._entries is not None

    def entries(self) -> list[ModelInfo]:
        """Every entry, in manifest order (a full parse the first time, for an indexed view)."""
        with self._lock:
            if self._entries is None:
                assert self._load is not None
                self._entries = parse_manifest(self._load(), source=self.source)
            return self._entries

    def named(self, model: str) -> list[ModelInfo] | None:
        """The entries named ``model`` (any case), in manifest order, read through the index;
        ``None`` when the index cannot answer (then use :meth:`entries`)."""
        if self._index is None or self._read is None:
            return None
        try:
            found = [
                parse_entry(self._read(start, end), number, source=self.source)
                for number, start, end in sorted(self._index.spans(model))
            ]
        except (OSError, ValueError, ManifestError, TypeError) as exc:
            log.debug("manifest index of %s not usable: %s", self.source, exc)
            self._index = None
            return None
        if any(info.model.lower() != model.lower() for info in found):
            self._index = None
            return None
        return found

    def select(self, model: str, opset: int | None = None) -> ModelInfo:
        """:func:`~asynchub._onnx.manifest.select` over this manifest."""
        if self._entries is None:
            found = self.named(model)
            if found:
                return select(found, model, opset)
            if found is not None and self._index is not None:
                try:
                    names = self._index.names()
                except (OSError, ValueError):
                    names = None
                if names is not None:
                    raise model_not_found(model, names)
        return select(self.entries(), model, opset)
