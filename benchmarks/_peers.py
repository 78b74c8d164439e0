"""Run one measured tool in a subprocess, and the command lines of every tool compared.

``measure(cmd)`` starts ``cmd`` in its own process group and waits for it with ``os.wait4``:
wall time from ``perf_counter`` around start and reap, CPU seconds and peak RSS from the
child's ``rusage`` (``ru_maxrss`` covers the child and every descendant it waited for, so a
``bash -c "curl ... && sha256sum ..."`` pipeline is counted whole). A driver script may print one
JSON object on its last stdout line (in-process timings, request counts); it lands in
``Run.extra``.

Tools, each invoked the way a user would:

* asynchub -- ``_drive_asynchub.py`` (the public API, in a fresh process);
* onnx.hub -- ``_drive_onnxhub.py`` run by the ``onnx==1.20.1`` virtual environment;
* curl -- one stream, ``curl -sS --fail -o``;
* aria2c -- ``-x16 -s16`` (``-j16`` for many files), ``--file-allocation=falloc`` (the
  manual's advice for ext4; the default ``prealloc`` would write every file twice);
* hf_transfer -- ``hf_transfer.download`` with 10 MiB chunks (huggingface_hub's), twice: 16
  parallel requests (``max_files=16``, the setting the targets name) and huggingface_hub's
  own 100 (``HF_TRANSFER_CONCURRENCY``), shown beside it;
* a bare client -- ``_bare_client.py``: one thread per connection (as many as asynchub may
  use), ``recv_into`` and ``pwritev``, no verification: what moving the bytes costs here;
* a bare verified client -- ``_bare_verified.py``: the same, with the file cut into eight
  pieces per connection fetched in order over keep-alive connections and SHA-256 following
  the finished prefix in one more thread: what a verified download costs here, with none of
  asynchub's duties (manifest, cache lock, resume state, retries, watchdog, fsync before the
  rename);
* ``sha256sum`` -- the separate verification pass added to the peers that do not verify.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV_ONNX120 = HERE / ".venv-onnx120"
MiB = 1024 * 1024
HF_MAX_FILES = 16  # the targets' hf_transfer: 16 parallel requests
HF_MAX_FILES_HUB = 100  # huggingface_hub's HF_TRANSFER_CONCURRENCY
HF_CHUNK = 10 * MiB  # huggingface_hub's DOWNLOAD_CHUNK_SIZE


@dataclass
class Run:
    """One measured process."""

    wall: float
    cpu: float
    rss_mb: float
    returncode: int
    extra: dict[str, Any] = field(default_factory=dict)
    stderr: str = ""
    stdout: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.extra.get("error")


def measure(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 900.0,
            cwd: Path | None = None) -> Run:
    """Run ``cmd`` to completion; wall time, CPU seconds, peak RSS (MB) and driver JSON.

    GNU ``time`` (``/usr/bin/time``) starts the command when it is installed: a child forked
    from this (large) harness process would otherwise carry the harness's memory high-water
    mark into its own ``ru_maxrss``. Without it, ``os.wait4`` on the direct child is used.
    """
    full_env = {**os.environ, **(env or {})}
    gnu_time = Path("/usr/bin/time")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        argv = ([str(gnu_time), "-o", report.name, "-f", "%U %S %M", *cmd]
                if gnu_time.exists() else cmd)
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=full_env, cwd=cwd,
                                start_new_session=True)
        timer = threading.Timer(timeout, _kill_group, args=(proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu, rss_kb = usage.ru_utime + usage.ru_stime, float(usage.ru_maxrss)
        if gnu_time.exists():
            fields = (report.read().strip().splitlines() or [""])[-1].split()
            if len(fields) == 3:
                cpu, rss_kb = float(fields[0]) + float(fields[1]), float(fields[2])
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    extra: dict[str, Any] = {}
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                extra = json.loads(line)
            except ValueError:
                continue
            break
    return Run(wall=wall, cpu=cpu, rss_mb=rss_kb / 1024, returncode=proc.returncode,
               extra=extra, stderr=stderr[-3000:], stdout=stdout[-200_000:])


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def have(tool: str) -> bool:
    if tool == "hf_transfer":
        try:
            import hf_transfer  # noqa: F401
        except ImportError:
            return False
        return True
    if tool == "onnxhub":
        return (VENV_ONNX120 / "bin" / "python").exists()
    return shutil.which(tool) is not None


# ---------------------------------------------------------------------- command lines
def asynchub_cmd(op: str, **params: Any) -> list[str]:
    """``_drive_asynchub.py`` with one JSON argument (see that script)."""
    return [sys.executable, str(HERE / "_drive_asynchub.py"), json.dumps({"op": op, **params})]


def asynchub_cli_cmd(model: str, **params: Any) -> list[str]:
    """The ``asynchub download`` command as a user types it (configured by ``ASYNCHUB_*``
    variables for the mirror), through ``env`` so the measured process is the command's."""
    env = [f"ASYNCHUB_MANIFEST_URL={params['manifest_url']}",
           f"ASYNCHUB_FILE_URLS={','.join(params['file_urls'])}",
           "ASYNCHUB_DISABLE_PROGRESS_BARS=1"]
    return ["env", *env, sys.executable, "-m", "asynchub", "download", model,
            "--repo", str(params["repo"]), "--cache-dir", str(params["cache_dir"]),
            "--trust-repo", "-q"]


