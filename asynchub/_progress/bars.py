"""Progress bars: a :data:`~asynchub.ProgressCallback` that renders ``tqdm.auto`` bars.

``ProgressBars()`` is passed as ``AsyncHub(config, progress=ProgressBars())`` (the CLI, ``Hub``
and the module-level functions do this when a person is watching: see :func:`bars_enabled`).
It shows one aggregate bar (bytes of every planned file) plus one bar per large file while it
is in flight, on stderr. ``tqdm.auto`` picks widgets in notebooks and text elsewhere (also in
a notebook without ipywidgets, where the text goes to the cell's stderr).

Choices:

* **Rendering never slows the transfer.** The callback runs on the event loop thread, so it
  only adds numbers to counters under a lock held for a few instructions; it never formats or
  writes. A daemon thread redraws the bars every ``interval`` seconds (default 0.2 s: smooth
  enough to read, a negligible cost), so a slow or blocked terminal stalls that thread, never
  the downloads.
* **Honest numbers.** Totals come from plan time (the sum of every distinct ``planned`` file;
  a file later reported ``cached`` leaves it). Bytes already on disk from an earlier run
  (``resumed``) count as done from the start but never as speed: a bar's rate is the bytes
  *transferred* since its file started (its first ``resumed`` or ``transfer`` event, not when
  the bar happened to be drawn), divided by the time since then, so a resumed 80 MB never
  shows as TB/s and a per-file bar drawn late agrees with the aggregate. No rate is shown
  in the first :data:`MIN_RATE_WINDOW` seconds (too few samples to mean anything). Verified
  (hashed) bytes are shown apart.
* **One size format.** The numbers are written by :mod:`asynchub._progress.units` (decimal
  units, ``80.4 MB/288.8 MB [00:03<00:07, 26.2 MB/s]``), the same text the CLI's summaries and
  ``cache ls`` use; tqdm only draws the bar and the percentage (our text is put into each bar's
  ``bar_format``), and tqdm's ``initial`` is set to the resumed bytes.
* **Per-file bars** only for files of at least ``big_file`` bytes (default 32 MiB: below that
  a file finishes in about a second on a good link and a bar would only flicker), at most
  ``max_file_bars`` at once (default 4) so the terminal stays readable.
* **Clean end, also after Ctrl-C.** :meth:`close` stops the drawing thread first, removes the
  per-file bars, erases the aggregate bar's line on a terminal (where the terminal echoed
  ``^C``) and draws it once more in its final state, so exactly one final line remains.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

from .._config import HubConfig
from .events import ProgressEvent
from .units import format_rate, format_size

__all__ = [
    "MIN_RATE_WINDOW",
    "AutoBars",
    "ProgressBars",
    "bars_enabled",
    "in_jupyter_kernel",
    "progress_text",
    "resolve_progress",
]

MiB = 1024 * 1024
#: Seconds of transfer before a rate (and so a remaining time) is shown.
MIN_RATE_WINDOW = 0.5


def bars_enabled(config: HubConfig, stream: TextIO | None = None) -> bool:
    """Whether bars should be shown: enabled in ``config`` (off with
    ``ASYNCHUB_DISABLE_PROGRESS_BARS=1``) and ``stream`` (default stderr) is a terminal, or
    the process is a Jupyter kernel (where ``tqdm.auto`` draws widgets, see
    :func:`in_jupyter_kernel`). Pipes, files, CI logs and services get no bars."""
    if not config.progress_bars:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        if stream is not None and stream.isatty():
            return True
    except (AttributeError, ValueError, OSError):
        pass
    return in_jupyter_kernel()


def in_jupyter_kernel() -> bool:
    """Whether this process is a running Jupyter kernel (a notebook, JupyterLab, VS Code,
    Colab): IPython's current shell belongs to an ``IPKernelApp``, the test ``tqdm.auto`` uses
    to pick widgets. ``ipykernel`` merely being imported is not enough: test runners, notebook
    tooling and services import it without anyone watching their stderr. Nothing is
    imported here; a process that never imported IPython is not a kernel."""
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # an unusual shell: not a kernel we know how to draw in
        return False


@dataclass
class _File:
    total: int | None = None
    done_bytes: int = 0  # resumed + transferred
    resumed: int = 0
    verified: int = 0
    started: float | None = None  # clock() at the first resumed/transfer event
    state: str = "planned"  # planned | active | done | cached | failed


def _interval(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress_text(
    done: int, total: int | None, resumed: int, started: float | None, now: float
) -> str:
    """``80.4 MB/288.8 MB [00:03<00:07, 26.2 MB/s]``: sizes, elapsed time since the start,
    remaining time and the rate of the bytes transferred since then (not the resumed ones)."""
    size = f"{format_size(done)}/{format_size(total)}" if total else format_size(done)
    elapsed = 0.0 if started is None else max(now - started, 0.0)
    fetched = max(done - resumed, 0)
    if elapsed >= MIN_RATE_WINDOW and fetched > 0:
        rate = fetched / elapsed
        left = _interval((total - done) / rate) if total and total > done else "00:00"
        return f"{size} [{_interval(elapsed)}<{left}, {format_rate(rate)}]"
    return f"{size} [{_interval(elapsed)}<?, ? B/s]"


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


class ProgressBars:
    """Render progress events as tqdm bars (see the module docstring).

    Use as a context manager (or call :meth:`close`) so the bars are finished and the drawing
    thread stops. ``file`` defaults to ``sys.stderr``; ``clock`` (``time.monotonic``) times the
    rates; ``tqdm_kwargs`` go to every bar.
    """

    def __init__(
        self,
        *,
        file: TextIO | None = None,
        big_file: int = 32 * MiB,
        max_file_bars: int = 4,
        interval: float = 0.2,
        description: str = "asynchub",
        clock: Callable[[], float] = time.monotonic,
        **tqdm_kwargs: Any,
    ) -> None:
        self._file = sys.stderr if file is None else file
        self.big_file = big_file
        self.max_file_bars = max_file_bars
        self.interval = interval
        self.description = description
        self.clock = clock
        self._tqdm_kwargs = tqdm_kwargs
        self._lock = threading.Lock()
        self._draw_lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._dirty = False
        self._failed = 0
        self._started: float | None = None
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
                if entry.started is None:
                    entry.started = self.clock()
                    if self._started is None:
                        self._started = entry.started
                entry.done_bytes += event.nbytes
                if kind == "resumed":
                    entry.resumed += event.nbytes
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

    def _bar(self, **kwargs: Any) -> Any:
        options: dict[str, Any] = {
            "unit": "B",
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
        ``resumed``, ``verified``, ``files``, ``finished`` and ``failed``."""
        with self._lock:
            counted = [f for f in self._files.values() if f.state != "cached"]
            return {
                "total": sum(f.total or 0 for f in counted),
                "done": sum(f.done_bytes for f in counted),
                "resumed": sum(f.resumed for f in counted),
                "verified": sum(f.verified for f in counted),
                "files": len(counted),
                "finished": sum(1 for f in counted if f.state in ("done", "failed")),
                "failed": self._failed,
            }

    def render(self, *, force: bool = False) -> None:
        """Redraw the bars from the counters (the drawing thread calls it; ``force`` redraws
        even when nothing changed)."""
        with self._draw_lock:
            with self._lock:
                if not (self._dirty or force):
                    return
                self._dirty = False
                files = {
                    name: _File(f.total, f.done_bytes, f.resumed, f.verified, f.started, f.state)
                    for name, f in self._files.items()
                }
                failed, started = self._failed, self._started
            self._draw(files, failed, started, self.clock())

    def _draw(
        self, files: dict[str, _File], failed: int, started: float | None, now: float
    ) -> None:
        counted = {n: f for n, f in files.items() if f.state != "cached"}
        total = sum(f.total or 0 for f in counted.values())
        done = sum(f.done_bytes for f in counted.values())
        resumed = sum(f.resumed for f in counted.values())
        verified = sum(f.verified for f in counted.values())
        finished = sum(1 for f in counted.values() if f.state in ("done", "failed"))
        text = progress_text(done, total or None, resumed, started, now)
        text += f" files {finished}/{len(counted)}, verified {format_size(verified)}"
        if failed:
            text += f", failed {failed}"
        if self._total_bar is None:
            self._total_bar = self._bar(desc=self.description, total=total or None, position=0)
        self._set(self._total_bar, done, total or None, resumed, text)
        self._draw_files(counted, now)

    @staticmethod
    def _set(bar: Any, n: int, total: int | None, initial: int, text: str) -> None:
        if total and total != bar.total and hasattr(bar, "container"):
            # A notebook widget (tqdm.notebook) keeps its own maximum, set when the bar is
            # made; only ``reset`` moves it, so a total that grows (a file planned after the
            # first frame) or becomes known would leave the widget full or stuck at "unknown".
            bar.reset(total=total)
        bar.total = total
        bar.initial = initial
        bar.n = min(n, total) if total else n
        head = "{desc}: {percentage:3.0f}%|{bar}| " if total else "{desc}: "
        bar.bar_format = head + _escape(text)
        bar.refresh()

    def _draw_files(self, files: dict[str, _File], now: float) -> None:
        for name in list(self._file_bars):
            entry = files.get(name)
            if entry is None or entry.state != "active":
                self._file_bars.pop(name).close()
        for name, entry in files.items():
            if (
                entry.state == "active"
                and (entry.total or 0) >= self.big_file
                and name not in self._file_bars
                and len(self._file_bars) < self.max_file_bars
            ):
                self._file_bars[name] = self._bar(
                    desc=_short(name), total=entry.total, initial=entry.resumed, leave=False
                )
        for name, bar in self._file_bars.items():
            f = files[name]
            self._set(
                bar,
                f.done_bytes,
                f.total,
                f.resumed,
                progress_text(f.done_bytes, f.total, f.resumed, f.started, now),
            )

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the drawing thread, remove the per-file bars and leave the aggregate bar's
        final state as one clean line (see the module docstring)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join()
        with self._draw_lock:
            for bar in self._file_bars.values():
                bar.close()
            self._file_bars.clear()
        with self._lock:
            files = dict(self._files)
            failed, started = self._failed, self._started
        if not files:
            return
        with self._draw_lock:
            if self._total_bar is not None and _is_terminal(self._file):
                self._file.write("\r\x1b[K")  # erase the line, and a ^C echoed onto it
            self._draw(files, failed, started, self.clock())
            self._total_bar.close()
            self._total_bar = None

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AutoBars:
    """The bars of ``Hub(progress=True)`` and of the module-level functions: a fresh
    :class:`ProgressBars` for each operation, made when its first byte moves and closed by
    :meth:`finish` (the hub calls it when its last running operation ends), so every
    ``load``/``download``/``prefetch`` gets its own bars and a warm ``load`` (nothing fetched)
    draws nothing. ``planned`` events seen before the first byte are replayed into the new
    bars, so totals are right from the first frame."""

    def __init__(self, factory: Callable[[], ProgressBars] = ProgressBars) -> None:
        self._factory = factory
        self._bars: ProgressBars | None = None
        self._pending: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        bars = self._bars
        if bars is None:
            if event.kind not in ("resumed", "transfer"):
                if event.kind == "planned":
                    self._pending.append(event)
                return
            bars = self._bars = self._factory()
            for planned in self._pending:
                bars(planned)
            self._pending.clear()
        bars(event)

    def finish(self) -> None:
        """Close the current bars (if any); the next operation starts new ones."""
        bars, self._bars = self._bars, None
        self._pending.clear()
        if bars is not None:
            bars.close()


def resolve_progress(
    progress: Callable[[ProgressEvent], None] | bool | None, config: HubConfig
) -> Callable[[ProgressEvent], None] | None:
    """A hub's ``progress=`` argument → its callback: ``True`` gives :class:`AutoBars` when a
    person is watching (:func:`bars_enabled`) and nothing otherwise; ``False``/``None`` give
    nothing; a callable is used as it is."""
    if progress is True:
        return AutoBars() if bars_enabled(config) else None
    if progress is False or progress is None:
        return None
    return progress


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _short(name: str, width: int = 28) -> str:
    base = name.rsplit("/", 1)[-1]
    return base if len(base) <= width else "…" + base[-(width - 1) :]
