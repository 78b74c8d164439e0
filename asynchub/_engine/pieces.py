"""The pieces of one answer's body on their way into the file: read as they arrive, cut to the
range they belong to, and handed back to the transport once written.

* :func:`body_pieces`: the transport's own buffers when it lends them (no copy in Python, or
  the bytes it kept in the kernel), else ``bytes``.
* :func:`trim`: the part of some pieces that falls inside a range whose ends moved (a split).
* :func:`give_back`: lent buffers go back to their connection, which reuses them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from .._transport.base import BufferedResponse, Piece, Response
from .context import Chunk

__all__ = ["body_pieces", "give_back", "trim"]


async def body_pieces(
    response: Response, lender: BufferedResponse | None, size: int
) -> AsyncGenerator[tuple[Chunk, Piece | None], None]:
    """The body as it arrives, with the loan to give back for each piece (``None`` for bytes
    the caller owns): the buffers of ``lender`` (``response`` itself, if it lends them), else
    ``bytes`` read ``size`` at a time."""
    if lender is not None:
        async for piece in lender.iter_pieces():
            spliced = piece.spliced
            yield (piece.view if spliced is None else spliced), piece
    else:
        async for data in response.iter_chunks(size):
            yield data, None


def trim(chunks: list[Chunk], offset: int, first: int, end: int) -> list[Chunk]:
    """The bytes of ``chunks`` (from ``offset``) in ``[first, end)``: memory is sliced, a
    spliced chunk cut at its end keeps its head spliced (the 60-model prefetch read ~33 such
    pipes into memory on the loop), one cut at its start is read out of its pipe."""
    kept: list[Chunk] = []
    at = offset
    for chunk in chunks:
        size = len(chunk)
        low, high = max(first - at, 0), min(end - at, size)
        at += size
        if high <= low:
            continue
        if low == 0 and high == size:
            kept.append(chunk)
        elif low == 0 and not isinstance(chunk, (bytes, memoryview)):
            kept.append(chunk.head(high))
        else:
            data = chunk if isinstance(chunk, (bytes, memoryview)) else chunk.read()
            kept.append(memoryview(data)[low:high])
    return kept


def give_back(lent: list[Piece]) -> None:
    """Release every loan in ``lent`` (emptied)."""
    for loan in lent:
        loan.release()
    lent.clear()
