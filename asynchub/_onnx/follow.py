"""Parse a model while it downloads: a follower of the verified prefix (used by ``load``).

``load`` used to parse after the download: a 1 GiB model of many tensors then cost its whole
parse (~1 s here) after the last byte. :class:`ParseFollower` is handed to the engine with the
file's job (``FileJob.follower``; ``load`` does so when the process has a core to spare, see
``PARSE_WHILE_DOWNLOADING`` in ``_hub/client.py``: on 2 cores the parse only competed with a
CPU-bound download); the engine runs :meth:`ParseFollower.follow` beside the
download, and it parses each complete protobuf field of the file as soon as the hash cursor has
passed it: large initializers one by one (``os.pread``, GIL released, then one
``MergeFromString``, as :mod:`.parse` does), small fields in batches of at most
:data:`~.parse.SPLIT_BYTES`. When the download is verified, :meth:`ParseFollower.finish` parses
what is left from the final file and returns the model.

Why it equals ``onnx.load(path)``: parsing a concatenation of protobuf fields is the same as
merging them one after the other (later scalars win, repeated fields append in order, a
message field that appears again merges into the first), and the follower merges every field
of the file exactly once, in file order; a slice of the ``graph`` field is merged as a
``graph`` field of its own, and a large initializer as a new element of
``graph.initializer``.

Safety: the follower only reads bytes the hash cursor has passed (written and final), and
nothing it builds is returned unless the engine verified the whole file: ``finish`` is called
with the path the engine returns, and a hash mismatch raises before it. If the cursor was reset
(the file changed on the server, another mirror served other bytes) since the follower read,
or anything in the file looks unusual, the follower's work is dropped and ``finish`` parses the
verified file from scratch with :func:`.parse.load_model`. It never raises into the engine.

Cost: the same reads and copies as :func:`.parse.load_model`, done while the network and the
hash work; the model stack is imported by the first step, in a worker thread.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .parse import SPLIT_BYTES, encode_varint

if TYPE_CHECKING:
    import onnx

    from .._engine.hashing import HashCursor

__all__ = ["STEP", "ParseFollower"]

log = logging.getLogger("asynchub")

#: The follower parses when at least this many new bytes were verified (or at the end).
STEP = 8 * 1024 * 1024

_GRAPH = 7  # ModelProto.graph
_INITIALIZER = 5  # GraphProto.initializer
_LEN = 2
_GRAPH_KEY = bytes([(_GRAPH << 3) | _LEN])
_WINDOW = 64 * 1024  # bytes read at once to decode field headers


class _Unusual(ValueError):
    """Something the follower does not handle: parse the verified file in one go instead."""


class _Headers:
    """Decodes field headers of a file through a small cached window."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.start = 0
        self.data = b""

    def byte(self, offset: int) -> int:
        if not self.start <= offset < self.start + len(self.data):
            self.start, self.data = offset, os.pread(self.fd, _WINDOW, offset)
            if not self.data:
                raise _Unusual("the file ended inside a field header")
        return self.data[offset - self.start]

    def varint(self, offset: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = self.byte(offset)
            offset += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, offset
            shift += 7
            if shift > 63:
                raise _Unusual("varint too long")

    def field(self, offset: int) -> tuple[int, int, int, int]:
        """``(field number, wire type, body start, end)`` of the field at ``offset``."""
        key, after = self.varint(offset)
        wire = key & 7
        if wire == 0:
            return key >> 3, wire, after, self.varint(after)[1]
        if wire == 1:
            return key >> 3, wire, after, after + 8
        if wire == 5:
            return key >> 3, wire, after, after + 4
        if wire == _LEN:
            length, body = self.varint(after)
            return key >> 3, wire, body, body + length
        raise _Unusual(f"wire type {wire}")


class ParseFollower:
    """Builds the ``ModelProto`` of a file from its verified prefix (see the module
    docstring). One per ``load`` call."""

    def __init__(self) -> None:
        self.model: onnx.ModelProto | None = None
        self.generation = 0
        self.pos = 0  # every field before it is merged
        self.graph_end: int | None = None  # inside the graph field up to there
        self.failed = False
        self.final_generation: int | None = None

    # -- on the event loop: beside the download -----------------------------------------------
    async def follow(self, fd: int, cursor: HashCursor) -> None:
        """Parse as the verified prefix grows; runs until the engine cancels it."""
        try:
            while not self.failed:
                if cursor.generation != self.generation:
                    self._restart(cursor.generation)
                verified = cursor.hashed
                if verified - self.pos >= STEP:
                    await anyio.to_thread.run_sync(self._step, fd, verified, cursor.generation)
                else:
                    await cursor.moved()
        finally:
            self.final_generation = cursor.generation

    def _restart(self, generation: int) -> None:
        self.model, self.generation, self.pos, self.graph_end = None, generation, 0, None

    def _step(self, fd: int, limit: int, generation: int) -> None:
        if generation != self.generation:
            return
        try:
            self._parse(fd, limit)
        except Exception as exc:  # never into the engine: finish() parses the file instead
            log.debug("parsing while downloading stopped (%s); parsing after instead", exc)
            self.failed = True

    # -- in a worker thread: after the download ------------------------------------------------
    def finish(self, path: Path) -> onnx.ModelProto:
        """The model of the verified file at ``path`` (blocking: call it in a worker thread)."""
        from .parse import load_model

        usable = (
            not self.failed
            and self.model is not None
            and (self.final_generation is None or self.final_generation == self.generation)
        )
        if not usable:
            return load_model(path)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                self._parse(handle.fileno(), size)
                if self.pos != size or self.graph_end is not None:
                    raise _Unusual("the last field overruns the file")
        except Exception as exc:
            log.debug("parsing %s in one piece (%s)", path, exc)
            return load_model(path)
        from onnx.external_data_helper import load_external_data_for_model

        model = self.model
        assert model is not None
        load_external_data_for_model(model, os.path.dirname(path))
        return model

    # -- the parser ----------------------------------------------------------------------------
    def _parse(self, fd: int, limit: int) -> None:
        """Merge every complete field that ends at or before ``limit``."""
        if self.model is None:
            import onnx  # the model stack: first imported here, in a worker thread

            self.model = onnx.ModelProto()
        model = self.model
        headers = _Headers(fd)
        batch_start = batch_end = self.pos
        batch_in_graph = self.graph_end is not None

        def flush() -> None:
            nonlocal batch_start
            if batch_end > batch_start:
                data = os.pread(fd, batch_end - batch_start, batch_start)
                if len(data) != batch_end - batch_start:
                    raise _Unusual("the file is shorter than its verified prefix")
                if batch_in_graph:
                    data = _GRAPH_KEY + encode_varint(len(data)) + data
                model.MergeFromString(data)
            batch_start = batch_end

        while True:
            if self.graph_end is not None and self.pos == self.graph_end:
                flush()
                self.graph_end = None
                batch_start = batch_end = self.pos
                batch_in_graph = False
                continue
            if self.pos >= limit:
                break
            number, wire, body, end = headers.field(self.pos)
            if self.graph_end is None and number == _GRAPH and wire == _LEN:
                flush()  # the graph's own fields are merged as slices of a graph field
                self.graph_end = end
                self.pos = batch_start = batch_end = body
                batch_in_graph = True
                continue
            if self.graph_end is not None and end > self.graph_end:
                raise _Unusual("a graph field overruns the graph")
            if end > limit:
                break
            if self.graph_end is not None and number == _INITIALIZER and end - body >= SPLIT_BYTES:
                flush()
                data = os.pread(fd, end - body, body)
                if len(data) != end - body:
                    raise _Unusual("the file is shorter than its verified prefix")
                model.graph.initializer.add().MergeFromString(data)
                del data
                self.pos = batch_start = batch_end = end
                continue
            if end - batch_start > SPLIT_BYTES:
                flush()
            self.pos = batch_end = end
        flush()

    @staticmethod
    def describe(model: Any) -> str:  # pragma: no cover - debugging aid
        return f"{len(model.graph.initializer)} initializers"
