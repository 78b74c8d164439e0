"""Which bytes an idle connection fetches next: lowest offset first, smaller pieces near the
end, and work stealing from connections that are behind.

A :class:`Scheduler` hands out ranges of a :class:`~asynchub._engine.resume.ChunkPlan` to the
connections of one download (:meth:`Scheduler.take`). Three rules, in this order:

1. **The hash cursor first.** If the range the hash cursor waits for is held by a connection
   whose expected time to finish is more than :data:`LAG` times what the next piece (rule 2)
   takes at the other connections' rate, the idle connection steals the second part of that
   range instead of starting a new one: hashing cannot pass a hole, so one slow early chunk
   would otherwise leave much of the file to hash after the last byte. Near the end, where
   pieces shrink, this also splits full-size ranges taken just before the taper began, so the
   low offsets finish first and the hash cursor stays close behind the last byte.
2. **Lowest offset first, tapering.** Otherwise it takes the unclaimed range with the lowest
   offset, so the contiguous prefix (and the hash cursor behind it) grows steadily. Near the
   end the piece taken shrinks to ``unclaimed bytes / connections held`` (guided
   self-scheduling over the connections the file holds or is starting, not the maximum it may
   hold: an uncapped download settles at a handful, and dividing by 40 there began the taper
   at 640 MiB left and made ~100 small requests; the maximum only until the width is known;
   never below :data:`MIN_PART`, or below :data:`MIN_TAIL_PART` where requests are cheap, see
   below): the last pieces are small, so connections finish together and little is left to
   hash after the last byte.
3. **Stealing.** With nothing unclaimed left, it splits the range in flight with the longest
   expected time to finish (the most bytes left when no rate is known yet): the holder keeps
   the part before the split point and stops there, the idle connection fetches the rest.
   The split point shares the remaining bytes in proportion to the two connections' rates, so
   a crawling connection keeps almost nothing (:data:`KEEP` bytes past what it has received).
   Not while other downloads of the engine wait for a connection (``take(steal=False)``, see
   :meth:`~asynchub._engine.ranged.FileDownload._may_steal`): the connection is given back
   and starts a file that has not begun, instead of cutting the holder's answer short (which
   costs the holder a new connection). In the 60-model prefetch this made 21 splits instead of
   59, and opened 65 connections instead of 94.

Choices:

* :data:`MIN_PART` (2 MiB): the smallest part split off or tapered to. A new request costs a
  round trip (often a new connection, 50-100 ms on a real link, when the holder's answer is
  cut short), which is worth ~2 MB at the 25 MB/s a CDN gives one connection; smaller parts
  would cost more than they save. Files with chunks under 2 MiB are never split.
* **The tail may go below** :data:`MIN_PART`: to :data:`TAIL_ROUND_TRIPS` (8) round trips
  at the rate a connection reaches here, at least :data:`MIN_TAIL_PART` (256 KiB). On
  loopback with 25 MB/s per connection that is 256 KiB: 2 MiB pieces took 84 ms each, and the
  last ones, started at different moments, left connections idle for up to that long (F, a
  512 MiB download on 40 connections: 0.72-0.75 s with 2 MiB, 0.69-0.71 s with this). Only
  the taper uses it: the pieces before the tail are sized as above, never under
  :data:`MIN_PART` (the same download with every piece allowed down to 256 KiB made four
  times the requests and ran at half the rate).
* Rates are measured per range since it was taken (bytes received / seconds), and only after
  :data:`MIN_AGE` (0.1 s) so the connection set-up does not count as slowness; a range that
  *finished* counts however short its life, if it moved :data:`MIN_TAIL_PART` bytes or more
  (on a fast link a piece lasts a few milliseconds, so no rate was ever known there).
* **A piece lasts at least** :data:`PIECE_SECONDS` (0.04 s) at the rate connections reach
  here, where that is more than the size above, **and up to** :data:`LONG_PIECE_SECONDS`
  (0.32 s) **while the pieces in flight hold at most a quarter of what is left**
  (:data:`FLIGHT_SHARE`: ``left / (4 x width)`` each). A request costs CPU at both ends
  whatever its round trip (headers, a system call that wakes the server, one more write and
  hash boundary; ~0.4 ms of the event loop's time here): on an uncapped loopback mirror
  (1 GiB, 8 connections of ~150 MB/s) 2-3 MiB pieces made ~570 requests and cost 1.93-2.15
  CPU-s, ~5 MiB pieces 270-300 requests and 1.81-1.84 CPU-s. Behind a 25 MB/s cap on each
  of 40 connections, 0.04 s is 1 MB, under the 2 MiB the hash bound gives on loopback, and
  1 GiB took ~600 requests; with the longer pieces 340-470, and 1.9-2.1 CPU-s instead of
  2.1-2.35 (four runs each), in the same time; the 60-model prefetch took 1.93-2.24 s
  instead of 2.14-2.38. The quarter keeps the hash close behind: 40 pieces of 8 MB are
  320 MB in flight, most of a 512 MiB file, whose download took 0.84-0.87 s with them and
  0.76-0.81 s with the quarter. **Nor more, per connection, than the finished prefix**
  (``prefix / width``): the hash can start only when the first pieces are done, and
  a piece sized for 0.32 s at the rate of 8 connections (16 MiB at 150 MB/s) takes far
  longer once the width grows and the rate per connection falls (0.45 s at 32
  connections on a CPU-bound loopback mirror): the hash waited for the range at the
  cursor for 0.2 s of a 1 GiB download, then hashed to the end at its own pace. So pieces
  lengthen as the prefix grows. 1 GiB on an uncapped loopback mirror: median 1.22 s
  in-process against 1.28 s (ten runs each, interleaved); with 25 MB/s per connection
  1.22-1.25 s against 1.31-1.35 s (three each, ~10 % more requests, the same CPU);
  512 MiB capped, median 0.676 s against 0.705 (six each); the 60-model prefetch
  unchanged.
* **Pieces sized for the hash as well as the requests.** Every byte past the hash cursor when
  the last one arrives is hashed after the download, and the bytes in flight at the end are
  about ``width x piece``: with 40 connections on 16 MiB ranges that is the whole of a
  512 MiB file. Each request costs a round trip instead (``latency``). The total, ``size /
  rate x (1 + latency x per-connection rate / piece) + width x piece / hash rate``, is
  smallest at ``piece = sqrt(left x latency x HASH_RATE) / width``: the piece taken is at
  most that (never below :data:`MIN_PART`, never above the chunk size). With the round trip
  of the file's first request (:meth:`Scheduler.learn_latency`) and the connections it holds
  (:attr:`Scheduler.width`; in a prefetch many files share the budget, and each holds few),
  or, if more, the workers an adaptive download has just started (:attr:`Scheduler.starting`:
  they take their pieces one after the other as their tokens come, and sized by the tokens
  held so far the first of eight took 11 MiB, 0.45 s at 25 MB/s, which held the hash
  cursor back for half of a 512 MiB download):
  ~2 MiB for 40 connections on loopback, ~3-5 MiB behind 20-50 ms of latency, the whole
  chunk for one or two connections. Until the latency is known (the first request), the
  chunk size.
* **The probe asks for a small first piece** in a file of :data:`SMALL_PROBE_CHUNKS` (4)
  chunks or more: :data:`MIN_PART` bytes, not a whole chunk. Its range is where the hash
  cursor starts, and in such a file many connections soon fetch the ranges after it: a whole
  16 MiB chunk at the 25 MB/s of a capped connection held the cursor for 0.6 s of a 0.7 s
  download (512 MiB on 40 connections), and splitting it later costs a new connection. A slow
  link pays one more request on one connection. A smaller file keeps a whole first chunk: it
  gets few connections (in a prefetch of 60 files of 17 MiB, a small probe per file cost
  ~3 %).
* :data:`LAG` (1.0): the cursor's range is helped as soon as it would finish after the piece
  an idle connection would start now. In the 1 GiB benchmark with a 25 MB/s cap per
  connection, 2.0 left ~110 MiB to hash after the last byte, 1.0 ~50 MiB, for two more
  requests. **Only where the split pays** (:data:`STEAL_GAIN`, 0.75): the new connection's
  part is at least :attr:`min_part` and costs a round trip, so a cursor range with little
  more than that left, moving a bit slower than the others, would be finished no sooner by
  it. In a 512 MiB download on 40 connections capped at 25 MB/s, one range with 2 MiB left
  at 19 MB/s was split that way: the new connection started its 2 MiB 0.1 s later and
  the hash cursor waited 75 ms more than it would have for the holder.
* **A chunk's last piece is shared, not taken whole.** What is left of a chunk after a piece
  is taken whole when it is under ``piece + floor``; until a rate is known the floor is
  :attr:`min_part`, so with 2-2.4 MiB pieces the last one of a 16 MiB chunk could be 3-3.8
  MiB, half again as long as those the other connections took at the same time: the hash
  cursor waits for it while they move on (40-75 ms of a 512 MiB download, with ~80 MB
  arriving meanwhile, all hashed after the last byte). Outside the taper, a rest over 1.25
  pieces (and at least :attr:`min_part`) is cut in two halves, and so is one that would
  leave less than half a piece after the cut: as pieces lengthen with the prefix (above),
  a 16 MiB chunk would go as 14 + 2 MiB, and the 2 MiB piece would last less than
  :data:`PIECE_SECONDS` on a fast link; 8 + 8 is the same two requests. F, 512 MiB on 40
  connections capped at 25 MB/s, both changes: 0.661-0.818 s in-process, median 0.676,
  against 0.667-0.739, median 0.698 (six runs each, interleaved).
* **A crawling range is split below** :attr:`min_part` (:data:`CRAWL`, 4): where its holder
  would need more than four times what a new connection needs for the rest (a round trip,
  then the others' rate), an idle connection may take all but a tail floor
  (:meth:`_floor`, at least :data:`MIN_TAIL_PART`) of it, and near the end of a file such a
  range counts as work for one more connection (:meth:`wanted`). A range of 2 MiB (the last
  piece of a chunk, or half of one split while its holder was too young to have a rate)
  was otherwise never split again: with one answer dripping at 256 KiB/s and the others at
  16 MiB/s, a 16 MiB download waited 8 s for that range in some runs and 0.7 s in others.
* Stealing only ever moves the *end* of a range back; the holder's request is not cancelled
  but stops at the new end (bytes it received past it are dropped; a split landing in a write
  already under way counts those bytes once, for the new range), so the resume state stays a
  set of disjoint ranges and never claims a byte twice.
"""

