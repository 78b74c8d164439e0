"""The engine against a misbehaving mirror: every fault is injected by the server."""

from __future__ import annotations

import email.utils
import time

import pytest

from asynchub._cache.layout import partials_for
from asynchub._engine.retry import RetryPolicy
from asynchub._exceptions import IntegrityError, MirrorsExhaustedError, ProtocolError
from tests.mirror import Fault, can_bind
from tests.test_transfer import KIB, MIB, Events, Rig, Sleeps, fetch, job_for, put, rig

__all__ = ["rig"]  # the fixture, re-used

pytestmark = pytest.mark.timeout(60)

CHUNK = 256 * KIB


def ranges_of(rig: Rig, path: str) -> list[tuple[int, int | None]]:
    return [r.range for r in rig.server.requests_for(path) if r.range is not None]


async def test_connection_dropped_mid_body_resumes_from_last_byte(rig: Rig) -> None:
    blob = put(rig.root, "drop.bin", 1 * MIB)
    rig.server.add_fault(Fault("drop", path="/drop.bin", after_bytes=100 * KIB))
    events = Events()
    assert (await fetch(rig, job_for(rig.url(blob), blob, rig.cache), events)).read_bytes() == (
        blob.data
    )
    dropped = next(r for r in rig.server.requests if r.fault == "drop")
    assert dropped.range is not None
    start = dropped.range[0]
    # the retry asks only for what was missing after the bytes that did arrive
    assert (start + 100 * KIB, start + CHUNK - 1) in ranges_of(rig, "/drop.bin")
    assert "cut short" in events.messages()
    assert rig.server.served_bytes() == blob.size


async def test_range_ignored_gives_a_single_stream(rig: Rig) -> None:
    blob = put(rig.root, "ign.bin", 1 * MIB)
    rig.server.add_fault(Fault("ignore_range", path="/ign.bin"))
    assert (await fetch(rig, job_for(rig.url(blob), blob, rig.cache))).read_bytes() == blob.data
    assert len(rig.server.requests) == 1 and rig.server.requests[0].status == 200


async def test_wrong_content_range_is_retried(rig: Rig) -> None:
    blob = put(rig.root, "wr.bin", 1 * MIB)
    rig.server.add_fault(Fault("wrong_range", path="/wr.bin", only_start_above=0))
    events = Events()
    assert (await fetch(rig, job_for(rig.url(blob), blob, rig.cache), events)).read_bytes() == (
        blob.data
    )
    assert "sent bytes" in events.messages()


@pytest.mark.parametrize("kind", ["bad_range_syntax", "multipart", "long_body"])
async def test_other_range_violations_are_retried(rig: Rig, kind: str) -> None:
    blob = put(rig.root, "rv.bin", 1 * MIB)
    rig.server.add_fault(Fault(kind, path="/rv.bin", only_start_above=0, after_bytes=1000))
    assert (await fetch(rig, job_for(rig.url(blob), blob, rig.cache))).read_bytes() == blob.data
    assert any(r.fault == kind for r in rig.server.requests)


async def test_short_206_asks_for_the_rest(rig: Rig) -> None:
    blob = put(rig.root, "short.bin", 1 * MIB)
    rig.server.add_fault(Fault("short", path="/short.bin", after_bytes=1000, only_start_above=0))
    assert (await fetch(rig, job_for(rig.url(blob), blob, rig.cache))).read_bytes() == blob.data
    short = next(r for r in rig.server.requests if r.fault == "short")
    assert short.range is not None
    assert (short.range[0] + 1000, short.range[0] + CHUNK - 1) in ranges_of(rig, "/short.bin")


async def test_close_delimited_body_is_accepted_when_complete(rig: Rig) -> None:
    blob = put(rig.root, "cd.bin", 1 * MIB)
    rig.server.add_fault(Fault("close_delimited", path="/cd.bin", times=3))
    assert (await fetch(rig, job_for(rig.url(blob), blob, rig.cache))).read_bytes() == blob.data


