"""HubConfig: every setting of asynchub, and the ONLY place the environment is read.

Explicit arguments beat environment variables: ``HubConfig.from_env(max_connections=8, ...)``
reads the environment once and lets its keyword arguments (one per field, typed, so that a
misspelled name fails under mypy and at run time) win. A ``HubConfig`` is frozen; derive a changed
copy with :func:`dataclasses.replace` or :meth:`HubConfig.replace`.

Environment variables (all optional):

==================================  ==========================================================
``ONNX_HOME``                       cache root is ``$ONNX_HOME/hub`` (as onnx.hub)
``XDG_CACHE_HOME``                  else ``$XDG_CACHE_HOME/onnx/hub``; else ``~/.cache/onnx/hub``
``ASYNCHUB_CACHE_DIR``              overrides both (a full path to the hub cache directory)
``ASYNCHUB_MANIFEST_URL``           manifest URL template with ``{owner}``, ``{repo}``, ``{ref}``
``ASYNCHUB_FILE_URLS``              comma-separated file URL templates, also with ``{path}``
``ASYNCHUB_OFFLINE``                ``1``/``true``: never touch the network
``ASYNCHUB_TRUSTED_REPOS``          comma-separated ``owner/name`` trusted besides onnx/models
``ASYNCHUB_MAX_CONNECTIONS``        connections across all downloads (default 40; 1 to 1024)
``ASYNCHUB_MAX_CONNECTIONS_PER_HOST`` connections to one host (default 40)
``ASYNCHUB_CHUNK_SIZE``             Range chunk size in bytes (``16Mi``, ``8M``; 64K to 1Gi)
``ASYNCHUB_LIMIT_RATE``             bandwidth cap in bytes/s, all connections (``50M``; 1K to 1T)

Sizes and rates use one format everywhere (:mod:`asynchub._progress.units`): decimal units
(``50M`` = 50,000,000 bytes), with ``Ki``/``Mi``/``Gi`` for powers of 1024.
``ASYNCHUB_DISABLE_PROGRESS_BARS``  ``1``: no progress bars
``ASYNCHUB_CA_BUNDLE``              PEM file of extra trusted CAs (TLS stays verified)
``ASYNCHUB_MINDSPORE_CARD_URL``     MindSpore asset card URL template with ``{uid}``
``ASYNCHUB_PROXY``                  proxy URL for every request (beats the variables below)
``https_proxy`` / ``HTTPS_PROXY``   proxy for ``https://`` URLs (lower case wins, as curl)
``http_proxy`` / ``HTTP_PROXY``     proxy for ``http://`` URLs; ``HTTP_PROXY`` is ignored when
                                    ``REQUEST_METHOD`` is set (CGI, "httpoxy"), as urllib does
``all_proxy`` / ``ALL_PROXY``       proxy for both when the one above is not set
``no_proxy`` / ``NO_PROXY``         hosts reached directly (rules in ``_transport/proxy.py``)
``ASYNCHUB_EVENT_LOOP``             the sync API's and the CLI's own event loop: ``auto`` (uvloop
                                    where installed), ``asyncio`` or ``uvloop``
``ASYNCHUB_USE_LOCKS``              ``0``: no inter-process locks (default ``1``)
``ASYNCHUB_HOST_ID``                this machine's name in lock records and partial names
``ASYNCHUB_LOCK_LEASE``             seconds a lock holder may go without renewing (default 60)
``ASYNCHUB_LOCK_TIMEOUT``           seconds a waiter waits at most, then downloads in parallel
                                    (default 900; ``0``: no limit while the holder renews)
==================================  ==========================================================
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._engine.policy import RetryPolicy
from ._exceptions import ConfigError
from ._hosts import is_private_host
from ._progress.units import parse_size_text
from ._transport.proxy import check_proxy_url, redact_url

__all__ = [
    "DEFAULT_MANIFEST_URL",
    "DEFAULT_MINDSPORE_CARD_URL",
    "GITHUB_MEDIA_URL",
    "HF_ZOO_MIRROR_URL",
    "HubConfig",
    "default_cache_dir",
    "parse_size",
]

DEFAULT_MANIFEST_URL = (
    "https://raw.githubusercontent.com/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json"
)
HF_ZOO_MIRROR_URL = "https://huggingface.co/onnxmodelzoo/legacy_models/resolve/main/{path}"
GITHUB_MEDIA_URL = "https://media.githubusercontent.com/media/{owner}/{repo}/{ref}/{path}"
DEFAULT_MINDSPORE_CARD_URL = (
    "https://raw.githubusercontent.com/mindspore-ai/hub/master/mshub_res/assets/{uid}.md"
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

MiB = 1024 * 1024


#: Accepted ranges of the numeric environment variables (inclusive). Choices: a bare number is
#: bytes and units are accepted (see ``parse_size``); a chunk must be 64 kB to 1 GiB (below,
#: a request per few packets: ``=64`` meant 64-byte requests and ~2 h for 8 MiB; above, a
#: retry re-fetches too much); anything outside a range is refused, not clamped, so a typo
#: never silently changes behaviour. ``HubConfig(...)`` built in code only needs positive
#: values (tests use small chunks on purpose).
CHUNK_SIZE_RANGE = (64 * 1000, 1024**3, "64K", "1Gi")
LIMIT_RATE_RANGE = (1000, 1000**4, "1K", "1T")
CONNECTIONS_RANGE = (1, 1024)


#: The values of ``HubConfig.event_loop`` (``asynchub/_loops.py`` makes the loop).
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def _shown(value: object) -> str:
    """``value`` for an error message: its repr, cut to 40 characters."""
    text = str(value)
    return repr(text[:40] + "...") if len(text) > 40 else repr(text)


def parse_size(value: str | int, *, name: str) -> int:
    """``"50M"`` → 50,000,000; ``"16Mi"`` → 16,777,216 (decimal units, ``Ki``/``Mi``/``Gi``
    binary; see :mod:`asynchub._progress.units`). ``name`` (an environment variable or a CLI
    option) is named in the error; infinities, NaN and negative numbers are refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{name}={value} must not be negative")
        return value
    try:
        result = parse_size_text(str(value))
    except (OverflowError, ValueError):  # "1e400" is a float infinity
        result = None
    if result is None:
        raise ConfigError(
            f"{name}={_shown(value)} is not a size; use bytes or a number with k, M or G "
            "(decimal, e.g. 50M = 50,000,000) or Ki, Mi, Gi (binary, e.g. 16Mi)"
        )
    return result


