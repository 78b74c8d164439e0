"""How many connections one file uses: as many as make it faster, measured while it downloads.

A fixed count is wrong somewhere: on a fast uncapped link (or loopback) a handful of
connections already saturate the CPU and 40 only add overhead; behind a CDN that caps each
connection (25 MB/s is common) throughput grows with every connection up to the link; and some
servers slow down as connections are added (huggingface_hub #4893: 64 connections collapsed
where 4 sustained 300 MB/s). :class:`Widener` decides from what it measures:

* **Start with a few** (:data:`START`, 8, or the maximum if lower).
* **Measure** the bytes received (counted as they arrive, not per buffer handed over) over
  windows of at least :data:`WINDOW` (0.05 s; the first one, at the starting width, only
  :data:`FIRST_WINDOW` (half) of that: it decides nothing alone, it is the baseline the first
  widening is judged against, and every millisecond of it runs at a fifth of a capped link's
  rate: a 512 MiB download on 40 capped connections took 0.71-0.72 s in the median with it,
  0.76-0.79 s with a full window) and :data:`WINDOW_BYTES` (4 MiB; at most
  :data:`MAX_WINDOW`, 2 s, on a slow link), one window per width, after a *warm-up* whenever
  connections were added (connect, TLS, first byte: a window that includes them understates
  the width's rate). The warm-up is twice what the file's first request took to its answer
  (:meth:`Widener.learn_latency`), at least :data:`WARMUP` (0.02 s) and at most
  :data:`MAX_WARMUP` (1 s): 20 ms on loopback, a few hundred on a distant CDN. It ends
  sooner once every connection of the width receives its answer's body (the caller says so
  to :meth:`Widener.observe`, and is polled every tenth of the warm-up until then, at least
  :data:`START_POLL`, 2 ms), but not before :data:`MIN_WARMUP` (4 ms). On loopback the
  connections flow within a millisecond or two: 512 MiB on 40 connections capped at 25 MB/s
  widened from 8 to 40 at 48 ms instead of 61-64, and took a median 0.648 and 0.649 s
  in-process against 0.658 and 0.657 s (ten runs each, interleaved, twice). A transport
  that does not lend its buffers (aiohttp's) cannot tell, and waits the whole warm-up.
  While holding (below), windows are :data:`HOLD_WINDOW` (0.2 s): nothing there is urgent,
  and a prefetch of many files polls less.
* **Grow while it pays.** After a window at width ``w`` following one at ``p < w``, the
  *efficiency* is how much of the linear gain arrived: ``(R(w)/R(p) - 1) / (w/p - 1)``. At
  :data:`FAST` (0.7) or better the bottleneck is per connection: the width is multiplied by 4
  (so a capped CDN reaches 32-40 connections within ~0.3 s, which keeps the ramp's cost
  near 10 % of a fixed best setting on a 1 GiB file); at :data:`SLOW` (0.3) or better, by 2;
  below that the extra connections are not worth what they cost and are given back. A
  step that would reach three quarters of the maximum (:data:`NEAR_TOP`) goes all the way:
  from 8 straight to 40 rather than 32, then 40. The last quarter is a step of 1.25 x, whose
  gain a 50 ms window cannot tell from noise (on this VM, 32 connections capped at 25 MB/s
  measured 829 MB/s and 40 then 884-887 in a busy spell, so 40 was given up), and every
  window spent below the top costs a capped link a fifth of its rate: a 512 MiB download on
  40 connections capped at 25 MB/s took a median 0.684 s in-process against 0.699 s
  (six runs each, interleaved).
* **A doubtful ramp is checked.** A step that paid only between :data:`SLOW` and
  :data:`FAST` is what a process still warming up shows on a link where the CPU is the
  limit (the rate climbs whatever the width): a 1 GiB download from an uncapped loopback
  mirror measured 325 MB/s on 8 connections in its first window, then 522-630 on 32 and
  788 on 40, and held 40 connections to the end (2.2 CPU-s against 2.0-2.1 on 8). Once
  such a width has held for :data:`REPROBE_FIRST`, half of it is tried and kept if it is at
  most :data:`CHECK_LOSS` (20 %) slower than the last hold window, and the halving goes on
  while each half stays that close to the best rate seen (down to :data:`FLOOR`). Where
  connections are the limit, half of them give half the rate; where the CPU is, about the
  same rate, give or take the quarter by which windows wander on this 2-core VM (10 % was
  missed by most checks). A check that fails is measured once more before the width goes
  back up: its first window includes the connections that are leaving, and a hash catching
  up on the holes they leave (in a 1 GiB download from a loopback mirror, 20 connections
  measured 150-460 MB/s in the first window after 40, which had measured 1,260-1,520).
  Only a ramp whose earlier steps never paid :data:`FAST` is doubted: on a capped link the
  first step pays that, and a later step that pays less is the link or the machine filling
  up near the top (40 connections capped at 25 MB/s on this VM): halving that width for a
  window cost 1 GiB downloads 20-40 ms. A step that paid more than :data:`TOO_GOOD` (1.5)
  times the linear gain proves nothing (connections cannot add more than their own rate):
  its baseline was slow, and the ramp is doubted (8 connections measured 179 MB/s in the
  first window of a 1 GiB loopback download, 32 then 1,372). For the first step, judged
  against the first window itself, that bound is :data:`LINEAR_SPAN`, as for the whole
  ramp below: a fivefold step averages out more noise, and a cold start of 120 MB/s on 8
  connections, then 800 on 40, is 1.42 times the linear gain. Later steps are not doubted
  for it if an earlier step paid as a cap does (then it is the noise of a 50 ms window: 32
  connections capped at 25 MB/s measured 825 MB/s, 40 then 1,225). **The whole ramp counts
  too:** a step whose rate, judged against the *first* window, shows between :data:`FAST`
  and :data:`LINEAR_SPAN` (1.25) times the linear gain, is a per-connection cap whose middle
  window fell short (its new connections still starting, or the server pacing them in
  bursts), and clears the doubt; so does a hold window at the top that shows it (the jump
  from 8 to 40 measured 779 MB/s on 40 in its first window, 0.58 of linear, then 960 in the
  first hold window, 0.78).
  Behind nginx capped at 25 MB/s per connection, 8 connections measured 246 MB/s, 32 then
  700 (0.62 of linear) and 40 1,111: 0.88 of linear since the first window, and without
  this rule the check halved the width to 20 for 0.1 s (a 512 MiB download: 0.76 s
  in-process, 0.67-0.69 s in the runs without a check). A warming CPU-bound link stays
  doubted: its rate climbs by a small factor while the width grows fivefold (325 MB/s on 8,
  788 on 40: 0.36 of linear), and a cold start by much more than linear (120 MB/s, then
  800: 1.4).
* **Not past the hash.** A verified download ends when its SHA-256 does, and SHA-256 runs on
  one core. Once the connections deliver more than the file can be hashed (``ceiling``),
  more of them only add CPU (connections, heads, each request's share at both ends) on a
  machine that is then the limit: a first window at or above the ceiling keeps the starting
  width (no first widening), and a width that holds at or above it is not re-probed upwards.
  The engine gives 1 GB/s, or the SHA-256 speed its hash cursor measured if that is lower;
  not a higher measured speed, which is that of a core of its own while the hash shares the
  cores with the download (on this 2-core VM SHA-256 ran at 1.6 GB/s per CPU-second while
  the connections delivered 1.2 GB/s with both cores busy; a ceiling at 1.6 GB/s let the
  width be re-probed to 16 mid-download). On the uncapped loopback mirror (1 GiB; 8
  connections measured 1.5-2 GB/s in their first window) the probe to 32 connections held
  the prefix the hash follows at ~65 MiB for ~0.15 s while 32 small ranges crept in, and the
  width came back to 8 soon after: median 1.03 s in-process with the ceiling against 1.08 s
  without (12 runs, interleaved). A capped link measures far below it (8 connections at
  25 MB/s are 200 MB/s) and ramps as below.
* **Stop and give back** when a step gained less than :data:`MIN_GAIN` (10 %), or too little
  for the connections it added: the width goes back to the previous one (the extra
  connections finish their current range and leave), and the controller holds. **Such a
  verdict is measured twice** (one more window at the wider width, against the same
  baseline) before the connections are given back: on this 2-core VM a window of 50 ms
  often falls in a short spell (the machine or the server warming up, new connections still
  starting), and in 2 of 6 downloads of 512 MiB at 25 MB/s per connection the 8 -> 32 step
  measured too little and the width went back to 8 for 0.4 s (1.36-1.43 s in-process against
  0.92-0.98 s); a link where more connections do not pay costs one window more. The width
  given back to is then judged by the rate it measured itself, not by the wider one's: on
  this VM a 1 GiB download capped at 25 MB/s per connection measured 829 MB/s on 32
  connections and 884-887 on 40 in a busy spell, gave the 8 back, and the next try of 40
  (958 MB/s, 18 % over 32's hold windows) was judged against 884 and failed: 32 connections
  to the end, 1.45 s in-process instead of 1.2.
* **Never collapse.** A step that made things slower (by :data:`DOWN_GAIN`, 25 %) is undone
  at once and half the width is tried (kept only if it is 25 % faster: noise must not walk
  the width down), never below :data:`FLOOR` (4, the count that sustained where 64
  collapsed; on a busy machine, rates measured over short windows are noisy enough that a lower
  floor walked down to one connection, which pays a request gap per range). While holding, a drop
  below :data:`DROP` (60 %) of the rate measured when it settled, in :data:`DROP_WINDOWS` (2)
  hold windows in a row, halves the width (a server that slows down under load gets fewer
  connections, never more), and one doubling is tried again now and then, kept only if it
  pays as a step of the ramp must (:data:`SLOW`: a third of the linear gain, so 30 % for a
  doubling, and at least :data:`MIN_GAIN`), measured against the best hold window since the
  width settled, not the last one. Where the CPU is the limit (an uncapped loopback mirror),
  rates wander by a quarter between windows; judged by 10 % over the last 0.2 s hold
  window, a 50 ms probe in a fast stretch passed for a gain, and 1 GiB downloads there
  climbed back to 32-40 connections in 3 of 6 runs (2.3-2.4 CPU-s instead of 2.1-2.2).
  The tries come (conditions change): :data:`REPROBE_FIRST` (0.25 s) after the width settled, then
  twice as long after each try that did not pay, up to :data:`REPROBE` (1 s). The first
  judgements are the least reliable ones (the shortest windows, at a moment when new
  connections, the process and the machine are all warming up): in a 1 GiB download capped
  at 25 MB/s per connection, started after the machine had been idle for a while, the step
  from 8 to 32 connections measured no gain, and with a fixed 1 s the download then ran on 8
  connections (a quarter of the rate) for a second; on a link where more connections do
  not pay, the quicker first tries cost two short windows more.

  One slow window is not enough to halve the width: on a busy machine the client itself
  has slow spells (the page cache reclaimed, another process), which fewer
  connections do not cure, and the tail of a download is slower as its work runs out,
  whatever the server does. On this 2-core VM a 1 GiB download capped at 25 MB/s per
  connection halved its 40 connections in 7 runs of 8 with a single window (once down to 10:
  2.8 s instead of 1.4 s); spells longer than two windows still halve it, and the next
  window undoes that when fewer connections did not pay.

The per-hub maximum (``HubConfig.max_connections``) bounds it, and the shared connection
budget of the engine still applies: a width is a wish, each connection still needs a token.
Pure logic: time and byte counts come from the caller, so the tests drive it with models of
servers (a total cap, a per-connection cap, a server that slows down with more connections).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "DOWN_GAIN",
    "DROP",
    "CHECK_LOSS",
    "DROP_WINDOWS",
    "FIRST_WINDOW",
    "FLOOR",
    "FAST",
    "LINEAR_SPAN",
    "HOLD_WINDOW",
    "MAX_WARMUP",
    "MIN_GAIN",
    "MIN_POLL",
    "MIN_WARMUP",
    "NEAR_TOP",
    "REPROBE",
    "REPROBE_FIRST",
    "SLOW",
    "START",
    "START_POLL",
    "TOO_GOOD",
    "WARMUP",
    "WINDOW",
    "WINDOW_BYTES",
    "Widener",
]

START = 8
FLOOR = 4
WINDOW = 0.05
FIRST_WINDOW = 0.5
HOLD_WINDOW = 0.2
WINDOW_BYTES = 4 * 1024 * 1024
MAX_WINDOW = 2.0
WARMUP = 0.02
MAX_WARMUP = 1.0
DOWN_GAIN = 0.25
FAST = 0.7
SLOW = 0.3
MIN_GAIN = 0.10
DROP = 0.6
DROP_WINDOWS = 2
REPROBE = 1.0
REPROBE_FIRST = 0.25
CHECK_LOSS = 0.2
TOO_GOOD = 1.5
LINEAR_SPAN = 1.25
NEAR_TOP = 4 / 3
MIN_POLL = 0.001
MIN_WARMUP = 0.004
START_POLL = 0.002


class _Probe(NamedTuple):
    """A width being tried: the width and rate before it, which way it went, and whether it
    checks a doubtful ramp (and has measured its second window)."""

    width: int
    rate: float
    direction: int
    check: bool = False
    looked_twice: bool = False


class Widener:
    """The target connection count of one file (see the module docstring)."""

    def __init__(
        self, maximum: int, *, start: int = START, window: float = WINDOW, ceiling: float = 0.0
    ) -> None:
        self.maximum = max(1, maximum)
        self.ceiling = ceiling  # bytes/s past which widening cannot pay (0: none)
        self.width = min(max(1, start), self.maximum)
        self.window = window
        self.warmup = WARMUP
        self.holding = self.width >= self.maximum
        self._since: float | None = None  # start of the current window
        self._now = 0.0  # the time of the last observe
        self._base = 0  # bytes at that start
        self._previous: tuple[int, float] | None = None  # (width, rate) of the last window
        self._first: tuple[int, float] | None = None  # (width, rate) of the ramp's first one
        self._held_rate = 0.0
        self._low = 0  # hold windows in a row below DROP x the held rate
        self._held_since = 0.0
        self._probe: _Probe | None = None  # the probe under way
        self._doubtful = False  # a step of the ramp paid only a little (see _grow)
        self._linear = False  # a step of the ramp paid as a per-connection cap does
        self._reprobe = REPROBE_FIRST  # how long to hold before trying one doubling again
        self._warming = False
        self._confirmed = False  # a step without gain was measured a second time
        self._flowing: bool | None = None  # what the caller last said (see observe)

    def learn_latency(self, seconds: float) -> None:
        """What one request took from sending to its answer here: new connections get twice
        that before their window counts (see the module docstring)."""
        self.warmup = min(MAX_WARMUP, max(WARMUP, 2 * seconds))

    @property
    def poll(self) -> float:
        """How long until :meth:`observe` can next decide something: the end of the warm-up
        or of the window under way (a little past it, at least :data:`MIN_POLL`), or a
        quarter of the window while one that has lasted long enough waits for its bytes.
        Polls at half the span (as before) ended the first window 10-20 ms late on loopback,
        at a fifth of a capped link's rate."""
        span = self.warmup if self._warming else self._window()
        if self._since is None:
            return MIN_POLL
        left = self._since + span - self._now
        if self._warming and self._flowing is not None:  # the warm-up may end early
            if self._flowing:
                left = min(left, self._since + MIN_WARMUP - self._now)
            elif left > (soon := max(START_POLL, self.warmup / 10)):
                return soon
        return max(MIN_POLL, left + MIN_POLL) if left > 0 else max(MIN_POLL, span / 4)

    def _window(self) -> float:
        if self.holding and self._probe is None:
            return HOLD_WINDOW
        if self._previous is None and not self.holding:
            return self.window * FIRST_WINDOW  # the first width only sets the baseline
        return self.window

    def observe(self, now: float, moved: int, *, flowing: bool | None = None) -> int:
        """Account ``moved`` (bytes received so far, monotonic) at time ``now``; return the
        width to use from now on. ``flowing``: whether every connection of the width is
        receiving its answer's body (``None``: not known); once they all are, the warm-up
        ends (after :data:`MIN_WARMUP` at least)."""
        self._now = now
        self._flowing = flowing
        if self._since is None:
            self._since, self._base = now, moved
            self._held_since = now
            self._warming = True
            return self.width
        if self._warming:  # new connections need a moment (connect, first byte)
            waited = now - self._since
            if waited < self.warmup and not (flowing and waited >= MIN_WARMUP):
                return self.width
            self._since, self._base, self._warming = now, moved, False
            return self.width
        elapsed = now - self._since
        moved_in = moved - self._base
        window = self._window()
        if elapsed < window or (moved_in < WINDOW_BYTES and elapsed < MAX_WINDOW):
            return self.width
        rate = (moved - self._base) / elapsed
        self._since, self._base = now, moved
        width = self.width
        if self._probe is not None:
            self._judge_probe(now, rate)
        elif self.holding:
            self._hold(now, rate)
        else:
            self._grow(now, rate)
        self._warming = self.width > width
        return self.width

    # ---------------------------------------------------------------- growing
    def _grow(self, now: float, rate: float) -> None:
        previous = self._previous
        self._previous = (self.width, rate)
        if previous is None:
            self._first = (self.width, rate)
            if self._enough(rate):  # already past what the hash can take
                self._settle(now, self.width, rate)
                return
            self._resize(self.width * 4)
            return
        width_before, rate_before = previous
        if rate_before <= 0:
            self._resize(self.width * 2)
            return
        gain = rate / rate_before - 1
        efficiency = gain / (self.width / width_before - 1)
        if efficiency >= SLOW and self._linear_since_first(rate):
            self._linear, self._doubtful = True, False
        if gain < -DOWN_GAIN:  # more connections made it slower: back, then try fewer
            self._settle(now, width_before, rate_before)
            self._start_probe(now, rate_before, -1)
        elif efficiency >= FAST:
            if efficiency <= (LINEAR_SPAN if previous == self._first else TOO_GOOD):
                self._linear = True
            elif not self._linear:  # more than linear: the baseline was slow (warming)
                self._doubtful = True
            self._resize(self.width * 4)
        elif efficiency >= SLOW:
            self._doubtful = not self._linear  # checked once the width holds
            self._resize(self.width * 2)
        elif not self._confirmed:  # not worth them, it seems: measure once more first
            self._confirmed = True
            self._previous = previous
        else:  # still no better, or a little better for many more: give them back
            self._settle(now, width_before, rate_before)

    def _linear_since_first(self, rate: float) -> bool:
        """Whether ``rate`` at this width shows what a per-connection cap gives, judged
        against the ramp's first window (see the module docstring)."""
        if self._first is None:
            return False
        width, first = self._first
        if first <= 0 or self.width <= width:
            return False
        return FAST <= (rate / first - 1) / (self.width / width - 1) <= LINEAR_SPAN

    def _enough(self, rate: float) -> bool:
        return 0 < self.ceiling <= rate

    def _resize(self, width: int) -> None:
        self._confirmed = False
        if width * NEAR_TOP >= self.maximum:  # the last small step is taken at once
            width = self.maximum
        width = max(1, min(self.maximum, width))
        if width == self.width:
            self.holding = True
        self.width = width

    def _settle(self, now: float, width: int, rate: float) -> None:
        self.width = width
        self.holding = True
        self._low = 0
        self._held_rate = rate
        self._held_since = now
        self._previous = None

    # ---------------------------------------------------------------- holding
    def _hold(self, now: float, rate: float) -> None:
        if self._held_rate > 0 and rate < DROP * self._held_rate and self.width > 1:
            self._low += 1
            if self._low >= DROP_WINDOWS:  # slower for a while: try fewer connections (a
                self._low = 0  # server that minds many), never more
                self._start_probe(now, rate, -1)
            return
        self._low = 0
        self._held_rate = max(self._held_rate, rate)
        if self._doubtful and self._linear_since_first(rate):  # the cap shows now
            self._linear, self._doubtful = True, False
        if self._doubtful and now - self._held_since >= REPROBE_FIRST:
            self._doubtful = False
            self._start_probe(now, rate, -1, check=True)
        elif (
            self.width < self.maximum
            and now - self._held_since >= self._reprobe
            and not self._enough(self._held_rate)
        ):
            self._start_probe(now, self._held_rate, +1)

    def _start_probe(
        self, now: float, rate: float, direction: int, *, check: bool = False
    ) -> None:
        width = self.width * 2 if direction > 0 else self.width // 2
        width = max(min(FLOOR, self.maximum), min(self.maximum, width))
        self._held_since = now
        if width == self.width:
            return
        self._probe = _Probe(self.width, rate, direction, check)
        self.width = width

    def _judge_probe(self, now: float, rate: float) -> None:
        probe = self._probe or _Probe(self.width, rate, 0)
        self._probe = None
        width_before, rate_before, direction = probe.width, probe.rate, probe.direction
        if direction > 0:  # as in the ramp: a third of the linear gain, and 10 % at least
            needed = max(MIN_GAIN, SLOW * (self.width / width_before - 1))
        elif probe.check:  # a doubtful ramp: fewer connections are kept if about as fast
            needed = -CHECK_LOSS
        else:  # fewer must clearly pay
            needed = DOWN_GAIN
        if rate < rate_before * (1 + needed):  # did not pay: back to where it was
            if probe.check and not probe.looked_twice:  # the first window at fewer includes
                self._probe = probe._replace(looked_twice=True)  # those leaving: look again
                return
            if direction > 0:
                self._reprobe = min(REPROBE, 2 * self._reprobe)
            self._settle(now, width_before, rate_before)
            return
        self._reprobe = REPROBE_FIRST
        self._settle(now, self.width, rate)
        # it paid: one more step the same way (a check goes on, against the best rate)
        self._start_probe(now, max(rate, rate_before), direction, check=probe.check)