def onnxhub_cmd(op: str, **params: Any) -> list[str]:
    python = VENV_ONNX120 / "bin" / "python"
    return [str(python), str(HERE / "_drive_onnxhub.py"), json.dumps({"op": op, **params})]


def bare_onnx_load_cmd(path: Path, repeats: int = 20) -> list[str]:
    """``onnx.load`` of a local file in a fresh process; in-process time of the first call and
    the median of ``repeats`` more."""
    code = (
        "import json, statistics, sys, time\n"
        "t0 = time.perf_counter()\nimport onnx\nt1 = time.perf_counter()\n"
        "p = sys.argv[1]\ns = time.perf_counter(); onnx.load(p); first = time.perf_counter() - s\n"
        "more = []\n"
        f"for _ in range({repeats}):\n"
        "    s = time.perf_counter(); onnx.load(p); more.append(time.perf_counter() - s)\n"
        "print(json.dumps({'seconds': first, 'import_seconds': t1 - t0,\n"
        "                  'repeat_median': statistics.median(more)}))\n"
    )
    return [sys.executable, "-c", code, str(path)]


def bare_client_cmd(url: str, out: Path, connections: int) -> list[str]:
    """The reference client of ``_bare_client.py`` (threads, ``recv_into``, ``pwritev``)."""
    return [sys.executable, str(HERE / "_bare_client.py"), url, str(out), str(connections)]


def bare_verified_cmd(url: str, out: Path, connections: int, sha256: str) -> list[str]:
    """The reference client of ``_bare_verified.py`` (threads, ``recv_into``, ``pwritev``,
    SHA-256 of the finished prefix while it grows)."""
    return [sys.executable, str(HERE / "_bare_verified.py"), url, str(out), str(connections),
            sha256]


def curl_cmd(url: str, out: Path) -> list[str]:
    return ["curl", "-sS", "--fail", "-o", str(out), url]


def aria2c_cmd(urls: list[tuple[str, Path]], *, split: int = 16, jobs: int | None = None,
               list_file: Path | None = None) -> list[str]:
    """aria2c for one file (``-x{split} -s{split}``) or many (``-i list -j{jobs}``)."""
    base = ["aria2c", "-q", f"-x{split}", f"-s{split}", "--file-allocation=falloc",
            "--allow-overwrite=true", "--auto-file-renaming=false", "--console-log-level=error",
            "--summary-interval=0", "--max-tries=1"]
    if len(urls) == 1 and jobs is None:
        url, out = urls[0]
        return [*base, "-d", str(out.parent), "-o", out.name, url]
    if list_file is None:
        raise ValueError("many files need a list_file")
    lines = []
    for url, out in urls:
        lines += [url, f"  dir={out.parent}", f"  out={out.name}"]
    list_file.write_text("\n".join(lines) + "\n")
    return [*base, f"-j{jobs or 16}", "-i", str(list_file)]


def hf_transfer_cmd(url: str, out: Path, max_files: int = HF_MAX_FILES) -> list[str]:
    code = (
        "import sys, hf_transfer\n"
        "hf_transfer.download(url=sys.argv[1], filename=sys.argv[2], "
        f"max_files={max_files}, chunk_size={HF_CHUNK}, parallel_failures=0, max_retries=0)\n"
    )
    return [sys.executable, "-c", code, url, str(out)]


def sha256sum_cmd(paths: list[Path]) -> list[str]:
    return ["sha256sum", *map(str, paths)]


def curl_ttfb(url: str) -> tuple[float, float]:
    """(time to first byte, total) of one GET in seconds, from curl's own timers."""
    proc = subprocess.run(
        ["curl", "-sS", "--fail", "-o", os.devnull, "-w",
         "%{time_starttransfer} %{time_total}", url],
        capture_output=True, text=True, check=True, timeout=600)
    first, total = proc.stdout.split()
    return float(first), float(total)
