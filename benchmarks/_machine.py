"""Hold the machine steady while benchmarks run: pause the kernel's give-back of free memory.

Two features of virtual machines' kernels make the cost of writing a file depend on how long
the machine sat idle before the run, not on the tool being measured:

* **Free page reporting** (virtio-balloon): memory that stays free for about two seconds is
  handed back to the host, and the next touch of each 4 KiB page is then a page fault in the
  host. Every tool here writes a GiB into the page cache, so the tool whose run follows an idle
  spell (onnx.hub's 45 s runs, a sweep's pause) pays for it. Measured on the 2-core VM of the
  committed results, writing 1 GiB into the page cache from one reused 1 MiB buffer took
  0.20-0.22 s right after the previous GiB was deleted, and 1.6-2.4 s after 5-30 s idle, all of
  it system time of the writer; with reporting paused, 0.22-0.24 s whatever the idle time.
* **DAMON proactive reclaim** (``kdamond``, action ``pageout``): pages not touched for a while
  are written out, among them the mirror's files, which the server then reads back from disk
  in the middle of a measured run.

Pausing the reporting does not bring back what was handed back before the run: the first
GiB a run writes still pays for it (measured here: 3.8 s for 1 GiB after 20 s idle, then
0.28 s; in ``load_overlap.py`` a first run of 8-10 s against 1.7-4 s for the next ones). So
once reporting is paused, :data:`WARM_BYTES` of free memory are touched (an anonymous map
with ``MAP_POPULATE``) and given back: the allocator hands out pages it did not report
first, and none is reported again until the run ends. That takes 12 s on this VM after
an idle spell, ~1 s when the memory is warm; the same 1 GiB write then took 0.23 s.

:func:`steady` pauses both for the length of a run and puts each back as it was when the run
ends (also on Ctrl-C, ``SIGTERM`` or an error), as ``pyperf system tune`` fixes CPU
frequency for its runs. It changes nothing without root, or when the caller asks for the
machine as it is (``run.py --machine-as-is``); what it did goes into the results' header
line.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["steady"]

REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
KDAMONDS = Path("/sys/kernel/mm/damon/admin/kdamonds")
BUDDYINFO = Path("/proc/buddyinfo")
#: Free memory touched once reporting is paused: a 1 GiB download's page cache and a 1 GiB
#: model's tensors (``load_overlap.py``), with room to spare.
WARM_BYTES = 4 << 30


def _largest_order() -> int | None:
    """The largest block order of the page allocator (columns of ``/proc/buddyinfo`` - 1)."""
    try:
        line = BUDDYINFO.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return len(line.split()) - 4 - 1  # "Node 0, zone NAME" then one count per order


def _warm(nbytes: int) -> int:
    """Touch up to ``nbytes`` of free memory (leaving 1 GiB) and give it back; how many."""
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
    size = min(nbytes, free - (1 << 30))
    if size <= 0:
        return 0
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    try:
        mmap.mmap(-1, size, flags=flags).close()
    except OSError:
        return 0
    return size


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return path.read_text().strip() == value
    except OSError:
        return False


@contextlib.contextmanager
def steady(enabled: bool = True) -> Iterator[str]:
    """Pause free page reporting and DAMON reclaim (see the module docstring) while the body
    runs; yields a short description of what was changed, for the results."""
    undo: list[tuple[Path, str]] = []
    warmed = 0
    done: list[str] = []
    previous = None
    if threading.current_thread() is threading.main_thread():  # a kill still restores
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        if enabled:
            largest = _largest_order()
            with contextlib.suppress(OSError):
                before = REPORTING_ORDER.read_text().strip()
                # an order above the largest block: no free block is ever big enough to report
                if largest is not None and int(before) <= largest \
                        and _write(REPORTING_ORDER, str(largest + 1)):
                    undo.append((REPORTING_ORDER, before))
                    done.append("free page reporting")
                    warmed = _warm(WARM_BYTES)
            for state in sorted(KDAMONDS.glob("*/state")):
                with contextlib.suppress(OSError):
                    if state.read_text().strip() == "on" and _write(state, "off"):
                        undo.append((state, "on"))
                        if "DAMON reclaim" not in done:
                            done.append("DAMON reclaim")
        if done:
            touched = f"; {warmed / (1 << 30):.1f} GiB of free memory touched first" if warmed \
                else ""
            yield ("paused for the run: " + ", ".join(done) + touched
                   + " (see benchmarks/_machine.py)")
        elif enabled:
            yield "machine as is (nothing to pause, or not root)"
        else:
            yield "machine as is (--machine-as-is)"
    finally:
        for path, value in reversed(undo):
            with contextlib.suppress(OSError):
                path.write_text(value)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
