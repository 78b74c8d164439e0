"""Progress as a person sees it: the bars' rendered text (tqdm writing to a StringIO or a real
pseudo-terminal), after a resume, in one size format, bars only where someone watches, steps
small enough to move on a slow link, and one clean line after Ctrl-C."""

from __future__ import annotations

import fcntl
import io
import itertools
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from asynchub._config import HubConfig
from asynchub._hub.client import AsyncHub
from asynchub._progress.bars import AutoBars, ProgressBars, resolve_progress
from asynchub._progress.events import ProgressEvent
from asynchub._progress.units import format_size, parse_size_text
from tests.conftest import mirror_config
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "/{owner}/{repo}/{ref}/"
#: tqdm's own size style ("289M", "1.07TB/s", "21.4MB"): never in our text
TQDM_STYLE = re.compile(r"\d(?:[kMGT]B?|[kMGT]?B/s)(?![a-z])")
#: our style: "587 B", "80.4 MB", "26.2 MB/s"
OUR_SIZE = re.compile(r"\d+(?:\.\d)? (?:B|kB|MB|GB|TB)(?:/s)?")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _visible(raw: str) -> list[str]:
    """The screen a terminal would show for ``raw`` (enough of VT100 for tqdm: CR, LF,
    erase to end of line, cursor up)."""
    lines: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\x1b":
            match = re.match(r"\x1b\[(\d*)([A-Za-z])", raw[i:])
            if match:
                count, code = int(match.group(1) or 1), match.group(2)
                if code == "A":
                    row = max(row - count, 0)
                elif code == "K":
                    del lines[row][col:]
                i += match.end()
                continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            col = 0
            while len(lines) <= row:
                lines.append([])
        elif ch >= " " or ch == "\t":
            line = lines[row]
            while len(line) < col:
                line.append(" ")
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    return ["".join(line).rstrip() for line in lines if "".join(line).strip()]


# --- the text of the bars ---------------------------------------------------------------------


def test_size_format_is_decimal_and_parses_back() -> None:
    assert format_size(587) == "587 B"
    assert format_size(399_733) == "399.7 kB"
    assert format_size(288_800_000) == "288.8 MB"
    assert format_size(1_073_741_824) == "1.1 GB"
    assert parse_size_text("50M") == 50_000_000
    assert parse_size_text("500k") == 500_000
    assert parse_size_text("2.5 MB/s") == 2_500_000
    assert parse_size_text("16Mi") == 16 * 1024 * 1024
    assert parse_size_text("16MiB") == 16 * 1024 * 1024
    assert parse_size_text("fast") is None and parse_size_text("i") is None


def test_a_resumed_file_starts_at_its_bytes_on_disk_with_no_absurd_rate() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    bars = ProgressBars(file=stream, clock=clock, interval=60)
    bars(ProgressEvent("planned", "big/model.onnx", total=288_000_000))
    bars(ProgressEvent("resumed", "big/model.onnx", nbytes=80_000_000, total=288_000_000))
    bars.render()
    first = _visible(stream.getvalue())
    assert any("80.0 MB/288.0 MB [00:00<?, ? B/s]" in line for line in first), first
    assert any(" 28%|" in line for line in first), first
    clock.now += 2.0
    bars(ProgressEvent("transfer", "big/model.onnx", nbytes=20_000_000, total=288_000_000))
    bars.render()
    screen = _visible(stream.getvalue())
    text = "\n".join(screen)
    # 20 MB in 2 s: 10 MB/s, not (80 + 20) MB / 2 s, nor anything per millisecond
    assert "100.0 MB/288.0 MB [00:02<00:18, 10.0 MB/s]" in text, screen
    assert "GB/s" not in text and "TB/s" not in text
    bars.close()
    assert bars.snapshot()["resumed"] == 80_000_000


