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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._onnx import DEFAULT_REPO
from .support import (
    EXIT_CODES,
    EXIT_INTEGRITY,
    EXIT_INTERRUPTED,
    EXIT_OK,
    build_parser,
    entry_json,
    exit_code_for,
    format_models,
    prefetch_code,
    result_json,
    table,
)

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
    print(text, flush=True)


def _err(text: str) -> None:
    # Through tqdm when a bar may be on screen (so the line does not tear it); tqdm is only
    # imported once a bar is drawn, and without one a plain write is the same.
    bars = sys.modules.get("tqdm.auto")
    if bars is not None:
        bars.tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def _json(value: Any) -> None:
    _out(json.dumps(value, indent=2, default=str))


# --- the hub of a command --------------------------------------------------------------------


class _Session:
    """The hub of one command, with bars when they are wanted."""

    def __init__(self, args: argparse.Namespace, config: HubConfig) -> None:
        from .._hub.client import AsyncHub
        from .._progress.bars import ProgressBars, bars_enabled

        self.bars = ProgressBars() if not args.quiet and bars_enabled(config) else None
        self.hub = AsyncHub(config, progress=self.bars)

    async def __aenter__(self) -> Any:
        return self.hub

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.hub.aclose()
        finally:
            if self.bars is not None:
                self.bars.close()


def _repo(args: argparse.Namespace) -> str:
    return str(getattr(args, "repo", None) or DEFAULT_REPO)


# --- commands --------------------------------------------------------------------------------


async def cmd_list(args: argparse.Namespace, config: HubConfig) -> int:
    async with _Session(args, config) as hub:
        entries = await hub.list_models(_repo(args), model=args.model, tags=args.tag)
    if args.json:
        _json([entry_json(e) for e in entries])
    else:
        _out(format_models(entries))
    return EXIT_OK


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
    async with _Session(args, config) as hub:
        if args.with_test_data:
            path = await hub.download_model_with_test_data(
                args.model, _repo(args), args.opset, args.force, trust_repo=args.trust_repo
            )
        else:
            path = await hub.download(
                args.model, _repo(args), args.opset, args.force, trust_repo=args.trust_repo
            )
    _out(str(path))
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
    import anyio.to_thread

    from .._cache import admin as admin
    from .._hub.registry import all_sources
    from .._onnx.prefetch import human_bytes

    root = config.cache_dir
    owners = all_sources()
    if args.cache_command == "path":
        _out(str(root))
        return EXIT_OK
    if args.cache_command == "ls":
        files = await anyio.to_thread.run_sync(admin.list_cache, root, owners)
        if args.json:
            _json(
                [
                    {
                        "path": str(f.path),
                        "rel": f.rel,
                        "sha256": f.sha256,
                        "size": f.size,
                        "kind": f.kind,
                        "model": f.model,
                        "opset": f.opset,
                        "role": f.role,
                    }
                    for f in files
                ]
            )
        else:
            rows = [
                [human_bytes(f.size), f.model or "?", str(f.opset or "?"), f.role or f.kind, f.rel]
                for f in files
            ]
            _out(table(rows, ["SIZE", "MODEL", "OPSET", "KIND", "PATH"], right=frozenset({0})))
            _out(f"{len(files)} items, {human_bytes(sum(f.size for f in files))} in {root}")
        return EXIT_OK
    if args.cache_command == "verify":
        report = await anyio.to_thread.run_sync(
            lambda: admin.verify_cache(root, owners, delete=args.delete)
        )
        if args.json:
            _json(
                {
                    "checked": report.checked,
                    "bytes_checked": report.bytes_checked,
                    "bad": [{"path": str(p), "problem": why} for p, why in report.bad],
                    "deleted": [str(p) for p in report.deleted],
                }
            )
        else:
            for path, why in report.bad:
                _out(f"BAD {path}: {why}{' (deleted)' if path in report.deleted else ''}")
            _out(
                f"checked {report.checked} files ({human_bytes(report.bytes_checked)}): "
                f"{len(report.bad)} bad"
            )
        return EXIT_INTEGRITY if report.bad else EXIT_OK
    pruned = await anyio.to_thread.run_sync(
        lambda: admin.prune_cache(root, owners, dry_run=args.dry_run, host=config.host_id)
    )
    if args.json:
        _json(
            {
                "dry_run": pruned.dry_run,
                "bytes": pruned.bytes,
                "removed": [
                    {"path": str(p), "reason": why, "bytes": n} for p, why, n in pruned.removed
                ],
                "kept_in_use": [str(p) for p in pruned.kept_in_use],
            }
        )
    else:
        verb = "would remove" if pruned.dry_run else "removed"
        for path, why, n in pruned.removed:
            _out(f"{verb} {path} ({why}, {human_bytes(n)})")
        _out(f"{verb} {len(pruned.removed)} items, {human_bytes(pruned.bytes)}")
    return EXIT_OK


async def cmd_demo(args: argparse.Namespace, config: HubConfig) -> int:
    from .._demo.demo import run_demo
    from .._progress.bars import ProgressBars, bars_enabled

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    bars = ProgressBars() if not args.quiet and bars_enabled(config) else None
    try:
        await run_demo(
            cache_dir=cache_dir,
            emit=_out,
            progress=bars,
            limit_rate=config.limit_rate,
            max_connections=config.max_connections,
        )
    finally:
        if bars is not None:
            bars.close()
    return EXIT_OK


# --- parser ----------------------------------------------------------------------------------


# --- main ------------------------------------------------------------------------------------


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
    handler.setFormatter(logging.Formatter("asynchub: %(levelname)s: %(message)s"))
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
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    from .._exceptions import HubError

    _setup_logging(args)
    if hasattr(args, "func"):  # the mindspore commands run on their own
        return int(args.func(args))
    config: HubConfig | None = None
    try:
        config = _config(args)
        import anyio  # the async core: imported once a command runs, not for --help

        code: int = anyio.run(args.handler, args, config)
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
        _err(f"asynchub: error: {leaf}")
        return exit_code_for(leaf)
    except HubError as exc:
        _err(f"asynchub: error: {exc}")
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