async def test_truncated_close_delimited_body_is_completed(rig: Rig) -> None:
    blob = put(rig.root, "cdt.bin", 1 * MIB)
    rig.server.add_fault(Fault("close_delimited", path="/cdt.bin", after_bytes=5000))
    assert (await fetch(rig, job_for(rig.url(blob), blob, rig.cache))).read_bytes() == blob.data
    assert (5000, CHUNK - 1) in ranges_of(rig, "/cdt.bin")


@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_429_retry_after(rig: Rig, form: str) -> None:
    blob = put(rig.root, "429.bin", 600 * KIB)
    value = "7" if form == "seconds" else email.utils.formatdate(time.time() + 30, usegmt=True)
    rig.server.add_fault(Fault("status", path="/429.bin", status=429, retry_after=value))
    sleeps = Sleeps()
    events = Events()
    path = await fetch(rig, job_for(rig.url(blob), blob, rig.cache), events, sleep=sleeps)
    assert path.read_bytes() == blob.data
    waits = [s for s in sleeps.calls if s > 2]
    assert len(waits) == 1
    if form == "seconds":
        assert waits[0] == 7.0
    else:
        assert 25 < waits[0] <= 31
    assert "429" in events.messages()


async def test_503_is_retried_with_backoff(rig: Rig) -> None:
    blob = put(rig.root, "503.bin", 600 * KIB)
    rig.server.add_fault(Fault("status", path="/503.bin", status=503, times=2))
    events = Events()
    assert (await fetch(rig, job_for(rig.url(blob), blob, rig.cache), events)).read_bytes() == (
        blob.data
    )
    assert events.messages().count("HTTP 503") == 2


async def test_503_forever_exhausts_the_mirror(rig: Rig) -> None:
    blob = put(rig.root, "503f.bin", 600 * KIB)
    rig.server.add_fault(Fault("status", path="/503f.bin", status=503, times=None))
    with pytest.raises(MirrorsExhaustedError) as info:
        await fetch(rig, job_for(rig.url(blob), blob, rig.cache))
    assert "503" in str(info.value)
    assert len(rig.server.requests) == 4  # the first try and three retries


async def test_404_is_not_retried(rig: Rig) -> None:
    blob = put(rig.root, "gone.bin", 600 * KIB)
    job = job_for(f"{rig.server.url}/not-here.bin", blob, rig.cache)
    with pytest.raises(MirrorsExhaustedError):
        await fetch(rig, job)
    assert len(rig.server.requests) == 1


@pytest.mark.parametrize("kind", ["stall", "drip"])
async def test_watchdog_reissues_a_slow_connection(rig: Rig, kind: str) -> None:
    blob = put(rig.root, "slow.bin", 1 * MIB)
    rig.server.add_fault(
        Fault(kind, path="/slow.bin", after_bytes=16 * KIB, rate=4 * KIB, only_start_above=0)
    )
    events = Events()
    start = time.monotonic()
    path = await fetch(
        rig,
        job_for(rig.url(blob), blob, rig.cache),
        events,
        stall_timeout=30.0,
        rate_window=0.4,
        min_rate=64 * KIB,
    )
    assert time.monotonic() - start < 2.0
    assert path.read_bytes() == blob.data
    assert "below min_rate" in events.messages()
    slow = next(r for r in rig.server.requests if r.fault == kind)
    assert slow.range is not None
    again = [r for r in ranges_of(rig, "/slow.bin") if slow.range[0] < r[0] < slow.range[0] + CHUNK]
    assert again, "the rest of the slow range was asked again"


async def test_stall_timeout_without_any_byte(rig: Rig) -> None:
    blob = put(rig.root, "st.bin", 600 * KIB)
    rig.server.add_fault(Fault("stall", path="/st.bin", after_bytes=0, only_start_above=0))
    events = Events()
    start = time.monotonic()
    path = await fetch(
        rig, job_for(rig.url(blob), blob, rig.cache), events, stall_timeout=0.3, rate_window=30.0
    )
    assert path.read_bytes() == blob.data and time.monotonic() - start < 2.0
    assert "no bytes" in events.messages()


async def test_gzip_content_encoding_is_refused(rig: Rig) -> None:
    blob = put(rig.root, "gz.bin", 600 * KIB)
    rig.server.add_fault(Fault("gzip", path="/gz.bin", times=None))
    job = job_for(rig.url(blob), blob, rig.cache)
    with pytest.raises(MirrorsExhaustedError) as info:
        await fetch(rig, job)
    assert isinstance(info.value.errors[0][1], ProtocolError)
    assert "gzip" in str(info.value)
    assert not job.dest.exists()


