"""Progress bars: a :data:`~asynchub.ProgressCallback` that renders ``tqdm.auto`` bars.

``ProgressBars()`` is passed as ``AsyncHub(config, progress=ProgressBars())`` (the CLI does
this). It shows one aggregate bar (bytes of every planned file) plus one bar per large file
while it is in flight, on stderr. ``tqdm.auto`` picks widgets in notebooks and text elsewhere.

Choices:

* **Rendering never slows the transfer.** The callback runs on the event loop thread, so it
  only adds numbers to counters under a lock held for a few instructions; it never formats or
  writes. A daemon thread redraws the bars every ``interval`` seconds (default 0.2 s: smooth
  enough to read, a negligible cost), so a slow or blocked terminal stalls that thread, never
  the downloads.
* **Totals come from plan time.** The aggregate total is the sum of the ``total`` of every
  distinct ``planned`` file; a file later reported ``cached`` leaves the total (nothing to
  fetch). Progress is ``resumed`` + ``transfer`` bytes, so a resumed file starts where it was.
  Verified (hashed) bytes are shown apart, as ``verified=`` in the aggregate bar's postfix.
* **Per-file bars** only for files of at least ``big_file`` bytes (default 32 MiB: below that
  a file finishes in about a second on a good link and a bar would only flicker), at most
  ``max_file_bars`` at once (default 4) so the terminal stays readable.
* :func:`bars_enabled` decides whether to show bars at all: ``config.progress_bars`` (off with
  ``ASYNCHUB_DISABLE_PROGRESS_BARS=1``) and stderr being a terminal or a Jupyter kernel.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

from .._config import HubConfig
from .events import ProgressEvent

__all__ = ["ProgressBars", "bars_enabled"]

MiB = 1024 * 1024


def bars_enabled(config: HubConfig, stream: TextIO | None = None) -> bool:
    """Whether bars should be shown: enabled in ``config`` and ``stream`` (default stderr) is
    a terminal, or the process is a Jupyter kernel (where ``tqdm.auto`` draws widgets)."""
    if not config.progress_bars:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        if stream is not None and stream.isatty():
            return True
    except (AttributeError, ValueError, OSError):
        pass
    return "ipykernel" in sys.modules


@dataclass
class _File:
    total: int | None = None
    done_bytes: int = 0  # resumed + transferred
    verified: int = 0
    state: str = "planned"  # planned | active | done | cached | failed


class ProgressBars:
    """Render progress events as tqdm bars (see the module docstring).

    Use as a context manager (or call :meth:`close`) so the bars are finished and the drawing
    thread stops. ``file`` defaults to ``sys.stderr``; ``tqdm_kwargs`` go to every bar.
    """

    def __init__(
        self,
        *,
        file: TextIO | None = None,
        big_file: int = 32 * MiB,
        max_file_bars: int = 4,
        interval: float = 0.2,
        description: str = "asynchub",
        **tqdm_kwargs: Any,
    ) -> None:
        self._file = sys.stderr if file is None else file
        self.big_file = big_file
        self.max_file_bars = max_file_bars
        self.interval = interval
        self.description = description
        self._tqdm_kwargs = tqdm_kwargs
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._dirty = False
        self._failed = 0
        self._stop = threading.Event()
        self._total_bar: Any = None
        self._file_bars: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the callback (event loop thread): counters only ---------------------------------
    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            entry = self._files.get(event.name)
            if entry is None:
                entry = self._files[event.name] = _File()
            kind = event.kind
            if kind == "planned":
                if event.total is not None:
                    entry.total = event.total
            elif kind in ("resumed", "transfer"):
                entry.done_bytes += event.nbytes
                if entry.state == "planned":
                    entry.state = "active"
            elif kind == "verified":
                entry.verified += event.nbytes
            elif kind == "cached":
                entry.state = "cached"
            elif kind == "done":
                entry.state = "done"
            elif kind == "failed":
                entry.state = "failed"
                self._failed += 1
            self._dirty = True
        if self._thread is None and not self._closed:
            self._start()

    # -- drawing (its own thread) --------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="asynchub-bars", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.render()
        self.render()

    def _bar(self, **kwargs: Any) -> Any:
        options: dict[str, Any] = {
            "unit": "B",
            "unit_scale": True,
            "unit_divisor": 1000,
            "file": self._file,
            "dynamic_ncols": True,
            "mininterval": 0,
            "miniters": 1,
        }
        options.update(self._tqdm_kwargs)
        options.update(kwargs)
        from tqdm.auto import tqdm  # imported when the first bar is drawn (~30 ms)

        return tqdm(**options)

    def snapshot(self) -> dict[str, int]:
        """Aggregate numbers as the bars show them: ``total``, ``done`` (resumed + transferred),
        ``verified``, ``files``, ``finished`` and ``failed``."""
        with self._lock:
            counted = [f for f in self._files.values() if f.state != "cached"]
            return {
                "total": sum(f.total or 0 for f in counted),
                "done": sum(f.done_bytes for f in counted),
                "verified": sum(f.verified for f in counted),
                "files": len(counted),
                "finished": sum(1 for f in counted if f.state in ("done", "failed")),
                "failed": self._failed,
            }

    def render(self) -> None:
        """Redraw the bars from the counters (called by the drawing thread)."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            files = {
                name: _File(f.total, f.done_bytes, f.verified, f.state)
                for name, f in self._files.items()
            }
            failed = self._failed
        counted = {n: f for n, f in files.items() if f.state != "cached"}
        total = sum(f.total or 0 for f in counted.values())
        done = sum(f.done_bytes for f in counted.values())
        verified = sum(f.verified for f in counted.values())
        finished = sum(1 for f in counted.values() if f.state in ("done", "failed"))
        if self._total_bar is None:
            self._total_bar = self._bar(desc=self.description, total=total or None, position=0)
        bar = self._total_bar
        bar.total = total or None
        bar.n = done
        postfix = f"files={finished}/{len(counted)} verified={_human(verified)}"
        if failed:
            postfix += f" failed={failed}"
        bar.set_postfix_str(postfix, refresh=False)
        bar.refresh()
        self._render_files(counted)

    def _render_files(self, files: dict[str, _File]) -> None:
        for name in list(self._file_bars):
            entry = files.get(name)
            if entry is None or entry.state != "active":
                bar = self._file_bars.pop(name)
                if entry is not None:
                    bar.n = entry.done_bytes
                bar.close()
        for name, entry in files.items():
            if (
                entry.state == "active"
                and (entry.total or 0) >= self.big_file
                and name not in self._file_bars
                and len(self._file_bars) < self.max_file_bars
            ):
                self._file_bars[name] = self._bar(desc=_short(name), total=entry.total, leave=False)
        for name, bar in self._file_bars.items():
            bar.n = files[name].done_bytes
            bar.refresh()

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the drawing thread, draw the final state and close every bar."""
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join()
        else:
            self.render()
        for bar in self._file_bars.values():
            bar.close()
        self._file_bars.clear()
        if self._total_bar is not None:
            self._total_bar.close()

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _short(name: str, width: int = 28) -> str:
    base = name.rsplit("/", 1)[-1]
    return base if len(base) <= width else "…" + base[-(width - 1) :]


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"  # pragma: no cover
