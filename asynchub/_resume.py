"""Chunk bookkeeping of one download and its resume state on disk.

A file of ``size`` bytes is cut into chunks of ``chunk_size`` bytes (the last one shorter).
:class:`ChunkPlan` records, per chunk, how many bytes from its start are written to the partial
file (``os.pwrite`` returned: the bytes are in the page cache and survive the death of the
process). A chunk is finished when that count reaches its length; the *prefix* is every byte
from 0 up to the first gap, which is what the hash cursor may read.

The plan is saved beside the partial file as JSON (``<partial>.json``), written to a temporary
name and ``os.replace``-d, so a reader sees either the old or the new state, never half of one.
It is saved every ``config.state_interval`` bytes per connection (4 MiB by default: at most a
few MiB per connection are fetched twice after a SIGKILL, and at 1 GB/s that is a few hundred
small writes per second at worst, coalesced so only one is in flight), whenever a chunk
finishes, and in a shielded ``finally`` when a download stops for any reason. The state never
claims a byte before its ``pwrite`` returned. It is not fsync-ed: it only has to survive the
process, not the machine (and a wrong claim is caught by the final SHA-256 anyway).

A later run adopts a partial only if its state names the same SHA-256, size and chunk size and
the partial has the full preallocated size; anything else beside the final file is an orphan
and is deleted (by the holder of the file's lock).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._cache import PARTIAL_SUFFIX, partials_for, remove_quietly, state_path

__all__ = ["STATE_VERSION", "ChunkPlan", "ResumeState", "find_resumable", "save_state"]

log = logging.getLogger("asynchub")

STATE_VERSION = 1


class ChunkPlan:
    """Per-chunk written counts, claims by workers, and the contiguous finished prefix."""

    def __init__(self, size: int, chunk_size: int, written: list[int] | None = None) -> None:
        if size < 0 or chunk_size < 1:
            raise ValueError("size must be >= 0 and chunk_size >= 1")
        self.size = size
        self.chunk_size = chunk_size
        self.count = -(-size // chunk_size)
        self.written = list(written) if written is not None else [0] * self.count
        if len(self.written) != self.count:
            raise ValueError("written has the wrong number of chunks")
        for index, n in enumerate(self.written):
            if not 0 <= n <= self.length(index):
                raise ValueError(f"chunk {index} claims {n} bytes written")
        self.claimed: set[int] = set()
        self._first_open = 0

    def bounds(self, index: int) -> tuple[int, int]:
        """``(start, end)`` of chunk ``index``, end exclusive."""
        start = index * self.chunk_size
        return start, min(self.size, start + self.chunk_size)

    def length(self, index: int) -> int:
        start, end = self.bounds(index)
        return end - start

    def is_done(self, index: int) -> bool:
        return self.written[index] >= self.length(index)

    def next_offset(self, index: int) -> int:
        """The first byte of chunk ``index`` not yet written."""
        return index * self.chunk_size + self.written[index]

    def claim_next(self) -> int | None:
        """The lowest unfinished chunk no worker holds, now held by the caller."""
        for index in range(self._first_open, self.count):
            if index not in self.claimed and not self.is_done(index):
                self.claimed.add(index)
                return index
        return None

    def release(self, index: int) -> None:
        self.claimed.discard(index)

    def add(self, index: int, nbytes: int) -> None:
        """``nbytes`` more bytes of chunk ``index`` are written."""
        if self.written[index] + nbytes > self.length(index):
            raise ValueError(f"chunk {index} would overflow")
        self.written[index] += nbytes

    @property
    def prefix(self) -> int:
        """Bytes from offset 0 up to the first byte not yet written."""
        while self._first_open < self.count and self.is_done(self._first_open):
            self._first_open += 1
        if self._first_open >= self.count:
            return self.size
        return self.next_offset(self._first_open)

    @property
    def done_bytes(self) -> int:
        return sum(self.written)

    @property
    def complete(self) -> bool:
        return self.prefix >= self.size

    def unclaimed_open(self) -> int:
        """How many unfinished chunks no worker holds."""
        return sum(
            1
            for index in range(self._first_open, self.count)
            if index not in self.claimed and not self.is_done(index)
        )

    def reset(self, chunk_size: int) -> None:
        """Start over with nothing written (claims are kept by their holders)."""
        self.chunk_size = chunk_size
        self.count = -(-self.size // chunk_size)
        self.written = [0] * self.count
        self._first_open = 0


@dataclass
class ResumeState:
    """What a later run needs to continue a partial file."""

    sha256: str
    size: int
    chunk_size: int
    written: list[int]
    url: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        lengths = ChunkPlan(self.size, self.chunk_size)
        finished = [i for i, n in enumerate(self.written) if n >= lengths.length(i)]
        partial = {str(i): n for i, n in enumerate(self.written) if 0 < n < lengths.length(i)}
        return json.dumps(
            {
                "version": STATE_VERSION,
                "sha256": self.sha256,
                "size": self.size,
                "chunk_size": self.chunk_size,
                "url": self.url,
                "etag": self.etag,
                "last_modified": self.last_modified,
                "finished": finished,
                "partial": partial,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ResumeState:
        """Parse a state file; ``ValueError`` (or ``KeyError``/``TypeError``) if malformed."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError("unknown resume state version")
        size, chunk_size = data["size"], data["chunk_size"]
        if not (isinstance(size, int) and isinstance(chunk_size, int)):
            raise ValueError("size and chunk_size must be integers")
        plan = ChunkPlan(size, chunk_size)
        written = [0] * plan.count
        for index in data["finished"]:
            written[int(index)] = plan.length(int(index))
        for key, n in dict(data["partial"]).items():
            if not isinstance(n, int):
                raise ValueError("partial counts must be integers")
            written[int(key)] = n
        ChunkPlan(size, chunk_size, written)  # validates every count
        return cls(
            sha256=str(data["sha256"]),
            size=size,
            chunk_size=chunk_size,
            written=written,
            url=data.get("url"),
            etag=data.get("etag"),
            last_modified=data.get("last_modified"),
        )