async def test_gzip_once_then_identity(rig: Rig) -> None:
    blob = put(rig.root, "gz1.bin", 600 * KIB)
    rig.server.add_fault(Fault("gzip", path="/gz1.bin"))
    assert (await fetch(rig, job_for(rig.url(blob), blob, rig.cache))).read_bytes() == blob.data


async def test_one_corrupt_byte_is_fetched_again_from_scratch(rig: Rig) -> None:
    blob = put(rig.root, "bad1.bin", 1 * MIB)
    rig.server.add_fault(Fault("corrupt", path="/bad1.bin", after_bytes=777, only_start_above=0))
    events = Events()
    job = job_for(rig.url(blob), blob, rig.cache)
    assert (await fetch(rig, job, events)).read_bytes() == blob.data
    assert "SHA-256 mismatch" in events.messages()
    assert rig.server.served_bytes() == 2 * blob.size


async def test_persistent_corruption_raises_integrity_error(rig: Rig) -> None:
    blob = put(rig.root, "bad.bin", 1 * MIB)
    rig.server.add_fault(Fault("corrupt", path="/bad.bin", after_bytes=777, times=None))
    job = job_for(rig.url(blob), blob, rig.cache)
    with pytest.raises(IntegrityError) as info:
        await fetch(rig, job)
    message = str(info.value)
    assert blob.sha in message and rig.url(blob) in message and "got " in message
    assert isinstance(info.value, AssertionError)
    assert not job.dest.exists() and not list(partials_for(job.dest))
    assert not [p for p in job.dest.parent.iterdir() if not p.name.endswith(".lock")]


async def test_corrupt_mirror_then_good_mirror(rig: Rig) -> None:
    blob = put(rig.root, "a/two.bin", 600 * KIB)
    put(rig.root, "b/two.bin", 600 * KIB)  # the same bytes (same seed) on a second path
    rig.server.add_fault(Fault("corrupt", path="/a/two.bin", after_bytes=5, times=None))
    job = job_for((rig.url(blob), f"{rig.server.url}/b/two.bin"), blob, rig.cache)
    events = Events()
    assert (await fetch(rig, job, events)).read_bytes() == blob.data
    assert events.of("done")[0].mirror == f"{rig.server.url}/b/two.bin"


async def test_new_etag_mid_download_keeps_the_bytes(rig: Rig) -> None:
    """A different ETag for the same bytes is no reason to start over: no ``If-Range`` is
    sent, the bytes are kept, and the SHA-256 verifies the file."""
    blob = put(rig.root, "chg.bin", 1 * MIB)
    rig.server.add_fault(Fault("change_etag", path="/chg.bin", only_start_above=512 * KIB))
    events = Events()
    job = job_for(rig.url(blob), blob, rig.cache)
    assert (await fetch(rig, job, events, max_connections=1)).read_bytes() == blob.data
    assert "starting the file again" not in events.messages()
    probes = [r for r in ranges_of(rig, "/chg.bin") if r[0] == 0]
    assert len(probes) == 1
    assert not any("If-Range" in r.headers for r in rig.server.requests)


@pytest.mark.parametrize("status", [412, 416])
async def test_412_416_restart_the_file(rig: Rig, status: int) -> None:
    blob = put(rig.root, "pre.bin", 1 * MIB)
    rig.server.add_fault(
        Fault("status", path="/pre.bin", status=status, only_start_above=512 * KIB)
    )
    events = Events()
    job = job_for(rig.url(blob), blob, rig.cache)
    assert (await fetch(rig, job, events)).read_bytes() == blob.data
    assert f"HTTP {status}" in events.messages()


async def test_file_that_keeps_changing_fails(rig: Rig) -> None:
    """New content (same size) on every later range: the mixed bytes fail the SHA-256, the
    file is fetched once more from scratch, then it is an integrity error."""
    blob = put(rig.root, "flux.bin", 1 * MIB)
    other = bytes(b ^ 0x5A for b in blob.data)
    rig.server.add_fault(
        Fault("change_etag", path="/flux.bin", data=other, only_start_above=0, times=1)
    )
    job = job_for(rig.url(blob), blob, rig.cache)
    with pytest.raises(IntegrityError) as info:
        await fetch(rig, job)
    assert "SHA-256 mismatch" in str(info.value)