def test_a_file_bar_drawn_late_agrees_with_the_aggregate() -> None:
    clock = FakeClock()
    stream = _Tty()
    bars = ProgressBars(file=stream, clock=clock, interval=60, big_file=1_000_000)
    bars(ProgressEvent("planned", "a/first.onnx", total=50_000_000))
    bars(ProgressEvent("transfer", "a/first.onnx", nbytes=5_000_000, total=50_000_000))
    clock.now += 4.0  # the bar is drawn only now, 4 s after the file started
    bars(ProgressEvent("transfer", "a/first.onnx", nbytes=15_000_000, total=50_000_000))
    bars.render()
    text = "\n".join(_visible(stream.getvalue()))
    rates = re.findall(r"(\d+\.\d) MB/s", text)
    assert rates and set(rates) == {"5.0"}, text  # 20 MB in 4 s, on both bars
    assert "first.onnx" in text
    bars.close()


def test_one_size_format_on_every_bar() -> None:
    clock = FakeClock()
    stream = _Tty()
    bars = ProgressBars(file=stream, clock=clock, interval=60, big_file=1_000_000)
    for name, total in (("m/a.onnx", 289_000_000), ("m/b.onnx", 587)):
        bars(ProgressEvent("planned", name, total=total))
    bars(ProgressEvent("transfer", "m/a.onnx", nbytes=21_400_000, total=289_000_000))
    bars(ProgressEvent("verified", "m/a.onnx", nbytes=21_400_000, total=289_000_000))
    clock.now += 1.5
    bars.render()
    bars.close()
    text = "\n".join(_visible(stream.getvalue()))
    assert "verified 21.4 MB" in text and "21.4 MB/289.0 MB" in text, text
    assert not TQDM_STYLE.search(text), text
    assert len(OUR_SIZE.findall(text)) >= 4


def test_bars_only_where_a_person_watches(tmp_path: Path) -> None:
    config = HubConfig(cache_dir=tmp_path)
    # AsyncHub: no bars unless asked; True means "if someone watches"
    assert resolve_progress(None, config) is None
    assert resolve_progress(False, config) is None
    watching = resolve_progress(True, config)
    assert watching is None or isinstance(watching, AutoBars)  # stderr here may be a tty
    assert resolve_progress(True, config.replace(progress_bars=False)) is None
    callback = print
    assert resolve_progress(callback, config) is callback


def test_auto_bars_draw_nothing_for_a_cached_file_and_one_set_per_operation() -> None:
    made: list[tuple[ProgressBars, io.StringIO]] = []

    def factory() -> ProgressBars:
        stream = io.StringIO()
        bars = ProgressBars(file=stream, interval=60)
        made.append((bars, stream))
        return bars

    auto = AutoBars(factory)
    auto(ProgressEvent("planned", "m.onnx", total=1000))
    auto(ProgressEvent("cached", "m.onnx", total=1000))
    auto.finish()
    assert made == []  # a warm load draws nothing
    for _ in range(2):
        auto(ProgressEvent("planned", "m.onnx", total=1000))
        auto(ProgressEvent("transfer", "m.onnx", nbytes=1000, total=1000))
        auto(ProgressEvent("done", "m.onnx", total=1000))
        auto.finish()
    assert len(made) == 2
    for bars, stream in made:
        assert bars.snapshot()["total"] == 1000  # the replayed plan
        assert "1.0 kB/1.0 kB" in stream.getvalue()


# --- the engine's steps on a slow link ----------------------------------------------------


async def test_progress_moves_every_quarter_second_at_256_kb_per_s(
    mirror_root: Path, tmp_path: Path
) -> None:
    server = MirrorServer(mirror_root, rate_limit=256_000)
    await server.start()
    seen: list[tuple[float, int]] = []

    def record(event: ProgressEvent) -> None:
        if event.kind == "transfer":
            seen.append((time.monotonic(), event.nbytes))

    try:
        config = mirror_config(server.url, tmp_path / "cache", chunk_size=16 << 20)
        with anyio.fail_after(30):
            async with AsyncHub(config, progress=record) as hub:
                started = time.monotonic()
                await hub.download("TinyNet")  # 400 kB: ~1.6 s at 256 kB/s, one connection
    finally:
        await server.stop()
    assert sum(n for _, n in seen) == 399_733
    assert len(seen) >= 4, seen  # not one 1 MiB step at the end
    times = [started] + [t for t, _ in seen]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 0.8, gaps
    assert max(n for _, n in seen) < 200_000


