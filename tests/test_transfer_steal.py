"""Chunk scheduling: split ranges and their resume state, lowest offset first, tapering, work
stealing from a slow connection (also across a SIGKILL), and files of unknown size that are
chunked after a ranged probe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from asynchub._cache.layout import partials_for, state_path
from asynchub._engine.engine import Engine
from asynchub._engine.resume import SPLIT_STATE_VERSION, ChunkPlan, ResumeState, find_resumable
from asynchub._engine.schedule import (
    FLIGHT_SHARE,
    KEEP,
    MIN_AGE,
    MIN_PART,
    MIN_TAIL_PART,
    PIECE_SECONDS,
    Scheduler,
)
from tests.mirror import Fault, MirrorServer
from tests.test_resume import CHILD, ROOT, run_child
from tests.test_transfer import KIB, MIB, Events, Rig, fast_config, fetch, job_for, put, rig
from tests.transports import Transport

__all__ = ["rig"]  # the fixture, re-used

pytestmark = pytest.mark.timeout(60)


class Clock:
    """A clock the test moves by hand (injected into the scheduler)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------- plan units
def test_split_keeps_indices_and_tiles_the_file() -> None:
    plan = ChunkPlan(1000, 400)
    assert plan.claim_next() == 0 and plan.layout() is None
    plan.add(0, 100)
    new = plan.split(0, 250)
    assert new == 3 and plan.bounds(0) == (0, 250) and plan.bounds(3) == (250, 400)
    assert plan.order == [0, 3, 1, 2] and plan.layout() == [(0, 250), (400, 800), (800, 1000),
                                                            (250, 400)]  # fmt: skip
    assert plan.claim_next() == 3  # lowest offset first, not lowest index
    for bad in (100, 50, 250):  # at or before what is written, or at the end
        with pytest.raises(ValueError):
            plan.split(0, bad)
    plan.add(0, 150)
    assert plan.prefix == 250 and plan.cursor_index == 3
    with pytest.raises(ValueError):
        plan.add(0, 1)  # the range ends at the split point now
    plan.add(3, 150)
    assert plan.prefix == 400 and plan.cursor_index == 1


def test_split_state_round_trip_and_validation(tmp_path: Path) -> None:
    plan = ChunkPlan(1000, 400)
    plan.add(0, 100)
    plan.split(0, 250)
    plan.add(3, 150)
    state = ResumeState("ab" * 32, 1000, 400, list(plan.written), ranges=plan.layout())
    data = json.loads(state.to_json())
    assert data["version"] == SPLIT_STATE_VERSION and data["finished"] == [3]
    assert data["partial"] == {"0": 100} and data["ranges"][3] == [250, 400]
    again = ResumeState.from_json(state.to_json())
    assert again == state
    resumed = ChunkPlan(again.size, again.chunk_size, again.written, again.ranges)
    assert resumed.prefix == 100 and resumed.is_done(3) and resumed.claim_next() == 0
    for bad in (
        [[0, 250], [400, 800], [800, 1000], [200, 400]],  # overlap
        [[0, 250], [400, 800], [800, 999], [250, 400]],  # short of the size
        [[0, 250], [400, 800], [800, 1000]],  # fewer ranges than counts
    ):
        with pytest.raises(ValueError):
            ResumeState.from_json(json.dumps({**data, "ranges": bad}))
    # a plain state (no split) keeps version 1, readable as before
    assert json.loads(ResumeState("ab" * 32, 1000, 400, [0, 0, 0]).to_json())["version"] == 1


def test_unknown_size_adopts_the_recorded_size(tmp_path: Path) -> None:
    final = tmp_path / "abc_model.onnx"
    partial = final.with_name(final.name + ".1-a.partial")
    partial.write_bytes(bytes(1000))
    from asynchub._engine.resume import save_state

    save_state(partial, ResumeState("cd" * 32, 1000, 300, [300, 0, 0, 0]))
    found = find_resumable(final, sha256="cd" * 32, size=None, chunk_size=300, clean=False)
    assert found is not None and found[1].size == 1000
    assert find_resumable(final, sha256="cd" * 32, size=999, chunk_size=300, clean=False) is None