def _check_range(name: str, value: int, bounds: tuple[int, int, str, str]) -> int:
    low, high, low_text, high_text = bounds
    if not low <= value <= high:
        raise ConfigError(
            f"{name}={_shown(value)} is out of range; use a value between {low_text} and"
            f" {high_text} (e.g. 8M)"
        )
    return value


def _parse_bool(value: str, *, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name}={_shown(value)} is not a boolean; use 1 or 0")


def _parse_int(value: str, *, name: str, bounds: tuple[int, int]) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 15):
        raise ConfigError(
            f"{name}={_shown(value)} is not a whole number between {bounds[0]} and {bounds[1]}"
        )
    low, high = bounds
    if not low <= int(text) <= high:
        raise ConfigError(f"{name}={int(text)} must be at least {low} and at most {high}")
    return int(text)


def _parse_seconds(value: str, name: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{name}={_shown(value)} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{name}={_shown(value)} must be a finite number of seconds, at least 0")
    return seconds


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


#: Inode of Linux's initial process namespace (``PROC_PID_INIT_INO``).
_INIT_PID_NS = "pid:[4026531836]"


def default_host_id() -> str:
    """This machine's name (``uname -n``) as lock records and partial names carry it, plus
    the process namespace when it is not the machine's own: containers that share a host name
    (host networking) but not their process ids must not judge each other's pids."""
    name = os.uname().nodename or "localhost"
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return name
    if namespace == _INIT_PID_NS or not namespace.startswith("pid:["):
        return name
    return f"{name}:{namespace[5:-1]}"


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """onnx.hub's rule: ``$ONNX_HOME/hub``, else ``$XDG_CACHE_HOME/onnx/hub``, else
    ``~/.cache/onnx/hub`` (``ASYNCHUB_CACHE_DIR`` overrides all three)."""
    env = os.environ if environ is None else environ
    if env.get("ASYNCHUB_CACHE_DIR"):
        return Path(env["ASYNCHUB_CACHE_DIR"]).expanduser()
    if env.get("ONNX_HOME"):
        return Path(env["ONNX_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg).expanduser() / "onnx" / "hub"


_PROXY_FIELDS = frozenset({"proxy", "http_proxy", "https_proxy"})


def _env_proxies(env: Mapping[str, str]) -> dict[str, str]:
    """``http_proxy``/``https_proxy``/``no_proxy`` from the environment, as curl and pip read
    them: lower case before upper case, ``all_proxy`` as the fallback of both, and
    ``HTTP_PROXY`` ignored under CGI (``REQUEST_METHOD`` set), where it could come from a
    request's ``Proxy:`` header."""

    def get(name: str) -> str | None:
        for key in (name, name.upper()):
            if key == "HTTP_PROXY" and "REQUEST_METHOD" in env:
                continue
            value = env.get(key, "").strip()
            if value:
                return value
        return None

    every = get("all_proxy")
    found = {
        "http_proxy": get("http_proxy") or every,
        "https_proxy": get("https_proxy") or every,
        "no_proxy": get("no_proxy"),
    }
    return {k: v for k, v in found.items() if v}


@dataclass(frozen=True, repr=False)
class HubConfig:
    """All settings of a hub. Build one with :meth:`from_env` (reads the environment) or
    directly (reads nothing; unspecified fields take the documented defaults).

    Defaults and why:

    * ``max_connections=40`` (and ``max_connections_per_host=40``): a CDN that caps each
      connection at ~25 MB/s gives 16 streams at most 400 MB/s, less than one core hashes
      (1.5-2 GB/s with SHA extensions). Measured (``benchmarks/run.py --full --scenarios E``
      and interleaved reruns; 1 GiB, 25 MB/s per connection, 2 cores): 8/16/32/48/64
      connections reached 190/354/553/589/582 MB/s; in interleaved runs 40 was as fast as 48
      (one 1 GiB file 1.53-1.61 s, 60 files of 1-40 MB 1.58-1.62 s; 32: 1.74-1.75 s and
      1.82-1.95 s) while peak RSS stayed at 117-147 MB, where 48 reached 204-224 MB on the
      60-file run (likely: more files in flight than anyio's 40 worker threads) and 64
      added nothing. Without a cap the CPU is the limit and 32 and 40 are equal. hf_transfer
      opens up to 100 at once; a server that minds gets less with these two settings.
    * ``chunk_size=16 MiB``: big enough that per-request latency (TTFB ~50-100 ms on a real
      link) costs < 5 %; the scheduler (``_engine.schedule``) cuts smaller pieces where they
      pay (the last ones, the range the hash cursor waits for, a slow connection's rest), so a
      100 MB file still uses every connection. Measured (``benchmarks/engine_quick.py``, 1 GiB,
      16 connections, medians of 3 interleaved runs): 4/8/16/32 MiB took 3.35/3.09/3.05/3.09 s
      with a 25 MB/s per-connection cap (the link needs 2.68 s) and 1.76/2.04/1.70/1.82 s
      without; smaller chunks pay a request each, larger ones leave more to hash at the end.
    * ``connect_timeout=10`` s per TCP (and TLS) connect, ``stall_timeout=60`` s without
      bytes: never a total timeout, which would kill a legitimate multi-GB transfer on a slow
      link. A connect that takes 10 s is already broken in practice (pip uses 15 s,
      huggingface_hub 10 s), and a network that silently drops packets is then reported after
      3 tries (the retry policy's ``connect_attempts=2``) in about 31 s, not 91 s. A refused
      connection or an unknown host fails in milliseconds and is reported in under a second.
    """

    cache_dir: Path = field(default_factory=default_cache_dir)
    manifest_url: str = DEFAULT_MANIFEST_URL
    #: File URL templates; ``None`` means the defaults for the repo (HF mirror first for
    #: onnx/models, then GitHub's LFS media host).
    file_urls: tuple[str, ...] | None = None
    offline: bool = False
    trusted_repos: frozenset[str] = frozenset()
    max_connections: int = 40
    max_connections_per_host: int = 40
    chunk_size: int = 16 * MiB
    #: Files smaller than this are fetched in one request (no probe round trip).
    min_split_size: int = 4 * MiB
    connect_timeout: float = 10.0
    stall_timeout: float = 60.0
    #: Stall watchdog: a connection slower than ``min_rate`` bytes/s over ``rate_window``
    #: seconds is dropped and its remaining range re-issued on a fresh connection.
    min_rate: int = 1024
    rate_window: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Total bandwidth cap in bytes/s across all connections; ``None`` = unlimited.
    limit_rate: int | None = None
    progress_bars: bool = True
    ca_bundle: Path | None = None
    #: Inter-process file locks (:mod:`asynchub._cache.locks`). Correctness never depends on
    #: them; they save bandwidth (one download per file for the whole fleet).
    use_locks: bool = True
    #: This machine's name in lock records and partial file names; the default is the host
    #: name (plus the process namespace inside a container: :func:`default_host_id`). Set it
    #: when host names are not unique across machines sharing one cache.
    host_id: str = field(default_factory=default_host_id)
    #: A lock holder renews its lease every ``lock_lease / 4`` s; a waiter that sees no renewal
    #: for ``lock_lease`` s (a stopped process, a dead host) stops waiting and downloads in
    #: parallel, and partial files untouched for ``2 * lock_lease`` s count as abandoned.
    #: 60 s: above a filesystem's hiccups (GlusterFS's ping timeout is 42 s), short enough that
    #: a frozen node costs a minute, not forever.
    lock_lease: float = 60.0
    #: Longest wait for a lock whose holder renews it, in seconds (``None``: no limit). 900 s
    #: lets a holder fetch ~9 GB at 10 MB/s before a waiter gives up and fetches in parallel.
    lock_timeout: float | None = 900.0
    #: Resume state is written at least every this many bytes per file (and every 0.25 s).
    #: 64 MiB: below 256 MB/s the 0.25 s come first anyway, above it 64 MiB is at most a
    #: quarter second of transfer, so a kill never costs more than ~0.5 s of transfer; each
    #: save is a file written and renamed (4 MiB meant ~400 of them for 1 GiB of small models).
    state_interval: int = 64 * MiB
    mindspore_card_url: str = DEFAULT_MINDSPORE_CARD_URL
    #: Proxy for every URL (``ASYNCHUB_PROXY``, ``--proxy``); beats the two below.
    proxy: str | None = None
    #: Proxies for ``http://`` and ``https://`` URLs (``HTTP_PROXY``, ``HTTPS_PROXY``, with
    #: ``ALL_PROXY`` as their fallback, in ``from_env``).
    http_proxy: str | None = None
    https_proxy: str | None = None
    #: Hosts reached directly, curl's ``NO_PROXY`` syntax (see ``_transport/proxy.py``).
    no_proxy: str | None = None
    #: Largest file accepted when the manifest (or card) gives no size: a size the server
    #: announces (the probe's ``Content-Range`` total) above it is refused before anything is
    #: reserved, and a body without any size is cut there. The default is the manifest's own
    #: cap on sizes (2**50 bytes, ``asynchub._onnx.manifest.MAX_SIZE``).
    max_learned_size: int = 2**50
    #: Whether a host (name or IP literal) is local: loopback, link-local, private, ...
    #: A redirect or a card's link from a host that is not local to one that is, is refused
    #: (see :mod:`asynchub._hosts`). Injectable, e.g. to call a test host "public".
    private_host: Callable[[str], bool] = field(default=is_private_host, compare=False, repr=False)
    #: Connections per file adapt to measured throughput, up to ``max_connections``
    #: (``asynchub/_engine/adaptive.py``); ``False`` always opens ``max_connections``.
    adaptive_connections: bool = True
    #: HTTP transport: ``"auto"`` (buffered receive path, aiohttp where a proxy applies),
    #: ``"stream"`` or ``"aiohttp"`` (see ``asynchub/_transport/auto.py``).
    transport: str = "auto"
    #: Whether a plain-HTTP body that arrives ahead of the hash may be moved from the socket
    #: into the file through pipes (Linux ``splice``, see ``asynchub/_transport/splicing.py``);
    #: ``False`` keeps every byte in the receive buffers (``ASYNCHUB_SPLICE=0``).
    splice: bool = True
    #: The event loop the sync API and the CLI run on (the async API runs on the caller's):
    #: ``"auto"`` (uvloop where installed), ``"asyncio"`` or ``"uvloop"`` (see
    #: ``asynchub/_loops.py``).
    event_loop: str = "auto"

    def __post_init__(self) -> None:
        # absolute at once: a relative cache directory must not follow later chdir() calls
        cache_dir = os.path.abspath(Path(self.cache_dir).expanduser())
        object.__setattr__(self, "cache_dir", Path(cache_dir))
        for name in (
            "max_connections",
            "max_connections_per_host",
            "chunk_size",
            "max_learned_size",
        ):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"HubConfig.{name} must be at least 1")
        if self.lock_lease <= 0:
            raise ConfigError("HubConfig.lock_lease must be positive (seconds)")
        if self.lock_timeout is not None and self.lock_timeout < 0:
            raise ConfigError("HubConfig.lock_timeout must not be negative (or None for no limit)")
        if self.transport not in ("auto", "stream", "aiohttp"):
            raise ConfigError(
                f"HubConfig.transport must be 'auto', 'stream' or 'aiohttp', not {self.transport!r}"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(
                "HubConfig.event_loop must be 'auto', 'asyncio' or 'uvloop', "
                f"not {_shown(self.event_loop)}"
            )
        if self.limit_rate is not None and self.limit_rate <= 0:
            raise ConfigError("HubConfig.limit_rate must be positive (or None for no cap)")
        if self.file_urls is not None:
            object.__setattr__(self, "file_urls", tuple(self.file_urls))
            if not self.file_urls:
                raise ConfigError("HubConfig.file_urls must name at least one URL template")
        object.__setattr__(
            self, "trusted_repos", frozenset(r.strip().lower() for r in self.trusted_repos)
        )
        for name in ("proxy", "http_proxy", "https_proxy"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_proxy_url(value, name=name))

    def __repr__(self) -> str:
        """The dataclass repr, with the passwords of proxy URLs redacted."""
        parts = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name in _PROXY_FIELDS and isinstance(value, str):
                value = redact_url(value)
            parts.append(f"{f.name}={value!r}")
        return f"HubConfig({', '.join(parts)})"

    def replace(self, **changes: Any) -> HubConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        cache_dir: Path | str | None = None,
        manifest_url: str | None = None,
        file_urls: tuple[str, ...] | None = None,
        offline: bool | None = None,
        trusted_repos: frozenset[str] | None = None,
        max_connections: int | None = None,
        max_connections_per_host: int | None = None,
        chunk_size: int | None = None,
        min_split_size: int | None = None,
        connect_timeout: float | None = None,
        stall_timeout: float | None = None,
        min_rate: int | None = None,
        rate_window: float | None = None,
        retry: RetryPolicy | None = None,
        limit_rate: int | None = None,
        progress_bars: bool | None = None,
        ca_bundle: Path | None = None,
        use_locks: bool | None = None,
        host_id: str | None = None,
        lock_lease: float | None = None,
        lock_timeout: float | None = None,
        state_interval: int | None = None,
        mindspore_card_url: str | None = None,
        proxy: str | None = None,
        http_proxy: str | None = None,
        https_proxy: str | None = None,
        no_proxy: str | None = None,
        max_learned_size: int | None = None,
        private_host: Callable[[str], bool] | None = None,
        adaptive_connections: bool | None = None,
        transport: str | None = None,
        splice: bool | None = None,
        event_loop: str | None = None,
    ) -> HubConfig:
        """Read the environment once (``environ``, else ``os.environ``); the keyword arguments
        (one per field, ``None`` = not given) win over it. A new field needs its keyword here:
        ``tests/test_typed_signatures.py`` checks that the two lists agree."""
        overrides: dict[str, Any] = {
            "cache_dir": cache_dir, "manifest_url": manifest_url, "file_urls": file_urls,
            "offline": offline, "trusted_repos": trusted_repos,
            "max_connections": max_connections,
            "max_connections_per_host": max_connections_per_host, "chunk_size": chunk_size,
            "min_split_size": min_split_size, "connect_timeout": connect_timeout,
            "stall_timeout": stall_timeout, "min_rate": min_rate, "rate_window": rate_window,
            "retry": retry, "limit_rate": limit_rate, "progress_bars": progress_bars,
            "ca_bundle": ca_bundle, "use_locks": use_locks, "host_id": host_id,
            "lock_lease": lock_lease, "lock_timeout": lock_timeout,
            "state_interval": state_interval,
            "mindspore_card_url": mindspore_card_url, "proxy": proxy,
            "http_proxy": http_proxy, "https_proxy": https_proxy, "no_proxy": no_proxy,
            "max_learned_size": max_learned_size, "private_host": private_host,
            "adaptive_connections": adaptive_connections, "transport": transport,
            "splice": splice, "event_loop": event_loop,
        }  # fmt: skip
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"cache_dir": default_cache_dir(env)}
        if env.get("ASYNCHUB_MANIFEST_URL"):
            values["manifest_url"] = env["ASYNCHUB_MANIFEST_URL"].strip()
        if env.get("ASYNCHUB_FILE_URLS"):
            values["file_urls"] = _split_list(env["ASYNCHUB_FILE_URLS"])
        if "ASYNCHUB_OFFLINE" in env:
            values["offline"] = _parse_bool(env["ASYNCHUB_OFFLINE"], name="ASYNCHUB_OFFLINE")
        if env.get("ASYNCHUB_TRUSTED_REPOS"):
            values["trusted_repos"] = frozenset(_split_list(env["ASYNCHUB_TRUSTED_REPOS"]))
        for var, key in (
            ("ASYNCHUB_MAX_CONNECTIONS", "max_connections"),
            ("ASYNCHUB_MAX_CONNECTIONS_PER_HOST", "max_connections_per_host"),
        ):
            if env.get(var):
                values[key] = _parse_int(env[var], name=var, bounds=CONNECTIONS_RANGE)
        for var, key, bounds in (
            ("ASYNCHUB_CHUNK_SIZE", "chunk_size", CHUNK_SIZE_RANGE),
            ("ASYNCHUB_LIMIT_RATE", "limit_rate", LIMIT_RATE_RANGE),
        ):
            if env.get(var):
                values[key] = _check_range(var, parse_size(env[var], name=var), bounds)
        if "ASYNCHUB_DISABLE_PROGRESS_BARS" in env:
            values["progress_bars"] = not _parse_bool(
                env["ASYNCHUB_DISABLE_PROGRESS_BARS"], name="ASYNCHUB_DISABLE_PROGRESS_BARS"
            )
        if env.get("ASYNCHUB_CA_BUNDLE"):
            values["ca_bundle"] = Path(env["ASYNCHUB_CA_BUNDLE"])
        if "ASYNCHUB_ADAPTIVE_CONNECTIONS" in env:
            values["adaptive_connections"] = _parse_bool(
                env["ASYNCHUB_ADAPTIVE_CONNECTIONS"], name="ASYNCHUB_ADAPTIVE_CONNECTIONS"
            )
        if "ASYNCHUB_SPLICE" in env:
            values["splice"] = _parse_bool(env["ASYNCHUB_SPLICE"], name="ASYNCHUB_SPLICE")
        if env.get("ASYNCHUB_TRANSPORT"):
            values["transport"] = env["ASYNCHUB_TRANSPORT"].strip().lower()
        if env.get("ASYNCHUB_EVENT_LOOP"):
            values["event_loop"] = env["ASYNCHUB_EVENT_LOOP"].strip().lower()
        if env.get("ASYNCHUB_MINDSPORE_CARD_URL"):
            values["mindspore_card_url"] = env["ASYNCHUB_MINDSPORE_CARD_URL"].strip()
        values.update(_env_proxies(env))
        if env.get("ASYNCHUB_PROXY", "").strip():
            values["proxy"] = env["ASYNCHUB_PROXY"].strip()
        if "ASYNCHUB_USE_LOCKS" in env:
            values["use_locks"] = _parse_bool(env["ASYNCHUB_USE_LOCKS"], name="ASYNCHUB_USE_LOCKS")
        if env.get("ASYNCHUB_HOST_ID"):
            values["host_id"] = env["ASYNCHUB_HOST_ID"].strip()
        if env.get("ASYNCHUB_LOCK_LEASE"):
            values["lock_lease"] = _parse_seconds(env["ASYNCHUB_LOCK_LEASE"], "ASYNCHUB_LOCK_LEASE")
        if env.get("ASYNCHUB_LOCK_TIMEOUT"):
            timeout = _parse_seconds(env["ASYNCHUB_LOCK_TIMEOUT"], "ASYNCHUB_LOCK_TIMEOUT")
            values["lock_timeout"] = timeout or None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
