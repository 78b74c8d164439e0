"""One file from one mirror into its partial file: probe, parallel Range chunks, strict HTTP,
retries from the last byte, a stall watchdog, and the resume state.

How a mirror is used (:meth:`FileDownload.run_mirror`):

1. **Probe.** The first request to a mirror is an ordinary chunk request for the first missing
   chunk (``Range: bytes=0-<chunk_size-1>`` for a fresh file, never ``HEAD``). Its
   ``Content-Range`` total must equal the expected size, else the mirror serves another file
   (:class:`WrongMirror`, next mirror). Its strong ``ETag`` and ``Last-Modified`` are recorded,
   and its final URL (after redirects) is reused by every later request. A probe answered
   ``200`` switches the file to a single stream: that 200 body is read to the end. For a file
   of unknown size, a ``206`` tells the size (then planned like any other), a ``200`` without
   ``Content-Length`` or a ``416`` raises :class:`Unranged` (the engine streams it instead).
2. **Chunks.** Then up to ``max_connections`` workers take ranges from the
   :class:`~asynchub._engine.schedule.Scheduler` (lowest offset first, tapering, work stealing: a
   holder stops at the split point). Each worker holds one token of the engine's shared
   ``anyio.CapacityLimiter`` while its file has work left (a file that started first keeps its
   connections, so files finish one after the other), including while it backs off.
3. **Strict HTTP.** Every 206 ``Content-Range`` is checked against what was asked (start, end,
   total); a ``Content-Length`` longer than the range is refused, a shorter one (a short 206)
   is accepted and the rest asked again; bytes past the range are never written; a
   ``multipart/byteranges`` answer is refused. No ``If-Range`` is sent and a different
   ``ETag`` or ``Last-Modified`` is not a reason to discard bytes (load-balanced backends
   disagree on validators for the same bytes; the SHA-256 verifies the file end to end and a
   real change of content fails it). A 200 to a range request mid-download (a CDN ignoring
   Range now and then) is retried like any protocol slip. A different total size, 412 or 416
   means the file changed on the server: the file restarts from scratch
   (:data:`MAX_RESTARTS` times at most).
4. **Retries.** Connection and payload errors, stalls, protocol slips, 408/425/429/5xx are
   retried from the last byte written, after ``config.retry.delay(attempt, retry_after)``; the
   budget is given back only once failed tries wrote :data:`MEANINGFUL` bytes of the range
   (1 MiB, or a quarter of the range), never after a stall, so a server that sends a few bytes
   and resets or stalls, forever, exhausts the budget and the next mirror is tried. 403/410
   from a redirected (signed) URL resolves the original URL again at once. Other statuses
   (401, 404, 410, ...) fail the mirror.
5. **Watchdog.** A per-file task checks every active request every ``min(stall_timeout,
   rate_window) / 4`` seconds: no byte for ``stall_timeout`` s, or fewer than ``min_rate``
   bytes/s over ``rate_window`` s, cancels the request, whose remaining range is asked again on
   a fresh connection. Time spent waiting for the bandwidth cap does not count as slow. The
   watchdog waits with the engine's injected ``sleep`` and measures with its ``clock``; tests
   that fake time should set ``min_rate=0``, which turns it off (a dead connection is then
   still caught by the transport's ``stall_timeout`` read timeout).

Memory is bounded whatever the file size: a connection buffers at most :data:`PIECE` (1 MiB,
or ``state_interval`` if smaller) before writing it with ``os.pwritev`` in a worker thread;
the pieces queued by all connections while a write is under way go to the thread as one batch,
and the bytes next in order are hashed there from memory (:mod:`.batch`).

What a SIGKILL costs is bounded by time as well as by bytes, whatever the connection count: a
connection writes what it holds at least every :data:`STATE_PERIOD` (0.25 s) even before its
piece is full, and the resume state is saved within the period after any write, or as soon as
``state_interval`` bytes were written across all connections of the file (:mod:`.saver`). So
the bytes received but not recorded at any moment are at most about 0.5 s of transfer (one
period in buffers, one in the state) or ``state_interval`` plus one piece per connection,
whichever is smaller: with 40 connections at 25 MB/s, a kill costs ~0.5 s of transfer, not the
~160 MB of a per-connection byte threshold.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel

from .._exceptions import (
    HubError,
    ProtocolError,
    StallError,
    TransferError,
)
from .._progress.events import ProgressEvent
from .._transport.base import BufferedResponse, Piece, Response
from .._transport.errors import host_port
from .adaptive import Widener
from .answers import Restart, Unranged, collapse_group, parse_content_range, strong_etag
from .batch import BatchWriter, WriteQueue
from .context import Active, Chunk, Context, pwrite_all
from .hashing import HashCursor
from .pieces import body_pieces, give_back, trim
from .resume import ChunkPlan, ResumeState
from .retry import (
    Retrier,
    RetryableStatus,
    RetryNow,
    RetryWave,
    WrongMirror,
    retryable,
    status_failure,
)
from .saver import STATE_PERIOD, StateSaver
from .schedule import HASH_RATE, Scheduler
from .watchdog import poll_interval

__all__ = [
    "MAX_RESTARTS",
    "PIECE",
    "SPLICE_WIDTH",
    "STATE_PERIOD",
    "Context",
    "FileDownload",
    "Restart",
    "RetryableStatus",
    "Unranged",
    "WrongMirror",
    "collapse_group",
    "parse_content_range",
    "pwrite_all",
    "retryable",
]

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger("asynchub")

PIECE = 1024 * 1024
MAX_RESTARTS = 3
#: A failed try gives the retry budget back only once the tries since the last reset wrote
#: this much of their range (or a quarter of it, for a smaller range): real progress, not
#: "some bytes flowed".
MEANINGFUL = 1024 * 1024
#: Bodies spliced into the file (:mod:`asynchub._transport.splicing`), not read into memory:
#: **every one** where the hash reads the file back through maps (a new partial on a local
#: file system, :mod:`.mapped`; a splice copies once, a buffer twice, the map not at all: the
#: 60-model prefetch used 1.98 instead of 2.03 CPU-s and 68 instead of 133 MB, the big files
#: the same within the noise); elsewhere only a range that does not start at the written
#: prefix, of a file on this many connections or more (its bytes are read back anyway, while
#: bytes in order are hashed from the buffers).
SPLICE_WIDTH = 4


class FileDownload:
    """The bytes of one file, landing in ``partial`` (open as ``fd``), from one mirror at a
    time. The caller owns the file descriptor and runs :attr:`cursor` beside it."""

    def __init__(
        self,
        ctx: Context,
        *,
        name: str,
        sha256: str,
        partial: Path,
        fd: int,
        plan: ChunkPlan,
        chunk_size: int,
        resumed: ResumeState | None = None,
        mapped: bool = False,
        size_known: bool = True,
        on_size: Callable[[int], Awaitable[None]] | None = None,
        writes: WriteQueue | None = None,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.sha256 = sha256
        self.partial = partial
        self.fd = fd
        self.plan = plan
        self.chunk_size = chunk_size
        self.size_known = size_known  # else ``plan`` is the probe's provisional range
        self._on_size = on_size
        self.schedule = Scheduler(plan, connections=ctx.config.max_connections, clock=ctx.clock)
        self.cursor = HashCursor(
            fd,
            on_progress=self._on_hashed,
            threads=ctx.threads,
            mapped=mapped,
        )
        self.cursor.advance(plan.prefix)
        self._writer = BatchWriter(fd, self.cursor, threads=ctx.threads, queue=writes)
        self._state_of = resumed
        self.origin = ""
        self.url = ""
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.validated = False
        self.single = False
        self._active: set[Active] = set()
        self._retry_wave = RetryWave(ctx.clock)
        self._ignored = 0  # 200 answers to a range request (Range ignored) so far
        self._moved = 0  # bytes received in pieces (the adaptive width's measure)
        self._streams: dict[Active, BufferedResponse] = {}  # live bodies (see _received)
        self._live = 0  # workers running (or waiting for a connection token)
        self._workers_done = True
        config = ctx.config
        self._widener = Widener(config.max_connections) if config.adaptive_connections else None
        self._saver = StateSaver(
            partial,
            self.snapshot,
            complete=lambda: self.plan.complete,
            interval=ctx.config.state_interval,
            threads=ctx.threads,
        )

    # ------------------------------------------------------------------ progress and state
    def _on_hashed(self, nbytes: int) -> None:
        self.ctx.emit(ProgressEvent("verified", self.name, nbytes=nbytes, total=self.plan.size))

    def snapshot(self) -> ResumeState:
        return ResumeState(
            sha256=self.sha256,
            size=self.plan.size,
            chunk_size=self.plan.chunk_size,
            written=list(self.plan.written),
            url=self.origin or None,
            etag=self.etag,
            last_modified=self.last_modified,
            ranges=self.plan.layout(),
        )

    async def save_state(self) -> None:
        """Write the resume state now (see :mod:`.saver`)."""
        await self._saver.save()

    async def _flush(self, index: int, offset: int, buffers: list[Chunk]) -> None:
        """Write ``buffers`` (the bytes from ``offset`` on) into range ``index``: only from its
        first unwritten byte (a flush cancelled after it counted its bytes is not counted
        again) up to its end (bytes past a split point belong to another connection)."""
        nbytes = sum(map(len, buffers))
        first, end = self.plan.next_offset(index), self.plan.ends[index]
        if offset < first or offset + nbytes > end:
            offset, buffers = max(offset, first), trim(buffers, offset, first, end)
            nbytes = sum(map(len, buffers))
        if nbytes <= 0:
            return
        plan = self.plan
        await self._writer.write(offset, buffers, lambda: plan.ends[index])
        # a split while writing may have moved the end back: count only what is still ours
        # (the other connection writes the same bytes of the same validated file)
        nbytes = min(nbytes, self.plan.ends[index] - offset)
        if nbytes <= 0:
            return
        self.plan.add(index, nbytes)
        self.cursor.advance(self.plan.prefix)
        self.ctx.emit(ProgressEvent("transfer", self.name, nbytes=nbytes, total=self.plan.size))
        self._saver.wrote(nbytes)

    # ------------------------------------------------------------------ mirror level
    async def run_mirror(self, url: str) -> None:
        """Complete the partial file from ``url`` (restarting if the file changes there)."""
        if self._state_of is not None and self._state_of.url == url:
            self.etag = self._state_of.etag
            self.last_modified = self._state_of.last_modified
        else:
            self.etag = self.last_modified = None
        self._state_of = None
        restarts = 0
        while True:
            try:
                await self._run_once(url)
                return
            except Restart as exc:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise ProtocolError(
                        f"{url} changed {restarts} times during the download ({exc}); "
                        "try again later or use another mirror",
                        url=url,
                    ) from None
                message = f"{url}: {exc}; starting the file again"
                log.warning("%s: %s", self.name, message)
                self.ctx.emit(ProgressEvent("retry", self.name, message=message))
                self.restart()

    def restart(self) -> None:
        """Forget every byte written (the partial file keeps its size)."""
        self.plan.reset(self.chunk_size)
        self.cursor.reset()
        self.etag = self.last_modified = None
        self.single = False

    async def _run_once(self, url: str) -> None:
        self.origin = self.url = url
        self.validated = False
        first = self.schedule.claim_first()
        if first is None:
            return
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._watchdog)
                self._workers_done = False
                self._saver.group = outer
                try:
                    await self._run_workers(outer, first)
                finally:
                    self._workers_done = True  # no worker may be started after this
                outer.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise collapse_group(group) from None
        finally:
            self._saver.stopped()
            if not self.plan.complete:  # a complete file is verified and published next
                with anyio.CancelScope(shield=True):
                    await self.save_state()
        if not self.plan.complete:
            raise TransferError(f"{url}: the download stopped before the end", url=url)

    async def _run_workers(self, outer: anyio.abc.TaskGroup, first: int) -> None:
        """The first worker (the probe), then the others up to the width; returns when every
        worker is done."""
        async with anyio.create_task_group() as workers:
            ready = anyio.Event()
            self._live = 0
            workers.start_soon(self._worker, first, ready)
            await ready.wait()
            if not self.single:
                self._widen(workers)
                if self._widener is not None:
                    outer.start_soon(self._adapt, workers)

    def _widen(self, workers: anyio.abc.TaskGroup) -> None:
        """Start workers up to the current width, as far as the plan has work for them. An
        adaptive file also stops at the tokens the engine's connection budget has free, with
        at most one of its workers waiting in line: more would only queue, then take tokens
        as other files give them back and split those files' ranges (the adaptive loop widens
        again as tokens come back). A prefetch of 60 files started 1,326 workers for 361
        ranges without this bound, 192 for 296 with it, and took 1.7 s instead of 1.9-2.1 s."""
        if self._widener is None:  # fixed: every worker at once, each waits its turn
            more = self.ctx.config.max_connections - self._live
        else:
            waiting = self._live - self.schedule.width  # workers without a token yet
            free = int(self.ctx.limiter.available_tokens) + 1 - waiting
            more = min(self._widener.width - self._live, free)
        if more <= 0:  # the usual case in a prefetch: every token is out (``wanted`` costs)
            return
        for _ in range(min(more, self.schedule.wanted())):
            workers.start_soon(self._worker, None, None)

    async def _adapt(self, workers: anyio.abc.TaskGroup) -> None:
        """Feed the :class:`Widener` the bytes received; start workers when it widens (a
        narrower width ends workers as they finish their range: see :meth:`_worker`). Real
        time, not the injected clock: it measures real throughput."""
        widener = self._widener
        assert widener is not None
        shed_for = widener.width
        while not self._workers_done:
            widener.ceiling = min(HASH_RATE, self.cursor.rate or HASH_RATE)  # see adaptive
            streams = self._streams  # live bodies, where the transport lends its buffers
            flowing = len(streams) >= min(widener.width, self._live) if streams else None
            widener.observe(time.monotonic(), self._received(), flowing=flowing)
            if widener.width > self._live and not workers.cancel_scope.cancel_called:
                self._widen(workers)
            elif widener.width < self._live and widener.width < shed_for:
                self.schedule.shed(self._live - widener.width)  # give connections back soon
            shed_for = widener.width
            await asyncio.sleep(widener.poll)  # anyio.sleep looks the library up

    def _received(self) -> int:
        """Body bytes received so far: those handed over in pieces, plus what each live
        connection holds in a buffer not yet handed over (exact at any moment, so short
        windows measure the rate, not the 1 MiB granularity of the pieces)."""
        moved = self._moved
        for active, response in self._streams.items():
            moved += max(0, response.received - active.total)
        return moved

    async def _watchdog(self) -> None:
        config = self.ctx.config
        if config.min_rate <= 0:
            return  # off: the transport's read timeout still catches a dead connection
        interval = poll_interval(config)
        while True:
            await self.ctx.sleep(interval)
            await anyio.lowlevel.checkpoint()  # even a fake sleep that never yields
            now = self.ctx.clock()
            for active in list(self._active):
                active.cut(now, config, self.ctx.min_rate)

    # ------------------------------------------------------------------ chunk level
    async def _worker(self, index: int | None, ready: anyio.Event | None) -> None:
        self._live += 1
        schedule = self.schedule
        if self._widener is not None:
            schedule.starting = self._live
        try:
            async with self.ctx.limiter:
                schedule.width += 1  # the connections this file holds (pieces are sized by it)
                try:
                    await self._work(index, ready)
                finally:
                    schedule.width -= 1
        finally:
            self._live -= 1
            if self._widener is not None:
                schedule.starting = self._live

    async def _work(self, index: int | None, ready: anyio.Event | None) -> None:
        """Ranges one after the other on one connection token, until none is worth taking."""
        if index is None:
            index = self.schedule.take(steal=self._may_steal())
        while index is not None:
            try:
                await self._fetch_chunk(index, ready)
            finally:
                self.schedule.release(index)
            if self.single:
                return
            widener = self._widener
            if widener is not None and self._live > widener.width:
                return  # fewer connections pay better: give this one back
            ready = None
            index = self.schedule.take(steal=self._may_steal())

    def _may_steal(self) -> bool:
        """Whether an idle connection of this file may split a range in flight: not while
        other downloads wait for a connection token (see :meth:`_work`)."""
        return not self.ctx.limiter.statistics().tasks_waiting

    async def _fetch_chunk(self, index: int, ready: anyio.Event | None) -> None:
        retrier = Retrier(
            self.ctx.config.retry,
            self.ctx.sleep,
            self.name,
            self.ctx.notify_retry(self.name),
            wave=self._retry_wave,
            meaningful=min(MEANINGFUL, max(1, self.plan.remaining(index) // 4)),
        )
        while not self.plan.is_done(index):
            before = self.plan.written[index]
            try:
                await self._request(index, ready)
                if self.plan.written[index] > before:
                    retrier.progressed()
                    continue
                raise ProtocolError(f"{self.url} sent no bytes for the range", url=self.url)
            except HubError as exc:
                if retryable(exc) and self.plan.is_done(index):
                    log.debug("%s: %s (the range was complete)", self.name, exc)
                    return
                if not isinstance(exc, StallError):  # a stall always counts, however it began
                    retrier.progressed(self.plan.written[index] - before)
                await retrier.failed(exc)

    async def _request(self, index: int, ready: anyio.Event | None) -> None:
        start = self.plan.next_offset(index)
        last = self.plan.bounds(index)[1] - 1
        headers = {"Range": f"bytes={start}-{last}"}
        sent = self.url
        async with self.ctx.host_slot(sent):
            active = Active(self.ctx.clock())
            self._active.add(active)
            asked = time.monotonic()
            try:
                with anyio.CancelScope() as scope:
                    active.scope = scope
                    async with self.ctx.transport.request(sent, headers=headers) as response:
                        active.last = self.ctx.clock()
                        if ready is not None:
                            latency = time.monotonic() - asked
                            self.schedule.learn_latency(latency)
                            if self._widener is not None:
                                self._widener.learn_latency(latency)
                        await self._answer(index, response, sent, start, last, ready, active)
            finally:
                self._active.discard(active)
        if scope.cancelled_caught and active.reason is not None:
            where = host_port(self.url)[1]
            raise StallError(f"{where} sent {active.reason} ({self.url})", url=self.url)

    async def _answer(
        self,
        index: int,
        response: Response,
        sent: str,
        start: int,
        last: int,
        ready: anyio.Event | None,
        active: Active,
    ) -> None:
        status, url, size = response.status, response.url, self.plan.size
        if status == 206:
            first, end, total = parse_content_range(response.headers.get("Content-Range"), url)
            if not self.size_known:
                size = await self._learn_size(total, url)
            if total != size:
                if not self.validated:
                    raise WrongMirror(f"{url} serves {total} bytes, expected {size}", url=url)
                raise Restart(f"the size changed to {total} bytes")
            if first != start or end > last:
                raise ProtocolError(
                    f"{url} sent bytes {first}-{end} for the range {start}-{last}", url=url
                )
            if "multipart/" in response.headers.get("Content-Type", "").lower():
                raise ProtocolError(f"{url} sent a multipart answer to one range", url=url)
            self._check_validators(response)
            length = end - first + 1
            declared = response.content_length
            if declared is not None:
                if declared > length:
                    raise ProtocolError(
                        f"{url} announced {declared} bytes for a {length}-byte range", url=url
                    )
                length = declared
        elif status == 200:
            if not self.size_known:
                declared = response.content_length
                if not declared:
                    raise Unranged(f"{url} ignores Range and sends no Content-Length")
                size = await self._learn_size(declared, url)
            if not self.single and (self.validated or (self.plan.done_bytes and not self._ignored)):
                # a CDN that ignores Range now and then: ask for the range again (bounded by
                # the retry budget) rather than start the file over; the SHA-256 verifies
                # the bytes kept. On resume (nothing validated yet) once, then start over.
                self._ignored += 1
                raise ProtocolError(
                    f"{url} answered 200 (the whole file) to a range request; asking again",
                    url=url,
                )
            if self.single or self.plan.done_bytes:
                raise Restart("the whole file was sent (Range ignored, or the file changed)")
            declared = response.content_length
            if declared is not None and declared != size:
                raise WrongMirror(f"{url} serves {declared} bytes, expected {size}", url=url)
            log.info("%s: %s ignores Range; reading one stream", self.name, url)
            self.plan.reset(max(size, 1))
            self.plan.claimed = {0}
            self.cursor.reset()
            self.single = True
            index = 0
            start, length = 0, size
            self._check_validators(response)
        elif status == 416 and not self.size_known:
            raise Unranged(f"{url} answered 416 to the first range: the file is empty")
        elif status in (412, 416):
            raise Restart(f"HTTP {status}: the file changed on the server")
        elif status in (403, 410) and sent != self.origin:
            if self.url == sent:
                self.url = self.origin
            raise RetryNow(f"{url} answered {status}; resolving {self.origin} again", url=url)
        else:
            raise status_failure(status, response.headers, url, self.name)
        if not self.validated:
            self.validated = True
            log.info("%s: downloading from %s", self.name, url)
        self.url = url
        if ready is not None:
            ready.set()
        await self._stream(index, response, start, length, active)

    async def _learn_size(self, size: int, url: str) -> int:
        """The size of a file of unknown size, from the probe's answer: capped like the
        manifest's sizes (``config.max_learned_size``), then checked against the free space
        and reserved (``on_size``), and only then planned: a server announcing 2**46 bytes
        costs a typed error, not a chunk plan of millions of entries."""
        cap = self.ctx.config.max_learned_size
        if size > cap:
            raise WrongMirror(
                f"{url} announces {size} bytes for {self.name}, more than the {cap} accepted "
                "for a file of unknown size (max_learned_size)",
                url=url,
            )
        log.info("%s: %s serves %d bytes", self.name, url, size)
        if self._on_size is not None:
            await self._on_size(size)
        self.plan.resize(size)
        self.plan.claimed = {0}  # the probe's range, which the caller holds
        self.size_known = True
        return size

    def _check_validators(self, response: Response) -> None:
        """Record the first answer's validators (kept in the resume state, for the record). A
        different ``ETag`` or ``Last-Modified`` later is logged, never a reason to discard
        bytes: load-balanced backends give the same bytes different strong ETags, and the
        SHA-256 verifies the whole file anyway (a real change of content fails it, and the
        engine then starts the file over; a change of size is caught here at once)."""
        etag = strong_etag(response)
        modified = response.headers.get("Last-Modified")
        if not self.validated:
            self.etag = etag
            self.last_modified = modified
        elif etag is not None and self.etag is not None and etag != self.etag:
            log.debug("%s: ETag %s differs from %s; the SHA-256 decides", self.name, etag,
                      self.etag)  # fmt: skip

    async def _stream(
        self, index: int, response: Response, offset: int, length: int, active: Active
    ) -> None:
        """Write at most ``length`` body bytes at ``offset``; more is a ProtocolError. Stops
        early (dropping the connection) when the range was split before its end."""
        clock, bucket = self.ctx.clock, self.ctx.bucket
        piece = min(PIECE, max(self.ctx.config.state_interval, 16 * 1024))
        # one isinstance per answer: a runtime-checkable Protocol check costs ~10 us
        lender = response if isinstance(response, BufferedResponse) else None
        # holding every buffer the transport lends, waiting for more would wait forever
        lendable = lender.lendable if lender is not None else 0
        buffers: list[Chunk] = []
        lent: list[Piece] = []
        buffered = 0
        remaining = length
        received = self.schedule.received
        received[index] = offset
        held_since = clock()
        spread = self.cursor.mapped or (
            self.schedule.width >= SPLICE_WIDTH and offset != self.plan.prefix
        )
        if lender is not None and spread and self.ctx.config.splice:
            lender.splice()  # the hash reads these bytes back anyway (see SPLICE_WIDTH)
        body = body_pieces(response, lender, PIECE)
        if lender is not None:
            self._streams[active] = lender
        try:
            async for data, loan in body:
                if loan is not None:
                    lent.append(loan)
                n = len(data)
                self._moved += n
                active.total += n
                active.last = clock()
                received[index] = offset + buffered + n
                if n > remaining:
                    if remaining and isinstance(data, (bytes, memoryview)):
                        buffers.append(data[:remaining])
                        buffered += remaining
                    raise ProtocolError(
                        f"{response.url} sent more than the {length} bytes asked", url=response.url
                    )
                buffers.append(data)
                buffered += n
                remaining -= n
                if bucket is not None and await bucket.take(n):
                    active.last = clock()
                    active.samples.clear()
                    active.samples.append((active.last, active.total))
                end = self.plan.ends[index]
                now = clock()
                full = buffered >= piece or offset + buffered >= end or len(lent) >= lendable > 0
                if full or now - held_since >= STATE_PERIOD:
                    try:
                        await self._flush(index, offset, buffers)
                    finally:
                        give_back(lent)
                    offset += buffered
                    buffers, buffered = [], 0
                    held_since = now
                    if offset >= self.plan.ends[index]:
                        if remaining:
                            response.close()  # the rest was handed to another connection
                        return
        finally:
            try:
                if buffers:
                    with anyio.CancelScope(shield=True):
                        await self._flush(index, offset, buffers)
            finally:
                give_back(lent)
                received.pop(index, None)
                self._streams.pop(active, None)
                with anyio.CancelScope(shield=True):
                    await body.aclose()
