"""Row 8: throttling, failing, stalled and dripping servers → bounded waits, bounded retries,
then a typed error, measured on an injected fake clock (``AsyncHub(sleep=..., clock=...)``).

The fake clock runs 100 times faster than the wall clock (``DilatedClock``), so a 60-second
``Retry-After`` costs 0.6 s of real time and every wait the engine asks for is recorded. Jitter
is pinned (``rand=lambda: 1.0``) so back-off waits are exact.
"""

from __future__ import annotations

import email.utils
import time
from pathlib import Path
from typing import Any

import pytest

from asynchub import (
    AsyncHub,
    HTTPStatusError,
    HubConfig,
    HubError,
    MirrorsExhaustedError,
    RetryPolicy,
    StallError,
)
from tests.conftest import REPO_PREFIX, mirror_config
from tests.hostile.helpers import DilatedClock, entry, final_model, leftovers
from tests.mirror import Fault, MirrorServer

pytestmark = pytest.mark.timeout(60)

NAME, OPSET = "TinyNet", 13
GLOB = "*tinynet-13.onnx"
CHUNK = 64 * 1024
ATTEMPTS = 3
BACKOFF_CAP = 8.0
MAX_RETRY_AFTER = 60.0
STALL = 40.0
WINDOW = 30.0
#: The watchdog polls every min(stall_timeout, rate_window) / 4 fake seconds.
POLL = min(STALL, WINDOW) / 4


@pytest.fixture
def config(mirror: MirrorServer, tmp_path: Path) -> HubConfig:
    return mirror_config(
        mirror.url,
        tmp_path / "cache",
        retry=RetryPolicy(
            attempts=ATTEMPTS,
            backoff_base=1.0,
            backoff_cap=BACKOFF_CAP,
            max_retry_after=MAX_RETRY_AFTER,
            rand=lambda: 1.0,
        ),
        stall_timeout=STALL,
        rate_window=WINDOW,
        min_rate=1024,
    )


async def _fetch(config: HubConfig, clock: DilatedClock) -> Path | HubError:
    async with AsyncHub(config, sleep=clock.sleep, clock=clock.clock) as hub:
        try:
            return await hub.download(NAME, opset=OPSET)
        except HubError as exc:
            return exc


def _waits(clock: DilatedClock) -> list[float]:
    """Retry waits (the watchdog's fixed polls left out)."""
    return [s for s in clock.sleeps if s != POLL]


def _good(mirror: MirrorServer, zoo: list[dict[str, Any]]) -> bytes:
    return (mirror.root / REPO_PREFIX / entry(zoo, NAME, OPSET)["model_path"]).read_bytes()


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_in_seconds_is_honoured(
    status: int,
    mirror: MirrorServer,
    config: HubConfig,
    zoo_manifest: list[dict[str, Any]],
) -> None:
    clock = DilatedClock(scale=0.01)
    mirror.add_fault(Fault("status", path=GLOB, status=status, retry_after="7"))
    outcome = await _fetch(config, clock)
    assert not isinstance(outcome, HubError), outcome
    assert outcome.read_bytes() == _good(mirror, zoo_manifest)
    assert _waits(clock) == [7.0]
    assert leftovers(config.cache_dir) == []


async def test_retry_after_as_http_date_is_honoured(
    mirror: MirrorServer, config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    clock = DilatedClock(scale=0.01)
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    mirror.add_fault(Fault("status", path=GLOB, status=503, retry_after=when))
    outcome = await _fetch(config, clock)
    assert not isinstance(outcome, HubError), outcome
    waits = _waits(clock)
    assert len(waits) == 1 and 27.0 <= waits[0] <= 30.0, waits


@pytest.mark.parametrize(
    "retry_after",
    ["86400", "Fri, 31 Dec 9999 23:59:59 GMT"],
    ids=["a-day-in-seconds", "far-future-date"],
)
async def test_retry_after_is_capped(
    retry_after: str, mirror: MirrorServer, config: HubConfig
) -> None:
    clock = DilatedClock(scale=0.005)
    mirror.add_fault(Fault("status", path=GLOB, status=429, retry_after=retry_after))
    outcome = await _fetch(config, clock)
    assert not isinstance(outcome, HubError), outcome
    assert _waits(clock) == [MAX_RETRY_AFTER]


async def test_repeated_500s_stop_after_the_retry_budget(
    mirror: MirrorServer, config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    clock = DilatedClock(scale=0.01)
    mirror.add_fault(Fault("status", path=GLOB, status=500, times=None))
    started = time.monotonic()
    outcome = await _fetch(config, clock)
    assert time.monotonic() - started < 10
    assert isinstance(outcome, MirrorsExhaustedError), outcome
    statuses = [e for _, e in outcome.errors if isinstance(e, HTTPStatusError)]
    assert statuses and statuses[0].status == 500
    assert "HTTP 500" in str(outcome)
    assert len(mirror.requests_for(GLOB)) == ATTEMPTS + 1
    assert _waits(clock) == [1.0, 2.0, 4.0]  # full back-off, capped, one wait per retry
    assert not final_model(config.cache_dir, entry(zoo_manifest, NAME, OPSET)).exists()


async def test_a_stall_is_cut_and_the_range_fetched_again(
    mirror: MirrorServer, config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    clock = DilatedClock(scale=0.01)
    mirror.add_fault(Fault("stall", path=GLOB, after_bytes=1000, only_start_above=CHUNK))
    started = time.monotonic()
    outcome = await _fetch(config, clock)
    assert time.monotonic() - started < 10
    assert not isinstance(outcome, HubError), outcome
    assert outcome.read_bytes() == _good(mirror, zoo_manifest)
    stalled = next(r for r in mirror.requests_for(GLOB) if r.fault == "stall")
    assert stalled.range is not None
    again = [r.range for r in mirror.requests_for(GLOB) if r.fault is None and r.range]
    assert any(rng[0] == stalled.range[0] + 1000 for rng in again), "no resume after the stall"
    assert leftovers(config.cache_dir) == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault("stall", path=GLOB, times=None, after_bytes=100, only_start_above=CHUNK),
        Fault("drip", path=GLOB, times=None, rate=4000, only_start_above=CHUNK),
    ],
    ids=["stall-forever", "slow-drip-forever"],
)
async def test_endless_stall_or_drip_is_a_typed_error_in_bounded_time(
    fault: Fault, mirror: MirrorServer, config: HubConfig, zoo_manifest: list[dict[str, Any]]
) -> None:
    clock = DilatedClock(scale=0.01)
    mirror.add_fault(fault)
    started = time.monotonic()
    outcome = await _fetch(config, clock)
    elapsed = time.monotonic() - started
    assert isinstance(outcome, MirrorsExhaustedError), outcome
    assert any(isinstance(e, StallError) for _, e in outcome.errors), outcome.errors
    assert elapsed < 15, f"took {elapsed:.1f} s of real time"
    # every fake-clock wait is bounded, and the retry budget is spent per stalled stretch
    assert max(_waits(clock), default=0.0) <= BACKOFF_CAP
    faulted = [r for r in mirror.requests_for(GLOB) if r.fault == fault.kind]
    assert len(faulted) >= ATTEMPTS + 1
    assert len(faulted) <= 8 * (ATTEMPTS + 1), "retries are not bounded"
    final = final_model(config.cache_dir, entry(zoo_manifest, NAME, OPSET))
    assert not final.exists()