async def test_redirect_to_second_host_reuses_the_final_url(rig: Rig) -> None:
    if not can_bind("127.0.0.2"):
        pytest.skip("127.0.0.2 cannot be bound here")
    await rig.server.stop()
    from tests.mirror import MirrorServer

    rig.server = MirrorServer(rig.root, hosts=("127.0.0.1", "127.0.0.2"))
    await rig.server.start()
    blob = put(rig.root, "redir.bin", 1 * MIB)
    target = rig.url(blob, "127.0.0.2")
    rig.server.add_fault(Fault("redirect", path="/redir.bin", location=target))
    events = Events()
    path = await fetch(rig, job_for(rig.url(blob), blob, rig.cache), events)
    assert path.read_bytes() == blob.data
    hosts = [r.host for r in rig.server.requests]
    assert hosts.count("127.0.0.1") == 1 and hosts.count("127.0.0.2") == 4
    assert events.of("done")[0].mirror == target


async def test_expiring_signed_url_is_resolved_again(rig: Rig) -> None:
    host = "127.0.0.2" if can_bind("127.0.0.2") else "127.0.0.1"
    if host != "127.0.0.1":
        await rig.server.stop()
        from tests.mirror import MirrorServer

        rig.server = MirrorServer(rig.root, hosts=("127.0.0.1", host))
        await rig.server.start()
    blob = put(rig.root, "signed.bin", 2 * MIB)
    rig.server.add_signed_redirect("signed.bin", host, ttl_requests=3)
    events = Events()
    path = await fetch(rig, job_for(rig.url(blob), blob, rig.cache), events)
    assert path.read_bytes() == blob.data
    origin_hits = [r for r in rig.server.requests if r.path == "/signed.bin"]
    assert len(origin_hits) >= 3  # 8 chunks, 3 requests per signed URL
    assert any(r.status == 403 for r in rig.server.requests)
    assert "resolving" in events.messages()


async def test_retry_budget_resets_while_bytes_flow(rig: Rig) -> None:
    blob = put(rig.root, "flow.bin", 1 * MIB)
    # every request of the last chunk drops after 40 KiB: 7 drops, more than the 3 retries,
    # but each try brings bytes, so the chunk completes
    rig.server.add_fault(
        Fault("drop", path="/flow.bin", after_bytes=40 * KIB, times=7, only_start_above=767 * KIB)
    )
    retry = RetryPolicy(attempts=2, backoff_base=0.001, backoff_cap=0.002)
    path = await fetch(rig, job_for(rig.url(blob), blob, rig.cache), retry=retry)
    assert path.read_bytes() == blob.data
    assert sum(r.fault == "drop" for r in rig.server.requests) == 7


async def test_progress_callback_errors_do_not_break_downloads(rig: Rig) -> None:
    blob = put(rig.root, "cb.bin", 600 * KIB)

    def broken(event: object) -> None:
        raise RuntimeError("bar broke")

    path = await fetch(rig, job_for(rig.url(blob), blob, rig.cache), broken)  # type: ignore[arg-type]
    assert path.read_bytes() == blob.data


async def test_a_dripping_range_is_written_as_it_arrives(rig: Rig) -> None:
    """A slow connection hands over partial buffers (one per flush interval). Once the engine
    holds every buffer the connection lends, it writes them instead of waiting for a full
    piece, which could no longer arrive: one request, no stall, no retry."""
    blob = put(rig.root, "drip.bin", 400 * KIB)
    rig.server.add_fault(Fault("drip", path="/drip.bin", rate=800 * KIB))
    events = Events()
    got = await fetch(rig, job_for(rig.url(blob), blob, rig.cache), events, chunk_size=MIB,
                      state_interval=MIB, stall_timeout=3.0, min_rate=0)  # fmt: skip
    assert got.read_bytes() == blob.data
    assert len(rig.server.requests_for("/drip.bin")) == 1
    assert events.messages() == ""
