"""Parse a cached ``.onnx`` file into a ``ModelProto`` in short GIL-holding steps.

Why: protobuf's parser (upb, the C implementation behind ``onnx.load``) holds the GIL for the
whole ``ParseFromString`` call, and most of that time is one copy of every byte of the file
into freshly allocated (page-faulting) memory: about 0.35-0.5 ms per MB on a 2-core VM,
i.e. 90-250 ms for a 256 MB model. Run in a worker thread, that still freezes the event loop,
because the loop thread cannot get the GIL back until the call returns.

How: :func:`load_model` parses the file as a *skeleton* in which every large graph
initializer (at least :data:`SPLIT_BYTES`) is replaced by an empty placeholder, then merges
each initializer's own bytes into its placeholder, one ``MergeFromString`` per tensor, straight
from the file's read-only mapping: protobuf copies them once, into the model, with no
intermediate ``bytes`` (reading each tensor with ``os.pread`` first cost a second copy and a
second set of fresh pages: 1.1 s against 0.62 s for one 1 GiB tensor here). A cache file is
never changed in place (only replaced by a rename, or unlinked), so the mapping stays valid
while it is read. The GIL can change hands between the steps, so the longest stretch the
event loop can wait is one copy of the largest tensor instead of one copy of the whole file.
The result equals ``onnx.load(path)``: same fields, same initializer order (protobuf merges
repeated occurrences of a message field and appends repeated fields in order, which is what
the skeleton relies on), external data loaded the same way.

Limits (measured, see ``benchmarks/results/loop_lag.md``): a single huge tensor is still one
copy under the GIL (protobuf offers no way to fill a bytes field piecewise or without copying).
Anything unusual in the wire format (groups, a truncated file) falls back to ``onnx.load``,
which raises the usual error.
"""

from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

__all__ = ["SPLIT_BYTES", "encode_varint", "load_model"]

log = logging.getLogger("asynchub")

#: Initializers at least this large are parsed on their own (a 1 MiB copy takes ~0.4 ms).
SPLIT_BYTES = 1024 * 1024

_GRAPH_FIELD = 7  # ModelProto.graph
_INITIALIZER_FIELD = 5  # GraphProto.initializer
_LENGTH_DELIMITED = 2
_PLACEHOLDER = bytes([(_INITIALIZER_FIELD << 3) | _LENGTH_DELIMITED, 0])
#: The file mapped read-only, its pages faulted in by the ``mmap`` call (which releases the
#: GIL), not one by one during a merge (which holds it).
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


class _Unusual(ValueError):
    """The wire format has something the splitter does not handle; use onnx.load."""


def _varint(buf: mmap.mmap, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        try:
            byte = buf[pos]
        except IndexError:
            raise _Unusual("truncated varint") from None
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Unusual("varint too long")


def encode_varint(value: int) -> bytes:
    """``value`` as a protobuf varint (also used by :mod:`.follow`)."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _field_end(buf: mmap.mmap, pos: int, wire_type: int) -> int:
    """The end of a field's value starting at ``pos`` (after its key)."""
    if wire_type == 0:
        return _varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 5:
        return pos + 4
    if wire_type == _LENGTH_DELIMITED:
        length, start = _varint(buf, pos)
        return start + length
    raise _Unusual(f"wire type {wire_type}")


def _split(buf: mmap.mmap) -> tuple[bytes, list[tuple[int, int, int]]]:
    """The skeleton, and ``(initializer index, offset, length)`` of every large initializer."""
    size = len(buf)
    parts: list[bytes] = []
    large: list[tuple[int, int, int]] = []
    index = 0
    pos = copied = 0
    while pos < size:
        key, after_key = _varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        end = _field_end(buf, after_key, wire_type)
        if field == _GRAPH_FIELD and wire_type == _LENGTH_DELIMITED:
            start = _varint(buf, after_key)[1]
            graph: list[bytes] = []
            kept = cursor = start
            while cursor < end:
                inner_key, inner_after = _varint(buf, cursor)
                inner_end = _field_end(buf, inner_after, inner_key & 7)
                if inner_key == (_INITIALIZER_FIELD << 3) | _LENGTH_DELIMITED:
                    length, body = _varint(buf, inner_after)
                    if length >= SPLIT_BYTES:
                        graph += [buf[kept:cursor], _PLACEHOLDER]
                        large.append((index, body, length))
                        kept = inner_end
                    index += 1
                cursor = inner_end
            if cursor != end:
                raise _Unusual("a graph field overruns its length")
            graph.append(buf[kept:end])
            body_bytes = b"".join(graph)
            parts += [buf[copied:pos], buf[pos:after_key], encode_varint(len(body_bytes))]
            parts.append(body_bytes)
            copied = end
        pos = end
    if pos != size:
        raise _Unusual("the last field overruns the file")
    parts.append(buf[copied:size])
    return b"".join(parts), large


def load_model(path: Path) -> onnx.ModelProto:
    """``onnx.load(path)``, with the GIL released between tensors (blocking: call it in a
    worker thread). The model stack (onnx, numpy, protobuf) is imported here, on first use,
    so importing this module costs nothing."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    try:
        with open(path, "rb") as handle:
            fd = handle.fileno()
            if os.fstat(fd).st_size < SPLIT_BYTES:
                return onnx.load(str(path))
            with mmap.mmap(fd, 0, flags=_MAP_FLAGS, prot=mmap.PROT_READ) as buf:
                skeleton, large = _split(buf)
                model = onnx.ModelProto()
                model.ParseFromString(skeleton)
                with memoryview(buf) as whole:
                    for index, offset, length in large:
                        with whole[offset : offset + length] as tensor:
                            model.graph.initializer[index].MergeFromString(tensor)
    except _Unusual as exc:
        log.debug("parsing %s in one piece (%s)", path, exc)
        return onnx.load(str(path))
    load_external_data_for_model(model, os.path.dirname(path))
    return model