def save_state(partial: Path, state: ResumeState) -> None:
    """Write the state of ``partial`` atomically (tmp + ``os.replace``). Blocking."""
    target = state_path(partial)
    tmp = target.with_name(f"{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(state.to_json())
        os.replace(tmp, target)
    except BaseException:
        remove_quietly(tmp)
        raise


def _load(partial: Path) -> ResumeState | None:
    try:
        return ResumeState.from_json(state_path(partial).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def find_resumable(
    final: Path, *, sha256: str, size: int, chunk_size: int, clean: bool
) -> tuple[Path, ResumeState] | None:
    """The best partial of ``final`` to continue (most bytes written), if any.

    With ``clean`` (the caller holds the file's lock) every other partial, orphan state file
    and stale temporary state beside ``final`` is deleted. Blocking.
    """
    best: tuple[Path, ResumeState] | None = None
    rejected: list[Path] = []
    for partial in partials_for(final):
        state = _load(partial)
        usable = (
            state is not None
            and state.sha256 == sha256.lower()
            and state.size == size
            and state.chunk_size == chunk_size
        )
        with contextlib.suppress(OSError):
            usable = usable and partial.stat().st_size == size
        if not usable or state is None:
            rejected.append(partial)
            continue
        if best is None or sum(state.written) > sum(best[1].written):
            if best is not None:
                rejected.append(best[0])
            best = (partial, state)
        else:
            rejected.append(partial)
    if clean:
        for partial in rejected:
            log.debug("removing stale partial download %s", partial)
            remove_quietly(partial, state_path(partial))
        _remove_orphan_states(final)
    return best


def _remove_orphan_states(final: Path) -> None:
    prefix = final.name + "."
    with contextlib.suppress(OSError):
        for entry in os.scandir(final.parent):
            name = entry.name
            if not name.startswith(prefix):
                continue
            if name.endswith(".tmp") and PARTIAL_SUFFIX in name:
                remove_quietly(Path(entry.path))
            elif name.endswith(PARTIAL_SUFFIX + ".json"):
                partial = Path(entry.path[: -len(".json")])
                if not partial.exists():
                    remove_quietly(Path(entry.path))
