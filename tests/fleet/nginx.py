"""Run the shipped nginx configurations (``deploy/nginx/*.conf``) for a test.

:func:`render` replaces the directive of every line tagged ``# @name`` with the test's value
(ports, paths, origin), so the test runs the file as shipped otherwise and a tag the test does
not know (or a tag that disappeared) fails loudly. :func:`nginx_running` writes a minimal main
configuration around the rendered snippets (its own pid file, logs and temp paths in a temp
directory), checks it with ``nginx -t``, runs nginx in the foreground as a child process and
stops that process (and only it) at the end.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.fleet.system import ensure_packages, run, wait_until, which

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
_TAG = re.compile(r"^(?P<indent>\s*)(?P<directive>[^#\n]*?)\s*#\s*@(?P<name>[a-z_]+)\s*$")


def render(template: Path, values: Mapping[str, str]) -> str:
    """``template`` with each ``... # @name`` line replaced by ``values[name]``."""
    seen: set[str] = set()
    out: list[str] = []
    for line in template.read_text().splitlines():
        match = _TAG.match(line)
        if match is None:
            out.append(line)
            continue
        name = match.group("name")
        if name not in values:
            raise KeyError(f"{template.name}: no test value for the setting @{name}")
        seen.add(name)
        out.append(match.group("indent") + values[name])
    missing = set(values) - seen
    if missing:
        raise KeyError(f"{template.name} has no line tagged {sorted(missing)}")
    return "\n".join(out) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ensure_nginx() -> str:
    ensure_packages(["nginx"], ["nginx"])
    binary = which("nginx")
    assert binary is not None
    if "http_slice_module" not in run([binary, "-V"], check=False) + _stderr_of([binary, "-V"]):
        raise RuntimeError("this nginx is built without the slice module (http_slice_module)")
    return binary


def _stderr_of(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stderr


@contextlib.contextmanager
def nginx_running(workdir: Path, snippets: list[str], ports: list[int]) -> Iterator[Path]:
    """nginx with ``snippets`` in its ``http`` block, listening on ``ports`` (127.0.0.1);
    yields the directory holding its logs."""
    binary = ensure_nginx()
    workdir.mkdir(parents=True, exist_ok=True)
    includes = []
    for index, text in enumerate(snippets):
        path = workdir / f"site-{index}.conf"
        path.write_text(text)
        includes.append(f"    include {path};")
    temp = workdir / "temp"
    temp.mkdir(exist_ok=True)
    main = workdir / "nginx.conf"
    main.write_text(
        "\n".join(
            [
                "user root;",
                "worker_processes 2;",
                f"pid {workdir / 'nginx.pid'};",
                f"error_log {workdir / 'error.log'} info;",
                "events { worker_connections 512; }",
                "http {",
                f"    access_log {workdir / 'access.log'};",
                "    default_type application/octet-stream;",
                *(f"    {kind}_temp_path {temp / kind};" for kind in
                  ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
                *includes,
                "}",
                "",
            ]
        )
    )  # fmt: skip
    run([binary, "-t", "-c", str(main), "-p", str(workdir)], timeout=60)
    proc = subprocess.Popen(
        [binary, "-c", str(main), "-p", str(workdir), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for port in ports:
            wait_until(
                lambda p=port: _accepts(p) or proc.poll() is not None,  # type: ignore[misc]
                f"nginx to listen on {port}",
                30,
            )
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(workdir / 'error.log').read_text()[-2000:]}")
        yield workdir
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()