# --- real terminals ------------------------------------------------------------------------


@pytest.fixture
def slow_server(mirror_root: Path) -> Iterator[MirrorServer]:
    with MirrorServer(mirror_root, rate_limit=200_000).running() as running:
        yield running


def _client_env(server: MirrorServer, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHUB_")}
    env.update(
        ASYNCHUB_MANIFEST_URL=server.url + TEMPLATE + "ONNX_HUB_MANIFEST.json",
        ASYNCHUB_FILE_URLS=server.url + TEMPLATE + "{path}",
        ASYNCHUB_CACHE_DIR=str(cache),
        PYTHONPATH=str(ROOT),
    )
    return env


def _run_in_pty(
    argv: list[str], env: dict[str, str], *, interrupt_when: str | None = None
) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its controlling terminal (stdin, stdout and
    stderr); type Ctrl-C once ``interrupt_when`` shows up. Returns (exit status, output)."""
    pid, master = pty.fork()
    if pid == 0:  # the child
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    chunks: list[bytes] = []
    typed = False
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
        seen = b"".join(chunks).decode(errors="replace")
        if interrupt_when and not typed and interrupt_when in seen:
            os.write(master, b"\x03")  # Ctrl-C, as typed: the terminal sends SIGINT
            typed = True
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(master)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_bars_by_default_and_a_pipe_does_not(
    slow_server: MirrorServer, tmp_path: Path
) -> None:
    code = "import asynchub, sys; print(asynchub.download('NanoText'), file=sys.stderr)"
    env = _client_env(slow_server, tmp_path / "tty-cache")
    status, output = _run_in_pty([sys.executable, "-c", code], env)
    assert status == 0, output
    screen = _visible(output)
    bar_lines = [line for line in screen if line.startswith("asynchub:") and "%|" in line]
    assert len(bar_lines) == 1, screen  # one final line, in our format
    assert "100%|" in bar_lines[0] and "299.5 kB/299.5 kB" in bar_lines[0], bar_lines
    assert not TQDM_STYLE.search(output)

    piped = subprocess.run(
        [sys.executable, "-c", code],
        env=_client_env(slow_server, tmp_path / "pipe-cache"),
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert "%|" not in piped.stderr and "asynchub:" not in piped.stderr
    assert piped.stderr.strip().endswith("_nanotext-10.onnx")

    off = _client_env(slow_server, tmp_path / "off-cache")
    off["ASYNCHUB_DISABLE_PROGRESS_BARS"] = "1"
    status, output = _run_in_pty([sys.executable, "-c", code], off)
    assert status == 0 and "%|" not in output, output


def test_ctrl_c_leaves_one_clean_line_and_the_resume_shows_honest_numbers(
    slow_server: MirrorServer, tmp_path: Path
) -> None:
    env = _client_env(slow_server, tmp_path / "cache")
    argv = [sys.executable, "-m", "asynchub", "download", "TinyNet"]
    status, output = _run_in_pty(argv, env, interrupt_when="kB/399.7 kB")
    assert status == 130, output
    screen = _visible(output)
    bars = [line for line in screen if "%|" in line]
    assert len(bars) == 1, screen  # no duplicated line
    assert "^" not in bars[0], screen  # no stray ^C on the bar
    assert sum("interrupted" in line for line in screen) == 1, screen
    assert screen[-1].startswith("asynchub: interrupted"), screen

    status, output = _run_in_pty(argv, env)
    assert status == 0, output
    screen = _visible(output)
    final = [line for line in screen if "%|" in line]
    assert len(final) == 1 and "399.7 kB/399.7 kB" in final[0], screen
    # every frame of the resumed run: no rate above what the link can do (200 kB/s)
    for rate, unit in re.findall(r"(\d+\.\d) (kB|MB|GB|TB)/s", output):
        assert unit == "kB" and float(rate) < 300, output
