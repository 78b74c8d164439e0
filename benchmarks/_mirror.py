"""The benchmark mirror: the generated zoo served over HTTP on 127.0.0.1, three ways at once.

``MirrorSet(root, work, rate_limit, latency)`` starts one server process with three ports:

* ``plain``  -- no cap, no added latency (scenario A, the loopback limit);
* ``capped`` -- every connection capped at ``rate_limit`` bytes/s (scenarios B and E);
* ``slow``   -- the cap plus ``latency`` seconds before every response (scenarios C and D).

Choices:

* nginx from Debian when it is installed: ``sendfile on``, ``limit_rate`` per connection (what a
  CDN edge does), an access log per port so a run can count the requests a client made. The
  latency comes from the echo module (``echo_sleep`` then ``echo_exec`` to a named location that
  serves the file, so Range, HEAD and ETag behave exactly like static files). Without the echo
  module a small asyncio proxy in its own process delays each request by ``latency``.
* Without nginx: ``asynchub._demo.static_server.StaticMirror`` (stdlib), else the aiohttp mirror
  ``tests/mirror.py``, each in its own process (``python _mirror.py serve``), so the server never
  shares a core's GIL with the client being measured. Both are much slower than nginx: the table
  header says which server was used.
* Processes started here are stopped here, by their own pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ECHO_MODULE_PATHS = (
    "/usr/lib/nginx/modules/ngx_http_echo_module.so",
    "/usr/share/nginx/modules/ngx_http_echo_module.so",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Endpoint:
    """One port of the mirror: its base URL and a way to count the requests it served."""

    name: str
    port: int
    counter: Path  # nginx access log (one line per request) or a file holding a number
    counter_is_log: bool

    counts: bool = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    @property
    def manifest_url(self) -> str:
        return f"{self.base_url}/ONNX_HUB_MANIFEST.json"

    @property
    def file_url(self) -> str:
        return f"{self.base_url}/{{path}}"

    def requests(self) -> int:
        """Requests served so far on this port."""
        if not self.counter.exists():
            return 0
        if self.counter_is_log:
            with self.counter.open("rb") as stream:
                return sum(1 for _ in stream)
        time.sleep(0.1)  # the fallback server writes its count every 20 ms
        text = self.counter.read_text().strip()
        return int(text) if text else 0


@dataclass
class MirrorSet:
    root: Path
    work: Path
    rate_limit: int
    latency: float
    prefer: str = "auto"  # "auto" | "nginx" | "python"
    kind: str = ""
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> MirrorSet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def plain(self) -> Endpoint:
        return self.endpoints["plain"]

    @property
    def capped(self) -> Endpoint:
        return self.endpoints["capped"]

    @property
    def slow(self) -> Endpoint:
        return self.endpoints["slow"]

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                          else None)
        if self.prefer != "python" and nginx:
            self._start_nginx(nginx)
        elif self.prefer == "nginx":
            raise RuntimeError("nginx is not installed; run benchmarks/setup.sh")
        else:
            self._start_python()

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._procs.clear()

    def server_cpu(self) -> float:
        """CPU-s the mirror's processes (and their children: nginx's workers) used so far,
        read from ``/proc`` (0 where there is none)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        pids = [proc.pid for proc in self._procs]
        for pid in list(pids):
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                pids += [int(child) for child in children]
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def describe(self) -> str:
        cap = f"{self.rate_limit / 1e6:g} MB/s per connection"
        return f"{self.kind} on 127.0.0.1 (cap {cap}, latency {self.latency * 1000:g} ms)"

    # ------------------------------------------------------------------ nginx
    def _start_nginx(self, nginx: str) -> None:
        echo = next((p for p in ECHO_MODULE_PATHS if Path(p).exists()), None)
        ports = {name: free_port() for name in ("plain", "capped", "slow")}
        proxy_port = None
        if echo is None and self.latency > 0:
            proxy_port, ports["slow_backend"] = ports["slow"], free_port()
        conf = self.work / "nginx.conf"
        conf.write_text(self._nginx_conf(ports, echo))
        for name in ports:
            (self.work / f"access-{name}.log").unlink(missing_ok=True)
        log = (self.work / "nginx.out").open("wb")
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(self.work)],
                                stdout=log, stderr=subprocess.STDOUT)
        self._procs.append(proc)
        for name in ("plain", "capped", "slow_backend" if proxy_port else "slow"):
            self._wait(ports[name], proc)
        for name in ("plain", "capped"):
            self.endpoints[name] = Endpoint(name, ports[name],
                                            self.work / f"access-{name}.log", True)
        if proxy_port:
            self._start_proxy(proxy_port, ports["slow_backend"])
            self.endpoints["slow"] = Endpoint("slow", proxy_port,
                                              self.work / "access-slow_backend.log", True)
            self.kind = "nginx + asyncio latency proxy"
        else:
            self.endpoints["slow"] = Endpoint("slow", ports["slow"],
                                              self.work / "access-slow.log", True)
            self.kind = "nginx" + (" (echo_sleep latency)" if self.latency > 0 else "")

    def _nginx_conf(self, ports: dict[str, int], echo: str | None) -> str:
        work = self.work
        root = self.root.resolve()
        user = "user root;\n" if os.geteuid() == 0 else ""
        load = f"load_module {echo};\n" if echo else ""
        tmp = work / "nginx-tmp"
        tmp.mkdir(exist_ok=True)
        # nginx paces a capped response by delaying after each write; the first write of a
        # request goes out unpaced, so a small sendfile chunk keeps that burst to 256 KiB.
        rate = f"limit_rate {self.rate_limit}; sendfile_max_chunk 256k;"

        def server(name: str, body: str) -> str:
            return (f"  server {{\n    listen 127.0.0.1:{ports[name]};\n    root {root};\n"
                    f"    access_log {work}/access-{name}.log;\n{body}  }}\n")

        if echo and self.latency > 0:
            slow = server("slow", f"    location / {{ echo_sleep {self.latency:.3f}; "
                                  f"echo_exec @files; }}\n    location @files {{ {rate} }}\n")
        elif "slow_backend" in ports:
            slow = server("slow_backend", f"    {rate}\n")
        else:
            slow = server("slow", f"    {rate}\n")
        return (
            f"{load}{user}daemon off;\nmaster_process on;\nworker_processes 2;\n"
            f"pid {work}/nginx.pid;\nerror_log {work}/nginx-error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            f"  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};\n"
            f"  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n"
            "  sendfile on; tcp_nopush on; tcp_nodelay on;\n"
            "  keepalive_requests 100000; keepalive_timeout 75s;\n"
            "  default_type application/octet-stream;\n"
            + server("plain", "")
            + server("capped", f"    {rate}\n")
            + slow
            + "}\n"
        )

    # ------------------------------------------------------------------ python fallback
    def _start_python(self) -> None:
        for name, rate, latency in (("plain", None, 0.0), ("capped", self.rate_limit, 0.0),
                                    ("slow", self.rate_limit, self.latency)):
            counter = self.work / f"count-{name}.txt"
            port_file = self.work / f"port-{name}.txt"
            counter.unlink(missing_ok=True)
            port_file.unlink(missing_ok=True)
            cmd = [sys.executable, str(HERE / "_mirror.py"), "serve", "--root", str(self.root),
                   "--port-file", str(port_file), "--count-file", str(counter),
                   "--latency", str(latency)]
            if rate:
                cmd += ["--rate", str(rate)]
            proc = subprocess.Popen(cmd, cwd=ROOT)
            self._procs.append(proc)
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fallback mirror {name} did not start")
                time.sleep(0.05)
            port = int(port_file.read_text())
            self._wait(port, proc)
            self.endpoints[name] = Endpoint(name, port, counter, False)
        self.kind = "python fallback server"

    def _start_proxy(self, listen: int, upstream: int) -> None:
        proc = subprocess.Popen([sys.executable, str(HERE / "_mirror.py"), "proxy",
                                 "--port", str(listen), "--upstream", str(upstream),
                                 "--latency", str(self.latency)], cwd=ROOT)
        self._procs.append(proc)
        self._wait(listen, proc)

    def _wait(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        try:
            wait_port(port)
        except RuntimeError:
            if proc.poll() is not None:
                err = (self.work / "nginx-error.log")
                detail = err.read_text()[-2000:] if err.exists() else ""
                raise RuntimeError(f"mirror server exited ({proc.returncode}): {detail}") from None
            raise


# ---------------------------------------------------------------------- subprocess servers
async def _proxy(port: int, upstream: int, latency: float) -> None:
    """Forward 127.0.0.1:port to 127.0.0.1:upstream, holding each request ``latency`` s."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   delay: float) -> None:
        try:
            while data := await reader.read(1 << 20):
                if delay:
                    await asyncio.sleep(delay)  # one client read is one GET request
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.close()
            return
        await asyncio.wait([asyncio.ensure_future(pump(reader, up_writer, latency)),
                            asyncio.ensure_future(pump(up_reader, writer, 0.0))])

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def _serve(root: Path, rate: int | None, latency: float, port_file: Path,
           count_file: Path) -> None:
    """Serve ``root`` with the project's own mirror servers, writing the port and the count."""
    sys.path.insert(0, str(ROOT))
    server: Any
    try:
        from asynchub._demo.static_server import StaticMirror
    except ImportError:
        from tests.mirror import MirrorServer

        server = MirrorServer(root, latency=latency, rate_limit=rate)
        server.start_in_thread()
    else:
        server = StaticMirror(root, host="127.0.0.1", port=0, rate_limit=rate, latency=latency)
        for name in ("start", "__enter__"):
            if hasattr(server, name):
                getattr(server, name)()
                break

    def count() -> int:
        for attr in ("requests", "request_log", "log"):
            value = getattr(server, attr, None)
            if isinstance(value, list):
                return len(value)
        value = getattr(server, "request_count", None)
        return int(value) if isinstance(value, int) else -1

    port = getattr(server, "port", None) or getattr(server, "server_port", None)
    if not port and hasattr(server, "url"):
        port = int(str(server.url).rsplit(":", 1)[1].split("/")[0])
    port_file.write_text(str(port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    tmp = count_file.with_suffix(".tmp")
    while not stop.wait(0.02):
        tmp.write_text(str(count()))
        os.replace(tmp, count_file)  # readers never see a half-written number
    for name in ("stop", "close", "shutdown", "__exit__"):
        if hasattr(server, name):
            with contextlib.suppress(Exception):
                getattr(server, name)(*([None] * 3 if name == "__exit__" else []))
            break


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--root", type=Path, required=True)
    serve.add_argument("--port-file", type=Path, required=True)
    serve.add_argument("--rate", type=int)
    serve.add_argument("--latency", type=float, default=0.0)
    serve.add_argument("--count-file", type=Path, required=True)
    proxy = sub.add_parser("proxy")
    proxy.add_argument("--port", type=int, required=True)
    proxy.add_argument("--upstream", type=int, required=True)
    proxy.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        _serve(args.root, args.rate, args.latency, args.port_file, args.count_file)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(_proxy(args.port, args.upstream, args.latency))


if __name__ == "__main__":
    main()
