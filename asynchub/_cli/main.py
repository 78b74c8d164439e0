"""The ``asynchub`` command line (also ``python -m asynchub``).

Every command runs on one event loop (``anyio.run``); Ctrl-C cancels it, which stops the
transfers at once with their resume state saved, and exits with 130. Output: results on
stdout (a readable table, or JSON with ``--json``), progress bars and log messages on stderr.
Bars appear only when stderr is a terminal (or in a Jupyter kernel) and are off with
``--quiet`` or ``ASYNCHUB_DISABLE_PROGRESS_BARS=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._onnx import DEFAULT_REPO
from .support import (
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    build_parser,
    entry_json,
    exit_code_for,
    format_models,
    prefetch_code,
    result_json,
)
from .terminal import printable

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from .._config import HubConfig
    from .._exceptions import HubError

__all__ = ["EXIT_CODES", "exit_code_for", "main"]

#: Imports: what ``--help`` needs (argparse and the parser) at the top, everything else
#: (logging, the configuration, the async core, the bars) where a command first uses it.

# --- output helpers --------------------------------------------------------------------------


def _out(text: str = "") -> None:
    print(printable(text), flush=True)


def _err(text: str) -> None:
    # Through tqdm when a bar may be on screen (so the line does not tear it); tqdm is only
    # imported once a bar is drawn, and without one a plain write is the same.
    text = printable(text)
    bars = sys.modules.get("tqdm.auto")
    if bars is not None:
        bars.tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def _json(value: Any) -> None:
    _out(json.dumps(value, indent=2, default=str))


# --- the hub of a command --------------------------------------------------------------------


def _Session(args: argparse.Namespace, config: HubConfig) -> Any:
    """The hub of one command (see :mod:`asynchub._cli.session`), imported when used."""
    from .session import Session

    return Session(args, config)


def _repo(args: argparse.Namespace) -> str:
    return str(getattr(args, "repo", None) or DEFAULT_REPO)


# --- commands --------------------------------------------------------------------------------


async def cmd_list(args: argparse.Namespace, config: HubConfig) -> int:
    async with _Session(args, config) as hub:
        entries = await hub.list_models(_repo(args), model=args.model, tags=args.tag)
        if not entries and (args.model or args.tag):
            everything = await hub.list_models(_repo(args))
            _err(f"asynchub: {_nothing_listed(args, everything)}")
            return EXIT_NOT_FOUND
    if args.json:
        _json([entry_json(e) for e in entries])
    else:
        _out(format_models(entries))
    return EXIT_OK


def _nothing_listed(args: argparse.Namespace, everything: list[Any]) -> str:
    """Why ``list`` found nothing, with close names (any case, substrings first)."""
    from .messages import close_names

    parts: list[str] = []
    if args.model:
        close = close_names(args.model, [e.model for e in everything])
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        parts.append(f"no model named {args.model!r}{hint}")
    if args.tag:
        tags = {t for e in everything for t in e.tags}
        for tag in args.tag:
            if tag.lower() not in {t.lower() for t in tags}:
                close = close_names(tag, tags)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                parts.append(f"no tag {tag!r}{hint}")
    if not parts:
        parts.append("no model has that name and one of these tags")
    text = "nothing listed: " + "; ".join(parts)
    end = " " if text.endswith("?") else ". "
    return f"{text}{end}Run `asynchub list` without --model/--tag to see everything."


async def cmd_info(args: argparse.Namespace, config: HubConfig) -> int:
    from .._cache.layout import cache_path
    from .._onnx.manifest import filter_models
    from .._onnx.prefetch import human_bytes

    async with _Session(args, config) as hub:
        info = await hub.get_model_info(args.model, _repo(args), args.opset)
        opsets = [e.opset for e in filter_models(await hub.manifest(_repo(args)), info.model)]
    cached = (
        cache_path(config.cache_dir, info.model_path, info.model_sha) if info.model_sha else None
    )
    data = entry_json(info)
    data.update(
        opsets=opsets,
        io_ports=info.metadata.get("io_ports"),
        cached_path=str(cached) if cached and cached.is_file() else None,
        metadata=info.metadata,
    )
    if args.json:
        _json(data)
        return EXIT_OK
    _out(
        f"{info.model} (opset {info.opset}; opsets in the manifest: {', '.join(map(str, opsets))})"
    )
    rows = [
        ("path", info.model_path),
        ("sha256", info.model_sha or "-"),
        ("size", human_bytes(info.model_bytes) if info.model_bytes is not None else "?"),
        ("tags", ", ".join(sorted(info.tags, key=str.lower))),
    ]
    if info.model_with_data_path:
        size = info.model_with_data_bytes
        rows.append(
            (
                "test data",
                f"{info.model_with_data_path} ({human_bytes(size) if size is not None else '?'})",
            )
        )
    for port_kind in ("inputs", "outputs"):
        for port in (info.metadata.get("io_ports") or {}).get(port_kind, []):
            rows.append(
                (port_kind[:-1], f"{port.get('name')} {port.get('type')} {port.get('shape')}")
            )
    rows.append(("cached", data["cached_path"] or "no"))
    for key, value in rows:
        _out(f"  {key + ':':<11}{value}")
    return EXIT_OK


async def cmd_download(args: argparse.Namespace, config: HubConfig) -> int:
    """Several models download at once under the hub's one connection budget. Every name is
    resolved first, so an unknown one fails before any byte moves; results print in the
    order the models were given."""
    import anyio

    session = _Session(args, config)
    async with session as hub:
        repo = _repo(args)
        infos = [await hub.get_model_info(name, repo, args.opset) for name in args.model]
        results: list[dict[str, Any]] = [{} for _ in infos]
        started = time.perf_counter()

        async def one(index: int, info: Any) -> None:
            if args.with_test_data:
                path = await hub.download_model_with_test_data(
                    info.model, repo, info.opset, args.force, trust_repo=args.trust_repo
                )
                name, sha, size = (
                    info.model_with_data_path,
                    info.model_with_data_sha,
                    info.model_with_data_bytes,
                )
            else:
                path = await hub.download(
                    info.model, repo, info.opset, args.force, trust_repo=args.trust_repo
                )
                name, sha, size = info.model_path, info.model_sha, info.model_bytes
            results[index] = {
                "model": info.model,
                "opset": info.opset,
                "path": str(path),
                "sha": sha,
                "size": size,
                "mirror": session.watch.mirrors.get(name) if name else None,
                "seconds": round(time.perf_counter() - started, 3),
            }

        async with anyio.create_task_group() as group:
            for index, info in enumerate(infos):
                group.start_soon(one, index, info)
    if args.json:
        _json(results)
    else:
        for item in results:
            _out(item["path"])
    return EXIT_OK


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "tags": args.tag,
        "models": args.model,
        "all": args.all,
        "all_opsets": args.all_opsets,
        "with_test_data": args.with_test_data,
        "force_reload": args.force,
        "check_space": not args.no_space_check,
        "trust_repo": args.trust_repo,
    }


async def cmd_prefetch(args: argparse.Namespace, config: HubConfig) -> int:
    async with _Session(args, config) as hub:
        result = await hub.prefetch(repo=_repo(args), **_selection(args))
    if args.json:
        _json(result_json(result))
    else:
        _out(result.summary())
    return prefetch_code(result)


async def cmd_mirror(args: argparse.Namespace, config: HubConfig) -> int:
    from .._onnx.mirror import write_mirror
    from .._onnx.prefetch import human_bytes

    async with _Session(args, config) as hub:
        report = await write_mirror(hub, Path(args.out_dir), repo=_repo(args), **_selection(args))
    if args.json:
        _json(
            {
                "out_dir": str(report.out_dir),
                "repo_dir": str(report.repo_dir),
                "manifest": str(report.manifest),
                "entries": report.entries,
                "files": [str(f) for f in report.files],
                "bytes_written": report.bytes_written,
                "prefetch": result_json(report.prefetch),
            }
        )
    else:
        _out(report.prefetch.summary())
        _out(
            f"wrote {report.entries} manifest entries and {len(report.files)} files "
            f"({human_bytes(report.bytes_written)} new) under {report.repo_dir}"
        )
        _out(
            f"serve {report.out_dir} with any static HTTP server, then point clients at it:\n"
            "  export ASYNCHUB_MANIFEST_URL='http://HOST/{owner}/{repo}/{ref}/"
            "ONNX_HUB_MANIFEST.json'\n"
            "  export ASYNCHUB_FILE_URLS='http://HOST/{owner}/{repo}/{ref}/{path}'"
        )
    return prefetch_code(report.prefetch)


async def cmd_cache(args: argparse.Namespace, config: HubConfig) -> int:
    from .cache import cmd_cache as cache_command

    return await cache_command(args, config, _out, _json)


async def cmd_demo(args: argparse.Namespace, config: HubConfig) -> int:
    import functools
    import signal

    import anyio

    from .._demo.demo import run_demo
    from .._progress.bars import ProgressBars, bars_enabled

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    bars = ProgressBars() if not args.quiet and bars_enabled(config) else None
    demo = functools.partial(
        run_demo,
        cache_dir=cache_dir,
        emit=_out,
        progress=bars,
        limit_rate=config.limit_rate,
        max_connections=config.max_connections,
        serve=args.serve,
    )
    try:
        if not args.serve:
            await demo()
            return EXIT_OK
        # serve until Ctrl-C or SIGTERM: a normal stop, exit 0, no "interrupted" message
        async with anyio.create_task_group() as group:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                group.start_soon(demo)
                async for signum in signals:
                    _err(f"asynchub: {signal.Signals(signum).name}: demo mirror stopped")
                    group.cancel_scope.cancel()
                    break
    finally:
        if bars is not None:
            bars.close()
    return EXIT_OK


# --- parser ----------------------------------------------------------------------------------


# --- main ------------------------------------------------------------------------------------


#: The command's cycle collector: a young generation of :data:`YOUNG_THRESHOLD` allocations
#: (Python's default is 700), see :func:`command`.
YOUNG_THRESHOLD = 10_000


def command() -> int:
    """The ``asynchub`` command's process (the console script and ``python -m asynchub``):
    :func:`main`, with the cycle collector run less often. :func:`main` itself leaves the
    collector alone, as a program that calls it in its own process expects (the collector's
    settings are the whole process's).

    A download's objects either live as long as the process (modules, the parser: frozen out
    of every collection here) or die young by reference count (futures, callbacks, answers),
    so the collector rarely finds a cycle: during a 512 MiB download on 40 connections it ran
    57 young and 5 middle collections, 16-18 ms in all, and freed 172 objects. With a young
    generation of 10,000 allocations (the older ones keep Python's ratios, 10 and 10),
    ``asynchub download`` of that file used a median of 1.02 CPU-s against 1.07 and took
    0.85 s against 0.90 (twelve runs each, interleaved), at the same peak memory (68-69 MB).
    """
    import gc

    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)
    return main()


def _setup_logging(args: argparse.Namespace) -> None:
    import logging

    class _TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                _err(self.format(record))
            except Exception:
                self.handleError(record)

    level = (
        logging.ERROR
        if args.quiet
        else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose or 0, 2)]
    )
    handler = _TqdmHandler()

    class _Formatter(logging.Formatter):
        """``asynchub: warning: ...``: lower-case levels, as the CLI's own messages."""

        def formatMessage(self, record: logging.LogRecord) -> str:
            return (
                super()
                .formatMessage(record)
                .replace(f": {record.levelname}: ", f": {record.levelname.lower()}: ", 1)
            )

    handler.setFormatter(_Formatter("asynchub: %(levelname)s: %(message)s"))
    log = logging.getLogger("asynchub")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _config(args: argparse.Namespace) -> HubConfig:
    from .._config import HubConfig, parse_size

    overrides: dict[str, Any] = {}
    if args.cache_dir:
        overrides["cache_dir"] = Path(args.cache_dir)
    if args.offline:
        overrides["offline"] = True
    if getattr(args, "proxy", None):
        overrides["proxy"] = args.proxy
    if getattr(args, "max_connections", None) is not None:
        overrides["max_connections"] = args.max_connections
    if getattr(args, "limit_rate", None):
        overrides["limit_rate"] = parse_size(args.limit_rate, name="--limit-rate")
    return HubConfig.from_env(**overrides)


def _count_partials(root: Path) -> int:
    try:
        return sum(1 for _ in root.rglob("*.partial"))
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see :data:`EXIT_CODES`)."""
    parser = build_parser(
        {
            "list": cmd_list,
            "info": cmd_info,
            "download": cmd_download,
            "prefetch": cmd_prefetch,
            "mirror": cmd_mirror,
            "cache": cmd_cache,
            "demo": cmd_demo,
        }
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return int(exc.code or 0)
    if args.command is None:  # a bare `asynchub`: the help, on stdout, exit 0 (like pip)
        parser.print_help(sys.stdout)
        return EXIT_OK
    from .._exceptions import HubError
    from .messages import cli_message

    _setup_logging(args)
    if hasattr(args, "func"):  # the mindspore commands run on their own
        return int(args.func(args))
    config: HubConfig | None = None
    try:
        config = _config(args)
        import anyio  # the async core: imported once a command runs, not for --help

        from .._loops import loop_factory

        code: int = anyio.run(
            args.handler,
            args,
            config,
            backend_options={"loop_factory": loop_factory(config.event_loop)},
        )
        return code
    except KeyboardInterrupt:
        root = config.cache_dir if config is not None else None
        kept = _count_partials(root) if root is not None else 0
        _err(
            f"asynchub: interrupted; {kept} partial download(s) kept in {root}: "
            "run the same command again to resume"
        )
        return EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        leaf = _first_hub_error(group)
        if leaf is None:
            raise
        _err(f"asynchub: error: {cli_message(str(leaf))}")
        return exit_code_for(leaf)
    except HubError as exc:
        _err(f"asynchub: error: {cli_message(str(exc))}")
        return exit_code_for(exc)
    except BrokenPipeError:  # e.g. `asynchub list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _first_hub_error(group: BaseExceptionGroup[BaseException]) -> HubError | None:
    from .._exceptions import HubError

    for exc in group.exceptions:
        if isinstance(exc, HubError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_hub_error(exc)
            if found is not None:
                return found
    return None