# ---------------------------------------------------------------------------- scheduler units
def test_lowest_offset_first_then_tapering() -> None:
    plan = ChunkPlan(64 * MIB, 8 * MIB)
    schedule = Scheduler(plan, connections=4, clock=Clock())
    taken: list[tuple[int, int]] = []
    while plan.unclaimed_open():
        index = schedule.take()
        assert index is not None
        taken.append(plan.bounds(index))
    # whole chunks while unclaimed bytes / connections >= a chunk, lowest offset first
    assert taken[:5] == [(i * 8 * MIB, (i + 1) * 8 * MIB) for i in range(5)]
    assert taken[5] == (40 * MIB, 46 * MIB)  # 24 MiB left for 4 connections: 6 MiB
    assert [start for start, _ in taken] == sorted(start for start, _ in taken)
    assert taken[-1][1] == 64 * MIB and all(end - start >= MIN_PART for start, end in taken)
    assert max(end - start for start, end in taken[-4:]) <= 2 * MIN_PART
    assert schedule.steals == 0


def _first_piece(size: int, *, width: int, latency: float | None, starting: int = 0) -> int:
    plan = ChunkPlan(size, 16 * MIB)
    schedule = Scheduler(plan, connections=40, clock=Clock())
    schedule.width = width
    schedule.starting = starting
    if latency is not None:
        schedule.learn_latency(latency)
    index = schedule.take()
    assert index is not None
    start, end = plan.bounds(index)
    return end - start


def test_pieces_shrink_with_many_connections_and_a_short_round_trip() -> None:
    """The bytes in flight at the end are hashed after the last one: with many connections
    and cheap requests the pieces are small; with one connection, or before the round trip
    is known, a whole chunk."""
    size = 1024 * MIB
    assert _first_piece(size, width=40, latency=None) == 16 * MIB
    assert _first_piece(size, width=1, latency=0.02) == 16 * MIB
    loopback = _first_piece(size, width=40, latency=0.001)
    distant = _first_piece(size, width=40, latency=0.05)
    assert loopback == MIN_PART
    assert MIN_PART < distant < 16 * MIB  # ~5.8 MB: the round trip is worth bigger pieces
    assert _first_piece(size, width=10, latency=0.05) == 16 * MIB  # fewer hold more


def test_pieces_are_sized_for_the_workers_just_started() -> None:
    """Eight workers started at once take their pieces one after the other as their tokens
    come: the first must not take a piece sized for one connection."""
    size = 512 * MIB
    alone = _first_piece(size, width=1, latency=0.001)
    assert alone > 8 * MIB
    assert _first_piece(size, width=1, latency=0.001, starting=8) < 3 * MIB
    assert _first_piece(size, width=8, latency=0.001, starting=1) < 3 * MIB


def _last_pieces(latency: float) -> list[int]:
    """The sizes of the pieces taken one after the other from a 64 MiB file by 40
    connections receiving 25 MB/s each, after 60 MiB were taken."""
    clock = Clock()
    plan = ChunkPlan(64 * MIB, 16 * MIB)
    schedule = Scheduler(plan, connections=40, clock=clock)
    schedule.learn_latency(latency)
    schedule.width = 40
    sizes = []
    while True:
        index = schedule.take()
        if index is None:
            break
        start, end = plan.bounds(index)
        sizes.append(end - start)
        if sum(sizes) >= 60 * MIB:  # the rest is the tail: a rate is known by now
            clock.now += 0.2
            for held in list(plan.claimed):
                schedule.received[held] = plan.next_offset(held) + 5_000_000
    return sizes


def test_the_last_pieces_shrink_where_requests_are_cheap() -> None:
    """On a short round trip the taper goes below MIN_PART (down to MIN_TAIL_PART), so the
    connections finish together; the pieces before the tail, and every piece behind a long
    round trip, stay at least MIN_PART."""
    near = _last_pieces(0.001)
    assert min(near[:20]) >= MIN_PART
    assert MIN_TAIL_PART <= min(near) < MIN_PART
    far = _last_pieces(0.05)
    assert min(far) >= MIN_PART or min(far) == 64 * MIB - sum(far[:-1])


