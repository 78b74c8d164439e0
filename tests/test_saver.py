"""StateSaver: a write is recorded within the period even when nothing follows it; many writes
in a period make one save; the first period starts at the first write; a complete file is never
saved."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from asynchub._cache.layout import state_path
from asynchub._engine.resume import ResumeState
from asynchub._engine.saver import STATE_PERIOD, StateSaver

pytestmark = pytest.mark.timeout(30)


def _state(written: int) -> ResumeState:
    return ResumeState(sha256="0" * 64, size=1000, chunk_size=1000, written=[written])


class Snapshots:
    """The ``snapshot`` callable: counts the saves and wakes a waiter at each one."""

    def __init__(self) -> None:
        self.taken = 0
        self.written = 0
        self.event = anyio.Event()

    def __call__(self) -> ResumeState:
        self.taken += 1
        self.event.set()
        return _state(self.written)

    async def next(self) -> None:
        await self.event.wait()
        self.event = anyio.Event()


def _saver(partial: Path, snapshots: Snapshots, complete: bool = False) -> StateSaver:
    return StateSaver(partial, snapshots, complete=lambda: complete, interval=1 << 30,
                      clock=time.monotonic, sleep=anyio.sleep)  # fmt: skip


async def test_a_write_is_saved_within_the_period_even_if_nothing_follows(
    tmp_path: Path,
) -> None:
    partial = tmp_path / "model.onnx.partial"
    partial.write_bytes(b"")
    snapshots = Snapshots()
    saver = _saver(partial, snapshots)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            saver.group = group
            started = time.monotonic()
            snapshots.written = 10
            saver.wrote(10)  # the saver is new: under the period and the interval
            saver.wrote(20)  # the same period: no second save scheduled
            assert snapshots.taken == 0
            await snapshots.next()
            took = time.monotonic() - started
            saver.stopped()
    assert STATE_PERIOD * 0.8 <= took < STATE_PERIOD * 8
    assert snapshots.taken == 1
    assert ResumeState.from_json(state_path(partial).read_text()).written == [10]


async def test_a_complete_file_is_not_saved(tmp_path: Path) -> None:
    partial = tmp_path / "model.onnx.partial"
    snapshots = Snapshots()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes at once: the due save runs now
        waits.append(seconds)
        await anyio.lowlevel.checkpoint()

    saver = StateSaver(partial, snapshots, complete=lambda: True, interval=1 << 30,
                       clock=lambda: 0.0, sleep=sleep)  # fmt: skip
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:  # waits for the due save's task
            saver.group = group
            saver.wrote(10)
    assert waits == [STATE_PERIOD]
    assert snapshots.taken == 0
    assert not state_path(partial).exists()


async def test_the_first_period_starts_at_the_first_write(tmp_path: Path) -> None:
    """A download that waited (for a connection token, in a prefetch) is not saved at its
    first write: the save waits for the period after it."""
    partial = tmp_path / "model.onnx.partial"
    partial.write_bytes(b"")
    snapshots = Snapshots()
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes at once: the due save runs now
        waits.append(seconds)
        await anyio.lowlevel.checkpoint()

    saver = StateSaver(partial, snapshots, complete=lambda: False, interval=1 << 30,
                       clock=lambda: now[0], sleep=sleep)  # fmt: skip
    now[0] = 10.0  # ten seconds in line for a connection before the first byte
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            saver.group = group
            saver.wrote(10)
            assert snapshots.taken == 0  # not saved at once
            await snapshots.next()
            saver.stopped()
    assert waits == [pytest.approx(STATE_PERIOD)]  # it waited for the period after the write
    assert snapshots.taken == 1
