"""Adaptive connection count: the controller driven by models of servers (behaviour, not
timings: time and bytes are simulated), then the engine against real loopback servers."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from asynchub._engine.adaptive import (
    FIRST_WINDOW,
    MAX_WARMUP,
    MIN_POLL,
    MIN_WARMUP,
    START,
    START_POLL,
    WARMUP,
    WINDOW,
    Widener,
)
from asynchub._engine.engine import Engine
from tests.test_transfer import KIB, MIB, Blob, fast_config, job_for
from tests.transports import Transport

MB = 1_000_000
Model = Callable[[int, float], float]  # (connections, time) -> bytes/s


def simulate(
    model: Model, maximum: int = 40, seconds: float = 5.0, ceiling: float = 0.0
) -> list[int]:
    """Widths chosen every 10 ms while ``model`` serves the file."""
    widener = Widener(maximum, ceiling=ceiling)
    moved, width, widths = 0.0, widener.width, []
    for step in range(int(seconds / 0.01)):
        now = step * 0.01
        moved += model(width, now) * 0.01
        width = widener.observe(now, int(moved))
        widths.append(width)
    return widths


def per_connection_cap(n: int, now: float) -> float:
    return 25 * MB * n  # a CDN edge: every connection capped, the link is not


def total_cap(n: int, now: float) -> float:
    return min(25 * MB * n, 100 * MB)  # the link (or the server) caps the total


def collapsing(n: int, now: float) -> float:
    return 300 * MB if n <= 4 else 300 * MB * 4 / n  # slower with more connections


def cpu_bound(n: int, now: float) -> float:
    return 1000 * MB * min(n, 2) / 2  # loopback: two cores are the limit at 2 connections


def settled(widths: list[int]) -> int:
    """The width used most over the last two simulated seconds (re-probes are brief)."""
    late = widths[-200:]
    return max(set(late), key=late.count)


def test_per_connection_cap_adds_connections_up_to_the_maximum_quickly() -> None:
    widths = simulate(per_connection_cap)
    assert widths[0] == START
    assert max(widths[:40]) == 40  # within 0.4 s of simulated time
    assert set(widths) == {START, 40}  # 8 x 4 is near the top: straight to 40, not 32
    assert widths[-1] == 40


def faster_than_the_hash(n: int, now: float) -> float:
    return 1500 * MB  # an uncapped loopback mirror: 8 connections already outrun SHA-256


def test_a_link_faster_than_the_hash_keeps_the_starting_width() -> None:
    """Past the rate the file can be hashed (the ceiling), more connections cannot end a
    verified download sooner: no first widening, and no re-probe while it holds there."""
    assert max(simulate(faster_than_the_hash)[:40]) > START  # without a ceiling: the probe
    widths = simulate(faster_than_the_hash, ceiling=1000 * MB)
    assert max(widths) == START


def test_a_ceiling_the_link_has_not_reached_does_not_stop_the_ramp() -> None:
    widths = simulate(per_connection_cap, ceiling=1000 * MB)  # 8 capped connections: 200 MB/s
    assert max(widths[:40]) == 40
    assert widths[-1] == 40


def test_a_hold_below_the_ceiling_is_still_re_probed() -> None:
    widths = simulate(total_cap, ceiling=1000 * MB)  # 100 MB/s: far below it
    assert settled(widths) <= START
    assert max(widths[100:]) > START  # a doubling is tried now and then


def test_total_cap_stops_adding_and_gives_back() -> None:
    widths = simulate(total_cap)
    assert settled(widths) <= START
    late = widths[100:]  # after the first second: held, except short re-probes
    assert sum(w <= START for w in late) / len(late) > 0.8


def test_a_server_that_slows_with_more_connections_gets_fewer() -> None:
    widths = simulate(collapsing)
    assert settled(widths) <= 4
    assert sum(w <= 4 for w in widths[100:]) / len(widths[100:]) > 0.8


def test_cpu_bound_loopback_settles_at_a_handful() -> None:
    widths = simulate(cpu_bound)
    assert settled(widths) <= START
    assert max(widths[100:]) <= 2 * START  # re-probes are one doubling at most


def test_a_noisy_cpu_bound_link_is_not_walked_up_by_re_probes() -> None:
    """Loopback with the CPU as the limit: the rate does not grow with connections, but it
    wanders by up to a quarter from one 50 ms stretch to the next (hashing, the server and
    the machine share two cores). A re-probe measured in a fast stretch must not pass for a
    gain: it is judged against the best hold window, and a doubling must bring a third of
    its linear gain, as a step of the first ramp must (with 10 % over the last hold
    window, most of these downloads climbed to 32 or 40 connections)."""

    def noisy(seed: int) -> Model:
        rng = random.Random(seed)
        factors = [1 + rng.uniform(-0.25, 0.25) for _ in range(200)]

        def model(n: int, now: float) -> float:
            return 800 * MB * factors[int(now / 0.05) % len(factors)]

        return model

    for seed in range(12):
        widths = simulate(noisy(seed), seconds=6)
        late = widths[100:]
        assert settled(widths) <= START, seed
        assert max(late) <= 2 * START, seed  # one doubling tried, never kept
        assert sum(w > START for w in late) / len(late) < 0.15, seed


def test_a_ramp_on_a_warming_cpu_bound_link_is_checked_and_given_back() -> None:
    """Loopback with the CPU as the limit, and a process still warming up: the rate climbs
    from 250 to 800 MB/s between 0.05 and 0.25 s whatever the width, so each step of the ramp
    seems to pay a little (a third of the linear gain or more, not the seven tenths a capped
    link shows) and the width reaches the maximum. Such a ramp is checked once it holds:
    half the width is kept when it is no more than 10 % slower, and the halving goes on
    while that holds. The width is back to a handful within a second of simulated time
    (without the check it stayed at 40)."""

    def warming(n: int, now: float) -> float:
        return (250 + 550 * min(1.0, max(0.0, (now - 0.05) / 0.2))) * MB

    widths = simulate(warming, seconds=4)
    assert max(widths[:40]) >= 32  # the ramp was fooled
    assert max(widths[150:]) <= 2 * START
    assert settled(widths) <= START


def test_a_check_looks_twice_past_the_connections_leaving() -> None:
    """The same warming, CPU-bound link, where the rate also dips by half for 40 ms each time
    connections are given back (they finish their pieces and leave while the others take
    up the work): the first window of a check falls in that dip and fails, the second one
    passes, and the width still comes back to a handful (judged on the first window alone,
    it stayed at 40)."""
    state = {"width": 0, "dip_until": 0.0}

    def dipping(n: int, now: float) -> float:
        if n < state["width"]:
            state["dip_until"] = now + 0.04
        state["width"] = n
        rate = (250 + 550 * min(1.0, max(0.0, (now - 0.05) / 0.2))) * MB
        return rate / 2 if now < state["dip_until"] else rate

    widths = simulate(dipping, seconds=4)
    assert max(widths[:40]) >= 32
    assert max(widths[200:]) <= 2 * START
    assert settled(widths) <= START


def test_a_step_more_than_linear_after_a_slow_first_window_is_checked() -> None:
    """A CPU-bound link whose first window is very slow (a cold process: 120 MB/s for the
    first 0.08 s, then 800 whatever the width): the step to 32 seems to pay more than its
    linear gain, which only a slow baseline explains. The ramp is checked, and the width
    comes back to a handful (trusted as a per-connection cap, it stayed at 32)."""

    def cold_start(n: int, now: float) -> float:
        return (120 if now < 0.08 else 800) * MB

    widths = simulate(cold_start, seconds=4)
    assert max(widths[:40]) >= 32
    assert max(widths[150:]) <= 2 * START
    assert settled(widths) <= START


def test_a_capped_link_filling_up_near_the_top_is_not_checked() -> None:
    """A per-connection cap, and a machine that tops out at 900 MB/s: the first step pays as
    a cap does (seven tenths of the linear gain or more), the last one (32 -> 40) only half.
    The ramp is not doubted: the width stays at the maximum, with no window at half."""

    def filling(n: int, now: float) -> float:
        return min(per_connection_cap(n, now), 900 * MB)

    widths = simulate(filling, seconds=4)
    first = widths.index(40)
    assert first <= 40
    assert min(widths[first:]) == 40


def test_a_capped_ramp_whose_middle_window_fell_short_is_not_checked() -> None:
    """A per-connection cap where the connections added to the first eight deliver half
    their rate for their first 0.1 s (connecting, then paced in bursts): the window at 32
    shows only half the linear gain over 8, and the one at 40 more than linear over 32, but
    40 against the first window shows what the cap gives. The width reaches the maximum and
    stays there, with no check at half (judged step by step, the ramp was doubted and the
    check halved it to 20 for 0.1 s)."""
    started: list[float] = []

    def ramping(n: int, now: float) -> float:
        while len(started) < n:
            started.append(now if now > 0 else -1.0)  # the first eight: already running
        del started[n:]
        return sum(25 * MB * (0.5 if now - t < 0.1 else 1.0) for t in started)

    widths = simulate(ramping, seconds=3)
    first = widths.index(40)
    assert first <= 40
    assert min(widths[first:]) == 40


def test_never_more_connections_when_the_server_slows_down() -> None:
    def slowing(n: int, now: float) -> float:  # at 2 s the server starts to mind connections
        return per_connection_cap(n, now) if now < 2 else collapsing(n, now) / 3

    widths = simulate(slowing, seconds=20)
    at_slowdown = widths[199]
    assert at_slowdown == 40
    assert max(widths[200:]) <= at_slowdown
    assert settled(widths) < START  # halved while it paid (to 5 here: 4 is no better)


def test_a_short_slow_spell_keeps_the_connections() -> None:
    """A capped CDN, and a client that has a slow spell as long as a hold window (0.2 s) at a
    third of the rate (a busy machine, a page-cache flush): the width stays at the maximum,
    wherever the spell falls against the windows. The same spell for 0.6 s halves it, as a
    server that slowed down would; it comes back within a second."""
    def spell(start: float, length: float) -> Model:
        def model(n: int, now: float) -> float:
            slow = start <= now < start + length
            return per_connection_cap(n, now) / (3 if slow else 1)

        return model

    for start in (1.0, 1.05, 1.1, 1.15):
        short = simulate(spell(start, 0.2), seconds=3)
        assert short[50] == 40 and min(short[50:]) == 40
        long = simulate(spell(start, 0.6), seconds=3)
        assert min(long[50:]) == 20
        assert long[-1] == 40


def test_a_slow_start_does_not_hold_the_width_down_for_long() -> None:
    """A capped CDN, and a client that is slow for its first 0.3 s (a process and a machine
    warming up): the first step measures no gain and the width settles at the start. It is
    tried again soon and reaches the maximum within a second of simulated time (a fixed 1 s
    between tries reached it after 1.3 s)."""
    def cold(n: int, now: float) -> float:
        rate = per_connection_cap(n, now)
        return min(rate, 150 * MB) if now < 0.3 else rate

    widths = simulate(cold, seconds=3)
    assert widths[20] == START  # the 8 -> 32 step did not pay while cold: back to 8
    assert max(widths[:100]) == 40
    assert widths[-1] == 40


def test_a_step_judged_in_a_short_spell_is_measured_again_before_giving_back() -> None:
    """A capped CDN, and a machine slow until 0.13 s (its first window at 32 connections
    mostly falls in that spell, and shows too little gain): the step is measured once more
    before the extra connections are given back, and the width reaches the maximum within
    0.3 s (giving back at once held it at 8 until 0.68 s)."""

    def spell(n: int, now: float) -> float:
        rate = per_connection_cap(n, now)
        return min(rate, 200 * MB) if now < 0.13 else rate

    widths = simulate(spell, seconds=2)
    assert widths.index(40) <= 30
    assert min(widths[10:]) >= 32


def test_re_probes_back_off_where_more_connections_never_pay() -> None:
    """Behind a total cap, the first try of one doubling comes soon after the width settled,
    then the tries come less often, at most about a second apart (hold windows are 0.2 s)."""
    widths = simulate(total_cap, seconds=6)
    settled_at = next(i for i in range(1, len(widths)) if widths[i] < widths[i - 1])
    tries = [i for i in range(settled_at, len(widths)) if widths[i] > widths[i - 1]]
    assert (tries[0] - settled_at) / 100 <= 0.5
    gaps = [(b - a) / 100 for a, b in itertools.pairwise(tries)]
    assert len(gaps) >= 3
    assert gaps[0] < gaps[-1] <= 1.5


def test_maximum_is_respected_and_a_single_connection_is_fine() -> None:
    assert max(simulate(per_connection_cap, maximum=6)) == 6
    assert set(simulate(per_connection_cap, maximum=1)) == {1}


def _slow_to_answer(latency: float, learned: float | None) -> list[int]:
    """Widths every 10 ms against a capped CDN whose new connections deliver nothing for
    ``latency`` seconds (connect, TLS, first byte), with the first request's latency told to
    the controller (``learned``) or not."""
    widener = Widener(40)
    if learned is not None:
        widener.learn_latency(learned)
    started: list[float] = [-1.0] * widener.width  # the first ones already deliver
    moved, widths = 0.0, []
    for step in range(300):
        now = step * 0.01
        moved += sum(25 * MB * 0.01 for t in started if now >= t + latency)
        width = widener.observe(now, int(moved))
        if width > len(started):
            started += [now] * (width - len(started))
        del started[width:]
        widths.append(width)
    return widths


def test_warm_up_follows_the_latency_of_the_first_request() -> None:
    widener = Widener(40)
    assert widener.warmup == WARMUP
    widener.learn_latency(0.001)  # loopback
    assert widener.warmup == WARMUP
    widener.learn_latency(0.15)  # a distant CDN: connect, TLS and first byte
    assert widener.warmup == pytest.approx(0.3)
    widener.learn_latency(30.0)
    assert widener.warmup == MAX_WARMUP


def _first_change(
    widener: Widener, per_conn: float, now: float = 0.0, moved: float = 0.0
) -> tuple[float, float]:
    """When the width next changes (and the bytes moved by then), on a link where each
    connection moves ``per_conn`` bytes/s, with :meth:`Widener.observe` called every
    millisecond from ``now``."""
    step, width = 0.001, widener.width
    while widener.width == width:
        widener.observe(now, int(moved))
        now += step
        moved += widener.width * per_conn * step
    return now, moved


def test_the_first_window_is_shorter_than_the_next_ones() -> None:
    """The starting width is measured over FIRST_WINDOW x WINDOW after the warm-up (it is only
    the baseline); the widened one over a whole WINDOW."""
    widener = Widener(400)
    first, moved = _first_change(widener, 25e6)
    assert first == pytest.approx(WARMUP + FIRST_WINDOW * WINDOW, abs=0.003)
    assert widener.width == START * 4
    second, _ = _first_change(widener, 25e6, first, moved)
    assert second - first == pytest.approx(WARMUP + WINDOW, abs=0.003)
    assert widener.width == START * 16
    assert first < 0.8 * (second - first)


def test_the_warm_up_ends_once_every_connection_flows() -> None:
    """A caller that tells whether every connection receives its body is polled soon, and the
    first window starts once they all do (not before MIN_WARMUP); one that does not tell
    waits the whole warm-up."""
    widener = Widener(40)
    widener.observe(0.0, 0, flowing=False)
    assert widener.poll == START_POLL  # not all flowing yet: look again soon
    now = START_POLL
    widener.observe(now, 1 * MIB, flowing=True)  # all flow, but too soon after the start
    assert widener.poll == pytest.approx(MIN_WARMUP - now + MIN_POLL)
    now = MIN_WARMUP + MIN_POLL
    widener.observe(now, 2 * MIB, flowing=True)  # the warm-up is over: the window starts
    assert widener.poll == pytest.approx(FIRST_WINDOW * WINDOW + MIN_POLL)
    first, _ = _first_change(widener, 25e6, now, 2 * MIB)
    assert first == pytest.approx(MIN_WARMUP + FIRST_WINDOW * WINDOW, abs=0.003)
    assert first < WARMUP + FIRST_WINDOW * WINDOW - 0.01

    distant = Widener(40)
    distant.learn_latency(0.15)  # a warm-up of 0.3 s is polled every 30 ms, not every 2
    distant.observe(0.0, 0, flowing=False)
    assert distant.poll == pytest.approx(0.03)

    silent = Widener(40)
    silent.observe(0.0, 0)
    assert silent.poll == pytest.approx(WARMUP + MIN_POLL)
    silent.observe(MIN_WARMUP + MIN_POLL, 2 * MIB, flowing=None)
    assert silent.poll == pytest.approx(WARMUP - MIN_WARMUP)  # still warming up


def test_a_distant_server_is_measured_after_its_new_connections_answer() -> None:
    """New connections that take 0.15 s to answer: measured too early, the wider step looks
    no better and the width stays low; after a warm-up learned from the first request, it
    reaches the maximum."""
    assert max(_slow_to_answer(0.15, learned=0.15)) == 40
    assert settled(_slow_to_answer(0.15, learned=None)) < 40


# ---------------------------------------------------------------------------- real servers
class PacedServer:
    """Serves one file's ranges on 127.0.0.1, paced per connection (``per_conn`` bytes/s) or
    in total (``total`` bytes/s shared by every response), and samples how many responses
    are in flight every 10 ms."""

    def __init__(self, data: bytes, *, per_conn: float | None, total: float | None) -> None:
        self.data = data
        self.per_conn = per_conn
        self.total = total
        self.active = 0
        self.samples: list[int] = []
        self._next = 0.0  # the total pacer's next free time
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _pace(self, nbytes: int, started: float, sent: int) -> None:
        loop = asyncio.get_running_loop()
        if self.per_conn:
            delay = started + (sent + nbytes) / self.per_conn - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        if self.total:
            now = loop.time()
            self._next = max(self._next, now) + nbytes / self.total
            if self._next > now:
                await asyncio.sleep(self._next - now)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last), len(self.data) - 1)
        response = web.StreamResponse(status=206)
        response.headers["Content-Range"] = f"bytes {start}-{end}/{len(self.data)}"
        response.content_length = end - start + 1
        self.active += 1
        try:
            await response.prepare(request)
            loop = asyncio.get_running_loop()
            started, pos = loop.time(), start
            while pos <= end:
                block = self.data[pos : min(pos + 64 * KIB, end + 1)]
                await self._pace(len(block), started, pos - start)
                await response.write(block)
                pos += len(block)
        finally:
            self.active -= 1
        return response

    async def sample(self) -> None:
        while True:
            self.samples.append(self.active)
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> PacedServer:
        app = web.Application()
        app.router.add_get("/blob", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/blob"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def _download(server: PacedServer, blob: Blob, cache: Path) -> None:
    config = fast_config(
        cache,
        chunk_size=8 * MIB,
        min_split_size=MIB,
        max_connections=32,
        max_connections_per_host=32,
        stall_timeout=20.0,
    )
    transport = Transport(config)
    engine = Engine(config, transport)
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(server.sample)
                path = await engine.fetch(job_for(server.url, blob, cache))
                group.cancel_scope.cancel()
    finally:
        await transport.aclose()
    assert path.read_bytes() == blob.data


@pytest.mark.timeout(90)
async def test_engine_adds_connections_when_each_one_is_capped(tmp_path: Path) -> None:
    blob = Blob("blob", random.Random(3).randbytes(128 * MIB))
    async with PacedServer(blob.data, per_conn=4 * MIB, total=None) as server:
        await _download(server, blob, tmp_path / "cache")
    busy = [n for n in server.samples if n]
    assert max(busy) > 2 * START  # it widened well past the start
    assert sum(n > START for n in busy) / len(busy) > 0.5  # for most of the download


@pytest.mark.timeout(90)
async def test_engine_stops_adding_when_the_total_is_capped(tmp_path: Path) -> None:
    blob = Blob("blob", random.Random(4).randbytes(64 * MIB))
    async with PacedServer(blob.data, per_conn=None, total=32 * MIB) as server:
        await _download(server, blob, tmp_path / "cache")
    busy = [n for n in server.samples if n]
    assert sorted(busy)[len(busy) // 2] <= START  # held at the start width (probes are brief)


@pytest.mark.timeout(90)
async def test_files_sharing_a_small_budget_start_no_idle_workers(tmp_path: Path) -> None:
    """Eight files on a budget of four connections: a file widens only as far as the budget
    has tokens (plus one in line), instead of starting workers that would only queue."""
    blob = Blob("blob", random.Random(5).randbytes(8 * MIB))
    cache = tmp_path / "cache"
    jobs = [job_for("", blob, cache, name=f"copy{i}", dest=cache / f"copy{i}.onnx")
            for i in range(8)]  # fmt: skip
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            workers = [
                t for t in asyncio.all_tasks()
                if t.get_name().endswith("FileDownload._worker")
            ]  # fmt: skip
            peak = max(peak, len(workers))
            await asyncio.sleep(0.005)

    async with PacedServer(blob.data, per_conn=8 * MIB, total=None) as server:
        jobs = [job_for(server.url, blob, cache, name=j.name, dest=j.dest) for j in jobs]
        config = fast_config(
            cache, chunk_size=2 * MIB, min_split_size=MIB, max_connections=4,
            max_connections_per_host=4, stall_timeout=20.0,
        )  # fmt: skip
        transport = Transport(config)
        engine = Engine(config, transport)
        try:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(watch)
                    results = await engine.fetch_many(jobs)
                    group.cancel_scope.cancel()
        finally:
            await transport.aclose()
    assert all(isinstance(r, Path) and r.read_bytes() == blob.data for r in results)
    assert 4 <= peak <= 2 * len(jobs)  # not START (8) per file: 64


def test_a_step_given_back_is_tried_again_against_the_narrower_width() -> None:
    """A per-connection cap on a machine that tops out near the top of the ramp: until 0.6 s
    it delivers 860 MB/s at most (32 connections give 800, 48 only 7.5 % more, so the step is
    given back), then 950. The width held is judged by what it delivers, not by the rate the
    wider width measured: the next try of 48 (950 MB/s, 19 % over 32's 800) pays, and the
    width goes back up (judged against 860, it stayed at 32 to the end)."""

    def filling(n: int, now: float) -> float:
        return min(per_connection_cap(n, now), (860 if now < 0.6 else 950) * MB)

    widths = simulate(filling, maximum=48, seconds=4)
    assert 32 in widths[:60]
    assert widths[60] == 32  # the step was given back in the spell
    assert widths[-1] == 48


def test_the_poll_ends_at_the_warm_up_and_the_window() -> None:
    """The caller sleeps :attr:`Widener.poll` between observations: it lands just past the
    end of the warm-up, then of the window (not up to half of either late)."""
    widener = Widener(40)
    widener.observe(0.0, 0)
    now = widener.poll
    assert WARMUP < now <= WARMUP + 2 * MIN_POLL
    widener.observe(now, 0)  # the warm-up is over: the first window starts
    window = widener.poll
    assert FIRST_WINDOW * WINDOW < window <= FIRST_WINDOW * WINDOW + 2 * MIN_POLL
    now += window
    assert widener.observe(now, 10 * MIB) == 40  # decided at the first poll
    assert widener.poll == pytest.approx(WARMUP + MIN_POLL)  # the new connections' warm-up
    now += widener.poll
    widener.observe(now, 10 * MIB)
    assert widener.poll == pytest.approx(WINDOW + MIN_POLL)
    widener.observe(now + WINDOW + MIN_POLL, 10 * MIB + 1)  # long enough, but too few bytes
    assert widener.poll == pytest.approx(WINDOW / 4)