def _fast_link(
    width: int, *, rate: float = 200e6, size: int = 1024 * MIB
) -> tuple[ChunkPlan, Scheduler, Clock, list[int]]:
    """A ``size`` file on ``width`` connections of a link with a 0.5 ms round trip and
    ``rate`` bytes/s each (at 200 MB/s ranges finish in about 10 ms, never MIN_AGE old).
    Returns the plan, its scheduler, the clock and the sizes of the pieces taken, finishing
    each as the next is taken."""
    clock = Clock()
    plan = ChunkPlan(size, 16 * MIB)
    schedule = Scheduler(plan, connections=40, clock=clock)
    schedule.learn_latency(0.0005)
    schedule.width = width
    sizes: list[int] = []
    while (index := schedule.take()) is not None:
        start, end = plan.bounds(index)
        sizes.append(end - start)
        clock.now += (end - start) / rate
        plan.add(index, end - start)
        schedule.release(index)
    return plan, schedule, clock, sizes


def test_pieces_last_a_while_on_a_fast_link() -> None:
    """A range that finished within milliseconds still tells the rate a connection reaches
    (on a fast link no range is ever MIN_AGE old), and pieces there last at least
    PIECE_SECONDS at that rate: a request costs CPU at both ends, whatever its round trip."""
    plan, _schedule, _clock, sizes = _fast_link(8)
    assert plan.done_bytes == plan.size
    before_the_taper = sizes[1:30]  # the first is taken before any rate is known
    assert min(before_the_taper) >= 200e6 * PIECE_SECONDS * 0.7 > MIN_PART
    assert len(sizes) < 1024 * MIB // MIN_PART // 3


