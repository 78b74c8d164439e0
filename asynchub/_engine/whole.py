"""Files without a size: one plain ``GET`` per try, hashed as it is written.

Used for empty files and for files of unknown size whose server tells no size either (the
engine's ranged probe got a ``200`` without ``Content-Length``, or a ``416``); a file of
unknown size whose server answers the probe with a ``206`` is chunked like any other. Without a
size there is no chunk plan and no resume: each try truncates the partial file and reads the
whole body again. Writes go through the same bounded pieces as chunked downloads,
and each piece is hashed in the same worker-thread call that writes it.

Each try is watched like a file range (:mod:`asynchub._engine.watchdog`: a slow-but-alive
server is cut and the try counts against the retry budget) once it holds a connection token,
and a body longer than ``config.max_learned_size`` (the cap on sizes a server announces for a
file of unknown size) is cut there: that mirror is abandoned (:class:`WrongMirror`).
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
from .ranged import PIECE, STATE_PERIOD, Context, pwrite_all
from .retry import Retrier, WrongMirror, retry_call, status_failure
from .watchdog import Watched, run_watched

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

    async def once() -> tuple[int, str, str]:
        async with ctx.limiter, ctx.host_slot(url):  # waiting for a connection is not watched
            return await run_watched(
                lambda watched: _stream_whole_once(ctx, name, url, fd, watched),
                config=ctx.config,
                url=url,
                sleep=ctx.sleep,
                clock=ctx.clock,
                min_rate=ctx.min_rate,
            )

    return await retry_call(once, retrier)


async def _stream_whole_once(
    ctx: Context, name: str, url: str, fd: int, watched: Watched
) -> tuple[int, str, str]:
    await anyio.to_thread.run_sync(os.ftruncate, fd, 0)
    digest = hashlib.sha256()
    offset = 0
    cap = ctx.config.max_learned_size
    async with ctx.transport.request(url) as response:
        final = response.url
        watched.saw(0, ctx.clock())
        if response.status != 200:
            raise status_failure(response.status, response.headers, final, name)
        declared = response.content_length
        if declared is not None and declared > cap:
            raise WrongMirror(
                f"{final} announced {declared} bytes for {name}, more than the "
                f"{cap} accepted for a file of unknown size (max_learned_size)",
                url=final,
            )
        buffers: list[bytes] = []
        buffered = 0
        flushed = ctx.clock()
        async for data in response.iter_chunks(PIECE):
            buffers.append(data)
            buffered += len(data)
            watched.saw(len(data), ctx.clock())
            if offset + buffered > cap:
                raise WrongMirror(
                    f"{final} sent more than the {cap} bytes accepted for {name}, a file of "
                    "unknown size (max_learned_size); its body has no end in sight",
                    url=final,
                )
            if ctx.bucket is not None and await ctx.bucket.take(len(data)):
                watched.paused(ctx.clock())
            if buffered >= PIECE or ctx.clock() - flushed >= STATE_PERIOD:
                flushed = ctx.clock()
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
