"""Progress events. The engine emits them; adapters (tqdm bars in the CLI) render them.

A callback receives :class:`ProgressEvent` values and must be quick: it runs on the event loop
thread. Totals are fixed when a file is planned; bytes *transferred* and bytes *verified*
(hashed) are counted apart, so a consumer can show both.

========== ============================================================================
kind       meaning
========== ============================================================================
planned    a file will be fetched; ``total`` is its size in bytes (``None`` if unknown)
resumed    ``nbytes`` of the file were already on disk from an earlier run
transfer   ``nbytes`` more bytes arrived from the network
verified   ``nbytes`` more bytes were hashed (the hash cursor advanced)
retry      a request failed and is retried; ``message`` says why
cached     the file was already in the cache and verified; nothing was fetched
done       the file is verified and committed at ``path``; ``mirror`` served it
failed     the file failed; ``message`` says why
========== ============================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["EventKind", "ProgressCallback", "ProgressEvent"]

EventKind = Literal[
    "planned", "resumed", "transfer", "verified", "retry", "cached", "done", "failed"
]


@dataclass(frozen=True)
class ProgressEvent:
    """One thing that happened to one file (``name`` is its manifest path)."""

    kind: EventKind
    name: str
    nbytes: int = 0
    total: int | None = None
    path: Path | None = None
    mirror: str | None = None
    message: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]