def test_capped_connections_take_pieces_that_keep_the_hash_close() -> None:
    """Forty connections capped at 25 MB/s each, on loopback (where the hash bound alone
    gives 2 MiB pieces): pieces last about PIECE_SECONDS (fewer requests), yet those in
    flight never hold more than a quarter (FLIGHT_SHARE) of what is left. (Before, pieces
    there were 2 MiB: ~600 requests for 1 GiB.) Early on they are shorter: no longer than
    the finished prefix per connection."""
    for size in (1024 * MIB, 512 * MIB):
        plan, _schedule, _clock, sizes = _fast_link(40, rate=25e6, size=size)
        assert plan.done_bytes == plan.size
        left = size
        for piece in sizes[1:20]:
            assert piece <= left / (FLIGHT_SHARE * 40) + 64 * 1024
            left -= piece
    _plan, _schedule, _clock, gig = _fast_link(40, rate=25e6)
    later = gig[len(gig) // 8 : len(gig) // 4]  # once the prefix is long
    assert sorted(later)[len(later) // 2] > 1.5 * MIN_PART
    assert len(gig) < 1024 * MIB // MIN_PART


def test_long_pieces_wait_for_a_prefix_the_hash_can_take() -> None:
    """Eight fast connections (150 MB/s each, known from a finished range) at the start of a
    1 GiB file: the next piece lasts PIECE_SECONDS, not LONG_PIECE_SECONDS, while nothing is
    finished for the hash; once 256 MiB are, it is a whole chunk."""
    clock = Clock()
    plan = ChunkPlan(1024 * MIB, 16 * MIB)
    schedule = Scheduler(plan, connections=40, clock=clock)
    schedule.learn_latency(0.0005)
    schedule.width = 8
    first = schedule.take()
    assert first is not None
    start, end = plan.bounds(first)
    clock.now += (end - start) / 150e6
    plan.add(first, end - start)
    schedule.release(first)
    taken = schedule.take()
    assert taken is not None
    early = plan.bounds(taken)[1] - plan.bounds(taken)[0]
    assert early <= 150e6 * PIECE_SECONDS * 1.1 < 16 * MIB, early
    plan.add(taken, early)
    schedule.release(taken)
    while plan.prefix < 256 * MIB:
        index = schedule.take()
        assert index is not None
        plan.add(index, plan.remaining(index))
        schedule.release(index)
    index = schedule.take()
    assert index is not None and plan.bounds(index)[1] - plan.bounds(index)[0] == 16 * MIB


def test_the_taper_divides_what_is_left_among_the_connections_held() -> None:
    """Eight connections held of forty allowed: the last pieces are a share of what is left
    among the eight, so the taper begins late and takes few small requests."""
    _plan, _schedule, _clock, eight = _fast_link(8)
    _plan, _schedule, _clock, forty = _fast_link(40)
    small = [size for size in eight if size < 2 * MIN_PART]
    assert sum(small) <= 64 * MIB
    assert 3 * len(small) < len([size for size in forty if size < 2 * MIN_PART])


def test_the_last_piece_of_a_chunk_is_shared_not_taken_whole() -> None:
    """Eight workers start on a capped loopback mirror after the probe, then thirty-two more,
    before any rate is known: pieces of 2-2.7 MiB, which do not divide 16 MiB chunks. What
    is left of a chunk is not taken whole when it is well over a piece (2.6 MiB was, among
    pieces of 2; 3.1 and 3.8 MiB in a download of 512 MiB):
    one piece half again as long as the others holds the hash cursor back while every
    other connection moves on."""
    plan = ChunkPlan(512 * MIB, 16 * MIB)
    schedule = Scheduler(plan, connections=40, clock=Clock())
    assert schedule.claim_first() == 0
    schedule.learn_latency(0.001)
    schedule.width, schedule.starting = 1, 8
    sizes = []
    for width in (1,) * 7 + (32,) * 24:
        schedule.width = width
        index = schedule.take()
        assert index is not None
        start, end = plan.bounds(index)
        sizes.append(end - start)
    shown = [round(size / MIB, 2) for size in sizes]
    for phase in (sizes[:7], sizes[7:]):  # each chunk's last piece at most 1.25 x a piece
        assert max(phase) <= 1.25 * sorted(phase)[len(phase) // 2], shown
    assert min(sizes) >= MIN_PART // 2, shown
    starts = sorted(plan.bounds(i)[0] for i in plan.claimed)
    assert len(starts) == len(set(starts)) == 32 and plan.done_bytes == 0


def test_a_connection_wanted_elsewhere_splits_nothing() -> None:
    """With nothing unclaimed, ``take(steal=False)`` (other files wait for a connection)
    leaves the ranges in flight whole; ``take()`` splits the one with most left."""
    plan = ChunkPlan(32 * MIB, 16 * MIB)
    schedule = Scheduler(plan, connections=1, clock=Clock())
    assert [schedule.take(), schedule.take()] == [0, 1]
    plan.add(0, 16 * MIB)
    schedule.release(0)
    assert schedule.take(steal=False) is None and schedule.steals == 0
    assert plan.bounds(1) == (16 * MIB, 32 * MIB)
    assert schedule.take() is not None and schedule.steals == 1


def test_the_probe_asks_for_a_small_first_piece() -> None:
    """The first request of a file of many chunks asks for MIN_PART bytes, not the whole
    first chunk; a file of few chunks, or a range too short to cut, is asked for whole."""
    plan = ChunkPlan(512 * MIB, 16 * MIB)
    first = Scheduler(plan, connections=40, clock=Clock()).claim_first()
    assert first is not None and plan.bounds(first) == (0, MIN_PART)
    assert first in plan.claimed
    four = ChunkPlan(64 * MIB, 16 * MIB)
    index = Scheduler(four, connections=40, clock=Clock()).claim_first()
    assert index is not None and four.bounds(index) == (0, MIN_PART)
    small = ChunkPlan(17 * MIB, 16 * MIB)
    index = Scheduler(small, connections=40, clock=Clock()).claim_first()
    assert index is not None and small.bounds(index) == (0, 16 * MIB)
    short = ChunkPlan(6 * MIB, 1 * MIB)
    index = Scheduler(short, connections=40, clock=Clock()).claim_first()
    assert index is not None and short.bounds(index) == (0, 1 * MIB)


def test_idle_connection_steals_from_the_range_with_most_left() -> None:
    plan = ChunkPlan(48 * MIB, 16 * MIB)
    schedule = Scheduler(plan, connections=1, clock=Clock())
    assert [schedule.take(), schedule.take(), schedule.take()] == [0, 1, 2]
    plan.add(0, 16 * MIB)
    plan.add(1, 2 * MIB)
    plan.add(2, 12 * MIB)
    schedule.release(0)
    stolen = schedule.take()
    assert stolen == 3 and schedule.steals == 1
    # no rate known yet: range 1 (most bytes left) is shared half and half, 64 KiB aligned
    start, end = plan.bounds(stolen)
    assert end == 32 * MIB and 25 * MIB - 64 * KIB <= start <= 25 * MIB + 64 * KIB
    assert start % (64 * KIB) == 0
    assert plan.bounds(1) == (16 * MIB, start) and stolen in plan.claimed


def test_a_crawling_holder_keeps_almost_nothing() -> None:
    clock = Clock()
    plan = ChunkPlan(32 * MIB, 16 * MIB)
    schedule = Scheduler(plan, connections=1, clock=clock)
    fast, slow = schedule.take(), schedule.take()
    assert (fast, slow) == (0, 1)
    clock.now += 1.0
    plan.add(0, 16 * MIB)  # 16 MiB/s
    schedule.received[1] = plan.bounds(1)[0] + 16 * KIB  # 16 KiB/s, not yet written
    schedule.release(0)
    stolen = schedule.take()
    assert stolen is not None
    kept = plan.bounds(1)[1] - (plan.bounds(1)[0] + 16 * KIB)
    assert KEEP <= kept <= KEEP + 128 * KIB, kept  # ~1/1000 of the rest, past what arrived
    assert plan.bounds(stolen)[1] == 32 * MIB


def test_a_lagging_cursor_range_is_split_before_new_chunks() -> None:
    clock = Clock()
    plan = ChunkPlan(128 * MIB, 8 * MIB)
    schedule = Scheduler(plan, connections=3, clock=clock)
    cursor, other = schedule.take(), schedule.take()
    assert cursor is not None and other is not None
    clock.now += 2 * MIN_AGE
    plan.add(other, 8 * MIB)  # a whole chunk in 0.2 s
    schedule.release(other)
    schedule.received[cursor] = 256 * KIB  # the cursor's range crawls
    stolen = schedule.take()
    assert stolen is not None and plan.bounds(stolen)[0] < 8 * MIB  # not a new chunk
    assert plan.cursor_index == cursor and plan.bounds(cursor)[1] == plan.bounds(stolen)[0]
    # at the same pace as the others, the cursor range is left alone
    plan2 = ChunkPlan(128 * MIB, 8 * MIB)
    schedule2 = Scheduler(plan2, connections=3, clock=clock)
    a, b = schedule2.take(), schedule2.take()
    assert a is not None and b is not None
    clock.now += 2 * MIN_AGE
    plan2.add(a, 4 * MIB)
    plan2.add(b, 4 * MIB)
    assert schedule2.take() == 2 and schedule2.steals == 0


def test_a_cursor_range_is_not_split_where_that_would_not_finish_it_sooner() -> None:
    """The cursor's range has a little over MIN_PART left at 21 MB/s, the others finished
    theirs at 25 MB/s: a new connection would take all that is left (its part is at least
    MIN_PART) and need about as long, plus a request. The holder keeps it; the idle
    connection takes the next piece. Crawling at 5 MB/s instead, it is split."""
    for rate, split in ((21e6, False), (5e6, True)):
        clock = Clock()
        plan = ChunkPlan(256 * MIB, 16 * MIB)  # pieces of MIN_PART here
        schedule = Scheduler(plan, connections=40, clock=clock)
        schedule.learn_latency(0.001)
        schedule.width = 1
        cursor = schedule.take()  # a whole chunk, taken alone
        schedule.width = 40
        other = schedule.take()  # MIN_PART
        assert cursor == 0 and other is not None
        clock.now += MIN_PART / 25e6
        plan.add(other, MIN_PART)
        schedule.release(other)
        left = MIN_PART + 100 * KIB
        clock.now = 100.0 + (16 * MIB - left) / rate
        schedule.received[cursor] = 16 * MIB - left
        taken = schedule.take()
        assert taken is not None and schedule.steals == int(split), rate
        assert (plan.bounds(taken)[0] < 16 * MIB) == split


def test_a_crawling_range_of_min_part_is_still_split() -> None:
    """A range cut to MIN_PART (the last piece of a chunk, or a range halved while its holder
    was too young to have a rate) whose holder crawls at 256 KiB/s, the others having moved at
    16 MiB/s: it is split below MIN_PART, and it counts as work for one more connection. At a
    rate near the others' it is left alone."""
    for rate, crawls in ((256 * KIB, True), (14 * MIB, False)):
        clock = Clock()
        plan = ChunkPlan(4 * MIB, 2 * MIB)
        schedule = Scheduler(plan, connections=2, clock=clock)
        schedule.learn_latency(0.001)
        fast, slow = schedule.take(), schedule.take()
        assert fast is not None and slow is not None
        assert plan.bounds(slow)[1] - plan.bounds(slow)[0] == MIN_PART
        clock.now += 2 * MIB / (16 * MIB)
        plan.add(fast, 2 * MIB)
        schedule.release(fast)
        start = plan.bounds(slow)[0]
        schedule.received[slow] = start + int(rate * (clock.now - 100.0))
        assert schedule.wanted() == int(crawls), rate
        taken = schedule.take()
        if not crawls:
            assert taken is None and schedule.steals == 0
            continue
        assert taken is not None and schedule.steals == 1
        first, end = plan.bounds(taken)
        assert end == start + MIN_PART and first > schedule.received[slow] + KEEP - 1
        assert end - first >= MIN_TAIL_PART and plan.bounds(slow)[1] == first


def test_small_ranges_are_never_split() -> None:
    plan = ChunkPlan(3 * MIB, 256 * KIB)
    schedule = Scheduler(plan, connections=4, clock=Clock())
    held = [schedule.take() for _ in range(plan.count)]
    assert held == list(range(12)) and schedule.take() is None and schedule.steals == 0
    assert schedule.wanted() == 0


# ---------------------------------------------------------------------------- engine
async def test_a_crawling_connection_does_not_hold_the_file_back(rig: Rig) -> None:
    rig.server.rate_limit = 16 * MIB  # per answer: a 4 MiB chunk takes ~0.25 s
    blob = put(rig.root, "slow/model.onnx", 16 * MIB, seed=3)
    drip = rig.server.add_fault(
        Fault("drip", path="*slow/model.onnx", rate=256 * KIB, only_start_above=4 * MIB - 1)
    )
    job = job_for(rig.url(blob), blob, rig.cache)
    started = time.monotonic()
    path = await fetch(rig, job, chunk_size=4 * MIB, min_split_size=4 * MIB,
                       state_interval=4 * MIB)  # fmt: skip
    elapsed = time.monotonic() - started
    assert path.read_bytes() == blob.data and drip.hits == 1
    # the dripped answer alone would need 16 s for its range
    assert elapsed < 6, elapsed
    requests = rig.server.requests_for("*slow/model.onnx")
    dripped = next(r for r in requests if r.fault == "drip")
    assert dripped.range is not None
    first, last = dripped.range
    assert last is not None
    assert dripped.body_bytes < last - first + 1  # cut short at the split point
    inside = [r for r in requests if r.range is not None and first < r.range[0] <= last]
    assert inside, "no Range started inside the dripped range"
    assert rig.server.served_bytes() < blob.size + 2 * MIB  # little was fetched twice


async def test_many_connections_on_a_few_chunks_share_them(rig: Rig) -> None:
    rig.server.rate_limit = 16 * MIB
    blob = put(rig.root, "two/chunks.bin", 12 * MIB, seed=4)
    job = job_for(rig.url(blob), blob, rig.cache)
    path = await fetch(rig, job, chunk_size=8 * MIB, min_split_size=4 * MIB,
                       state_interval=4 * MIB)  # fmt: skip
    assert path.read_bytes() == blob.data
    ranges = sorted(r.range for r in rig.server.requests if r.range is not None)
    assert ranges[0] == (0, 8 * MIB - 1)  # the probe: a whole first chunk (few chunks)
    assert len(ranges) >= 4  # 2 chunks, yet all 4 connections got work
    assert rig.server.served_bytes() < blob.size + 2 * MIB


# ---------------------------------------------------------------------------- SIGKILL after a split
def _split_state(dest: Path) -> ResumeState | None:
    """The saved state of ``dest``'s partial if a range split off another one is finished."""
    for partial in partials_for(dest):
        try:
            state = ResumeState.from_json(state_path(partial).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if state.ranges is not None:
            plan = ChunkPlan(state.size, state.chunk_size, state.written, state.ranges)
            split_off = range(-(-state.size // state.chunk_size), plan.count)
            if any(plan.is_done(i) for i in split_off):
                return state
    return None


async def test_sigkill_after_a_split_resumes(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    server = MirrorServer(root, rate_limit=16 * MIB)
    await server.start()
    try:
        blob = put(root, "split/model.onnx", 16 * MIB, seed=5)
        server.add_fault(Fault("drip", path="*split/model.onnx", rate=8 * KIB,
                               only_start_above=4 * MIB - 1))  # fmt: skip
        cache = tmp_path / "cache"
        job = job_for(f"{server.url}/{blob.rel}", blob, cache)
        args = json.dumps({"cache": str(cache), "chunk": 4 * MIB, "name": blob.rel,
                           "url": job.urls[0], "sha": blob.sha, "size": blob.size,
                           "dest": str(job.dest)})  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        state: ResumeState | None = None
        async with await anyio.open_process(
            [sys.executable, "-c", CHILD, args], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ) as proc:  # fmt: skip
            for _ in range(1000):  # bounded: 20 s
                state = await anyio.to_thread.run_sync(_split_state, job.dest)
                if state is not None or proc.returncode is not None:
                    break
                await anyio.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        assert state is not None, "no resume state with a finished stolen range"
        assert not job.dest.exists()
        kept = _split_state(job.dest)
        assert kept is not None and sum(kept.written) > 0
        plan = ChunkPlan(kept.size, kept.chunk_size, kept.written, kept.ranges)
        server.clear_faults()
        mark = len(server.requests)
        lines = await run_child(args)
        assert lines[-1].strip() == f"OK {job.dest}"
        resumed = [line for line in lines if line.startswith("resumed ")]
        assert resumed and int(resumed[0].split()[1]) == plan.done_bytes
        assert job.dest.read_bytes() == blob.data and not list(partials_for(job.dest))
        # the second run asked only for bytes the first had not finished
        for request in server.requests[mark:]:
            assert request.range is not None and request.range[1] is not None
            first = request.range[0]
            assert not any(
                plan.is_done(i) and plan.bounds(i)[0] <= first < plan.bounds(i)[1]
                for i in range(plan.count)
            ), request.range
        second = sum(r.body_bytes for r in server.requests[mark:])
        assert second <= blob.size - plan.done_bytes + 1 * MIB, second
    finally:
        await server.stop()


# ---------------------------------------------------------------------------- unknown size
async def test_unknown_size_is_chunked_after_a_ranged_probe(rig: Rig) -> None:
    blob = put(rig.root, "nosize/big.bin", 3 * MIB + 5, seed=6)
    job = job_for(rig.url(blob), blob, rig.cache, size=None)
    events = Events()
    path = await fetch(rig, job, events)
    assert path.read_bytes() == blob.data
    ranges = [r.range for r in rig.server.requests]
    assert ranges[0] == (0, 256 * KIB - 1)  # the probe: the first chunk
    assert all(r is not None for r in ranges) and len(ranges) == 13
    assert [e.total for e in events.of("planned")] == [None, blob.size]
    assert events.total("verified") == blob.size and events.of("done")[0].total == blob.size


async def test_unknown_size_resumes_from_its_recorded_size(rig: Rig) -> None:
    rig.server.rate_limit = 1 * MIB
    blob = put(rig.root, "nosize/resume.bin", 2 * MIB, seed=7)
    job = job_for(rig.url(blob), blob, rig.cache, size=None)
    halfway = anyio.Event()
    events = Events()

    def watch(event: object) -> None:
        events(event)  # type: ignore[arg-type]
        if events.total("transfer") >= blob.size // 2:
            halfway.set()

    engine, transport, _ = rig.engine(watch)  # type: ignore[arg-type]
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(engine.fetch, job)
            await halfway.wait()
            group.cancel_scope.cancel()
    finally:
        await transport.aclose()
    assert len(rig.leftovers(job)) == 1
    rig.server.rate_limit = None
    before = len(rig.server.requests)
    again = Events()
    assert (await fetch(rig, job, again)).read_bytes() == blob.data
    assert again.of("resumed") and again.of("resumed")[0].nbytes >= blob.size // 2
    assert all(r.range is not None and r.range[0] > 0 for r in rig.server.requests[before:])


async def test_unknown_size_range_ignored_reads_the_probe_answer(rig: Rig) -> None:
    blob = put(rig.root, "nosize/whole.bin", 1 * MIB, seed=8)
    rig.server.add_fault(Fault("ignore_range", path="*whole.bin", times=None))
    job = job_for(rig.url(blob), blob, rig.cache, size=None)
    assert (await fetch(rig, job)).read_bytes() == blob.data
    assert [(r.range, r.status) for r in rig.server.requests] == [((0, 256 * KIB - 1), 200)]


async def test_unknown_size_empty_file_is_one_plain_stream(rig: Rig) -> None:
    blob = put(rig.root, "nosize/empty.bin", 0)
    job = job_for(rig.url(blob), blob, rig.cache, size=None)
    path = await fetch(rig, job)
    assert path.read_bytes() == b""
    assert [(r.range, r.status) for r in rig.server.requests] == [((0, 256 * KIB - 1), 416),
                                                                  (None, 200)]  # fmt: skip


@pytest.fixture
async def rangeless(tmp_path: Path) -> AsyncIterator[tuple[str, bytes, list[str | None]]]:
    """A server that ignores Range and sends its body chunked (no Content-Length)."""
    body = os.urandom(700 * KIB)
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Range"))
        response = web.StreamResponse(status=200)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 64 * KIB):
            await response.write(body[start : start + 64 * KIB])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/file.bin", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/file.bin", body, seen
    finally:
        await runner.cleanup()


async def test_unknown_size_without_any_length_falls_back_to_a_stream(
    rangeless: tuple[str, bytes, list[str | None]], tmp_path: Path
) -> None:
    import hashlib

    from asynchub._cache.layout import cache_path
    from asynchub._engine.engine import FileJob

    url, body, seen = rangeless
    cache = tmp_path / "cache"
    sha = hashlib.sha256(body).hexdigest()
    job = FileJob("file.bin", (url,), sha, None, cache_path(cache, "file.bin", sha))
    config = fast_config(cache)
    transport = Transport(config)
    try:
        path = await Engine(config, transport).fetch(job)
    finally:
        await transport.aclose()
    assert path.read_bytes() == body
    assert seen == [f"bytes=0-{256 * KIB - 1}", None]  # the probe, then one plain GET
    assert not list(partials_for(job.dest))


# ---------------------------------------------------------------------------- early writeback
async def test_writeback_flushes_every_64_mib_hashed(tmp_path: Path) -> None:
    from asynchub._engine.engine import WRITEBACK, _writeback
    from asynchub._engine.hashing import HashCursor

    path = tmp_path / "partial"
    with open(path, "wb") as handle:
        handle.truncate(2 * WRITEBACK + MIB)  # sparse: hashing reads zeros fast
    fd = os.open(path, os.O_RDONLY)
    synced: list[int] = []
    cursor = HashCursor(fd)

    def sync(descriptor: int) -> None:
        assert descriptor == fd
        synced.append(cursor.hashed)

    async def hashed_and_synced(size: int, flushes: int) -> None:
        await cursor.hexdigest(size)
        for _ in range(500):  # bounded: the flush runs in a worker thread
            if len(synced) >= flushes:
                return
            await anyio.sleep(0.01)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(cursor.run)
            group.start_soon(_writeback, fd, cursor, sync)
            await hashed_and_synced(WRITEBACK // 2, 0)
            assert synced == []  # less than 64 MiB hashed: nothing flushed yet
            await hashed_and_synced(WRITEBACK, 1)
            await hashed_and_synced(2 * WRITEBACK, 2)
            await hashed_and_synced(2 * WRITEBACK + MIB, 2)
            group.cancel_scope.cancel()
    finally:
        os.close(fd)
    assert synced == [WRITEBACK, 2 * WRITEBACK]