from __future__ import annotations

from collections.abc import Callable

from .resume import ChunkPlan

__all__ = [
    "FLIGHT_SHARE",
    "HASH_RATE",
    "KEEP",
    "LAG",
    "LONG_PIECE_SECONDS",
    "MIN_AGE",
    "MIN_PART",
    "MIN_TAIL_PART",
    "PIECE_SECONDS",
    "SMALL_PROBE_CHUNKS",
    "STEAL_GAIN",
    "CRAWL",
    "TAIL_ROUND_TRIPS",
    "Scheduler",
]

MIN_PART = 2 * 1024 * 1024
MIN_TAIL_PART = 256 * 1024
TAIL_ROUND_TRIPS = 8
SMALL_PROBE_CHUNKS = 4
PIECE_SECONDS = 0.04
LONG_PIECE_SECONDS = 0.32
FLIGHT_SHARE = 4
#: Bytes/s SHA-256 reads back after the download (one core with SHA extensions: 1-1.5 GB/s;
#: without them it is slower, which only makes the tail weigh more).
HASH_RATE = 1_000_000_000
KEEP = 64 * 1024
MIN_AGE = 0.1
LAG = 1.0
STEAL_GAIN = 0.75
CRAWL = 4.0
_ALIGN = 64 * 1024


class Scheduler:
    """Hands out the ranges of ``plan`` to ``connections`` workers (see the module docstring).

    The downloader keeps :attr:`received` up to date: for each range being streamed, the
    offset of the next byte not yet received (written or still buffered).
    """

    def __init__(
        self,
        plan: ChunkPlan,
        *,
        connections: int,
        clock: Callable[[], float],
        min_part: int = MIN_PART,
    ) -> None:
        self.plan = plan
        self.connections = max(1, connections)
        self.clock = clock
        self.min_part = min_part
        self.received: dict[int, int] = {}
        self.steals = 0
        #: connections this file holds now (its workers keep it up to date)
        self.width = 0
        #: connections it is about to hold: workers started for it, with or without a token
        #: yet (an adaptive download keeps it up to date; pieces are sized for the larger)
        self.starting = 0
        self._latency: float | None = None
        self._since: dict[int, tuple[float, int]] = {}
        self._finished_rate: float | None = None  # moving average over finished ranges
        # One decision (:meth:`take`, :meth:`wanted`) reads the clock once and the rates of
        # the ranges in flight once, however many of its steps compare them.
        self._frozen: float | None = None
        self._rates: tuple[dict[int, float], float, int] | None = None  # rates, sum, count

    def learn_latency(self, seconds: float) -> None:
        """What one request took to its answer here (the piece size weighs it, see above)."""
        self._latency = max(seconds, 0.0)

    # ------------------------------------------------------------------ claims
    def claim_first(self) -> int | None:
        """The lowest open range for the probe, cut to :attr:`min_part` bytes in a file of
        :data:`SMALL_PROBE_CHUNKS` chunks or more (see the module docstring)."""
        plan = self.plan
        index = plan.claim_next()
        if index is None:
            return None
        start = plan.next_offset(index)
        many = plan.size >= SMALL_PROBE_CHUNKS * plan.chunk_size
        if many and plan.remaining(index) >= 2 * self.min_part:
            plan.split(index, start + self.min_part)
        self._mark(index)
        return index

    def take(self, *, steal: bool = True) -> int | None:
        """A range for an idle worker, now held by it; ``None`` when there is nothing worth
        taking (the worker then ends). With ``steal`` false, no range in flight is split
        once nothing is unclaimed (the connection is wanted elsewhere)."""
        self._frozen = self.clock()
        try:
            return self._take(steal)
        finally:
            self._frozen = self._rates = None

    def _take(self, steal: bool) -> int | None:
        plan = self.plan
        index = plan.first_unclaimed()
        if index is not None:
            piece, floor, tapered = self._piece(plan.unclaimed_bytes())
            lagging = self._lagging_cursor(piece)
            if lagging is not None:
                return self._split_off(*lagging)
            cut = self._cut(plan.remaining(index), piece, floor, tapered)
            if cut is not None:
                start = plan.next_offset(index)
                plan.split(index, _align(start + cut, start + 1))
            plan.claim(index)
            self._mark(index)
            return index
        victim = self._slowest() if steal else None
        if victim is None:
            return None
        at = self._split_point(victim, self._clock())
        return None if at is None else self._split_off(victim, at)

    def release(self, index: int) -> None:
        """The worker holding ``index`` let it go (finished, or failed)."""
        rate = self._finished(index, self.clock()) if self.plan.is_done(index) else None
        if rate:
            last = self._finished_rate
            self._finished_rate = rate if last is None else (last + rate) / 2
        self.plan.release(index)
        self._since.pop(index, None)
        self.received.pop(index, None)

    def shed(self, count: int) -> int:
        """Make ``count`` holders finish soon (the adaptive width shrank): cut their ranges
        just past what they received, the longest first; the rest becomes unclaimed work for
        the connections that stay. Returns how many were cut."""
        plan = self.plan
        cut = 0
        for index in sorted(plan.claimed, key=plan.remaining, reverse=True):
            if cut >= count:
                break
            base = self._position(index) + KEEP
            if plan.ends[index] - base < 2 * _ALIGN:
                continue
            plan.split(index, _align(base + _ALIGN, base))
            cut += 1
        return cut

    def wanted(self) -> int:
        """How many more workers this plan can keep busy: its unclaimed ranges, or the parts
        of ``min_part`` bytes of what is left beyond one per claimed range, if more."""
        plan = self.plan
        left = plan.size - plan.done_bytes
        more = max(plan.unclaimed_open(), -(-left // self.min_part) - len(plan.claimed))
        if more > 0 or not plan.claimed:
            return more
        now = self._frozen = self.clock()  # near the end: a crawling range wants one more
        try:
            return sum(
                1 for i in plan.claimed if self._crawls(i, now) and self._stealable(i, crawls=True)
            )
        finally:
            self._frozen = self._rates = None

    # ------------------------------------------------------------------ rates
    def _clock(self) -> float:
        """The time of the decision under way, else now."""
        return self.clock() if self._frozen is None else self._frozen

    def _mark(self, index: int) -> None:
        self._since[index] = (self.clock(), self.plan.next_offset(index))

    def _position(self, index: int) -> int:
        return max(self.received.get(index, 0), self.plan.next_offset(index))

    def _rate(self, index: int, now: float) -> float | None:
        since = self._since.get(index)
        if since is None or now - since[0] < MIN_AGE:
            return None
        return (self._position(index) - since[1]) / (now - since[0])

    def _finished(self, index: int, now: float) -> float | None:
        """The rate of a range that just finished: over its whole life, however short, if it
        moved at least :data:`MIN_TAIL_PART` bytes (on a fast link a 2 MiB piece lasts a few
        milliseconds, and no range there would ever be :data:`MIN_AGE` old)."""
        since = self._since.get(index)
        if since is None or now <= since[0]:
            return None
        moved = self._position(index) - since[1]
        return moved / (now - since[0]) if moved >= MIN_TAIL_PART else None

    def _reference_rate(self, now: float, exclude: int | None = None) -> float | None:
        """What a connection achieves here: the mean rate of the other ranges in flight and
        of recently finished ones (``None`` while nothing is known)."""
        known = self._rates if now == self._frozen else None
        if known is None:  # outside a decision, or its first look
            rates = {i: r for i in self.plan.claimed if (r := self._rate(i, now)) is not None}
            known = (rates, sum(rates.values()), len(rates))
            if now == self._frozen:
                self._rates = known
        rates, total, count = known
        if exclude in rates:
            total, count = total - rates[exclude], count - 1
        if self._finished_rate is not None:
            total, count = total + self._finished_rate, count + 1
        return total / count if count else None

    def _eta(self, index: int, now: float, reference: float | None) -> float:
        left = self.plan.ends[index] - self._position(index)
        rate = self._rate(index, now)
        if rate is None:
            rate = reference
        if rate is None:
            return float(left)  # no rate known anywhere: compare bytes
        return left / rate if rate > 0 else float("inf")

    # ------------------------------------------------------------------ decisions
    def _piece(self, left: int) -> tuple[int, int, bool]:
        """How much the next claim takes, with ``left`` unclaimed bytes: a chunk, less near
        the end (``left / connections``), never under the floor :meth:`_floor`; that floor;
        and whether the end is near (the piece was tapered)."""
        plan = self.plan
        piece = plan.chunk_size
        if self._latency is not None:
            width = max(1, self.width, self.starting)
            best = (left * self._latency * HASH_RATE) ** 0.5 / width
            rate = self._reference_rate(self._clock())
            if rate:  # a piece lasts a while at the rate connections reach (see above)
                longer = min(
                    rate * LONG_PIECE_SECONDS,
                    left / (FLIGHT_SHARE * width),
                    plan.prefix / width,  # what the hash can take meanwhile
                )
                best = max(best, rate * PIECE_SECONDS, longer)
            piece = max(self.min_part, min(piece, int(best)))
        floor = self._floor()
        holders = max(self.width, self.starting) or self.connections
        taper = max(floor, -(-left // holders))
        return min(piece, taper), floor, taper < piece

    def _cut(self, remaining: int, piece: int, floor: int, tapered: bool) -> int | None:
        """Where to cut the first unclaimed range, ``remaining`` bytes long, for a claim of
        ``piece`` (``None``: take it whole). Outside the taper a chunk's rest is shared in two
        halves rather than taken whole when well over a piece, or left short after the cut
        (see the module docstring)."""
        if remaining >= piece + floor:
            if not tapered and 2 * (remaining - piece) < piece:
                return remaining // 2
            return piece
        if not tapered and remaining * 4 > piece * 5 and remaining >= self.min_part:
            return remaining // 2
        return None

    def _floor(self) -> int:
        """The smallest piece taken: :attr:`min_part`, or less where a request is cheap
        against what a connection moves in the meantime (:data:`TAIL_ROUND_TRIPS` round trips
        at the rate connections reach here, at least :data:`MIN_TAIL_PART`)."""
        if self._latency is None or self.min_part <= MIN_TAIL_PART:
            return self.min_part
        rate = self._reference_rate(self._clock())
        if not rate:
            return self.min_part
        cheap = int(TAIL_ROUND_TRIPS * self._latency * rate)
        return max(MIN_TAIL_PART, min(self.min_part, cheap - cheap % _ALIGN))

    def _stealable(self, index: int, crawls: bool | None = None) -> bool:
        """Whether an idle connection may split ``index`` now (``crawls``: :meth:`_crawls`,
        if the caller knows it already)."""
        plan = self.plan
        if index not in plan.claimed or plan.is_done(index):
            return False
        left = plan.ends[index] - (self._position(index) + KEEP)
        if left >= self.min_part:
            return True
        if left < MIN_TAIL_PART:  # (the usual case near the end: no rates to compare)
            return False
        if crawls is None:
            crawls = self._crawls(index, self._clock())
        return crawls and left >= self._floor()

    def _crawls(self, index: int, now: float) -> bool:
        """Whether the holder of ``index`` would take more than :data:`CRAWL` times what a
        new connection needs for the rest (a round trip, then the others' rate)."""
        left = self.plan.ends[index] - self._position(index)
        if left < MIN_TAIL_PART:  # never split: not worth comparing rates
            return False
        rate = self._rate(index, now)
        reference = self._reference_rate(now, exclude=index)
        if rate is None or not reference:
            return False
        alone = left / rate if rate > 0 else float("inf")
        return alone > CRAWL * ((self._latency or 0.0) + left / reference)

    def _thief_part(self, index: int, now: float) -> int:
        """The least a connection that splits ``index`` takes: :attr:`min_part`, or the tail
        floor (:meth:`_floor`) where the holder crawls."""
        return self._floor() if self._crawls(index, now) else self.min_part

    def _lagging_cursor(self, piece: int) -> tuple[int, int] | None:
        """The cursor's range and where to split it, if it will take more than :data:`LAG`
        times what the piece the caller would take next needs at the other connections' rate,
        and the split finishes it sooner (:data:`STEAL_GAIN`)."""
        cursor = self.plan.cursor_index
        if cursor is None or not self._stealable(cursor):
            return None
        now = self._clock()
        rate, reference = self._rate(cursor, now), self._reference_rate(now, exclude=cursor)
        if rate is None or not reference:
            return None
        eta = self._eta(cursor, now, reference)
        if eta <= LAG * piece / reference:
            return None
        at = self._split_point(cursor, now)
        if at is None:
            return None
        # the split must pay: the caller's part costs a round trip and at least min_part
        thief = (self._latency or 0.0) + (self.plan.ends[cursor] - at) / reference
        holder = (at - self._position(cursor)) / rate if rate > 0 else float("inf")
        return (cursor, at) if max(thief, holder) <= STEAL_GAIN * eta else None

    def _slowest(self) -> int | None:
        now = self._clock()
        reference = self._reference_rate(now)
        candidates = [i for i in self.plan.claimed if self._stealable(i)]
        if not candidates:
            return None
        return max(candidates, key=lambda i: self._eta(i, now, reference))

    def _split_point(self, victim: int, now: float) -> int | None:
        """Where to cut ``victim`` so its holder and a new connection should finish
        together (the new part at least :attr:`min_part`); ``None`` if too little is left."""
        reference = self._reference_rate(now, exclude=victim)
        base = self._position(victim) + KEEP
        end = self.plan.ends[victim]
        holder = self._rate(victim, now)
        share = 0.5
        if holder is not None and reference:
            share = holder / (holder + reference)
        at = min(base + int((end - base) * share), end - self._thief_part(victim, now))
        return None if at < base else _align(at, base)

    def _split_off(self, victim: int, at: int) -> int:
        """Cut ``victim`` at ``at`` (its :meth:`_split_point`); the caller now holds the new
        range."""
        plan = self.plan
        new = plan.split(victim, at)
        plan.claim(new)
        self._mark(new)
        self.steals += 1
        return new


def _align(at: int, floor: int) -> int:
    """``at`` rounded down to a 64 KiB boundary (page-aligned writes) unless that falls below
    ``floor``."""
    aligned = at - at % _ALIGN
    return aligned if aligned >= floor else at
