"""Files without a size: one plain ``GET`` per try, hashed as it is written.

Used for empty files and for files of unknown size whose server tells no size either (the
engine's ranged probe got a ``200`` without ``Content-Length``, or a ``416``); a file of
unknown size whose server answers the probe with a ``206`` is chunked like any other. Without a
size there is no chunk plan and no resume: each try truncates the partial file and reads the
whole body again. Writes go through the same bounded pieces as chunked downloads,
and each piece is hashed in the same worker-thread call that writes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import anyio
import anyio.to_thread

from .._exceptions import TransferError
from .._progress.events import ProgressEvent
from .ranged import PIECE, Context, pwrite_all
from .retry import Retrier, retry_call, status_failure

__all__ = ["stream_whole"]

log = logging.getLogger("asynchub")


def _write_and_hash(fd: int, buffers: list[bytes], offset: int, digest: Any) -> None:
    pwrite_all(fd, buffers, offset)
    for data in buffers:
        digest.update(data)


async def stream_whole(ctx: Context, name: str, url: str, fd: int) -> tuple[int, str, str]:
    """Fetch ``url`` as one plain stream into ``fd`` from offset 0, hashing as it is written
    (for files of unknown size; a failed try starts over). Returns (size, sha256, final URL)."""
    retrier = Retrier(ctx.config.retry, ctx.sleep, name, ctx.notify_retry(name))
    return await retry_call(lambda: _stream_whole_once(ctx, name, url, fd), retrier)


async def _stream_whole_once(ctx: Context, name: str, url: str, fd: int) -> tuple[int, str, str]:
    await anyio.to_thread.run_sync(os.ftruncate, fd, 0)
    digest = hashlib.sha256()
    offset = 0
    async with ctx.limiter, ctx.transport.request(url) as response:
        final = response.url
        if response.status != 200:
            raise status_failure(response.status, response.headers, final, name)
        declared = response.content_length
        buffers: list[bytes] = []
        buffered = 0
        async for data in response.iter_chunks(PIECE):
            buffers.append(data)
            buffered += len(data)
            if ctx.bucket is not None:
                await ctx.bucket.take(len(data))
            if buffered >= PIECE:
                await anyio.to_thread.run_sync(_write_and_hash, fd, buffers, offset, digest)
                offset += buffered
                ctx.emit(ProgressEvent("transfer", name, nbytes=buffered))
                ctx.emit(ProgressEvent("verified", name, nbytes=buffered))
                buffers, buffered = [], 0
        if buffers:
            await anyio.to_thread.run_sync(_write_and_hash, fd, buffers, offset, digest)
            offset += buffered
            ctx.emit(ProgressEvent("transfer", name, nbytes=buffered))
            ctx.emit(ProgressEvent("verified", name, nbytes=buffered))
        if declared is not None and offset != declared:
            raise TransferError(f"{final} sent {offset} of {declared} bytes", url=final)
    log.info("%s: downloaded from %s", name, final)
    return offset, digest.hexdigest(), final
