"""The child process that validates a big manifest and builds its index (see :mod:`.index`).

Run as ``python -I -c <bootstrap> <package root> <source>`` by
:func:`asynchub._onnx.index.index_in_child`, with the manifest's bytes on stdin. It writes one
line saying what it found, then the payload:

* ``index`` and the bytes of the index file (its header carries the SHA-256 of the bytes this
  process received, so a truncated transfer is seen by the parent);
* ``plain``: the manifest is valid but not UTF-8, so it cannot be indexed;
* ``invalid`` and the validation error's message (UTF-8, cut to :data:`MAX_MESSAGE`).

Choice: the garbage collector is off here. This process lives for one parse, and everything
it builds stays referenced until it exits, so a collection could only cost time (the passes
over hundreds of thousands of live objects are what froze the hub's event loop when the parse
ran in a thread of the hub's own process).
"""

from __future__ import annotations

import gc
import hashlib
import sys

from .._exceptions import ManifestError
from .index import build_index
from .manifest import parse_manifest_spans

__all__ = ["MAX_MESSAGE", "main"]

#: Longest error message sent back (characters).
MAX_MESSAGE = 2000


def main(argv: list[str] | None = None) -> int:
    """Read the manifest from stdin, answer on stdout (see the module docstring)."""
    gc.disable()
    source = (sys.argv[1:] if argv is None else argv)[-1]
    data = sys.stdin.buffer.read()
    out = sys.stdout.buffer
    try:
        entries, spans = parse_manifest_spans(data, source=source)
    except ManifestError as exc:
        out.write(b"invalid\n" + str(exc)[:MAX_MESSAGE].encode("utf-8", "replace"))
        out.flush()
        return 0
    if spans is None:
        out.write(b"plain\n")
    else:
        out.write(b"index\n" + build_index(entries, spans, hashlib.sha256(data).hexdigest()))
    out.flush()
    return 0
