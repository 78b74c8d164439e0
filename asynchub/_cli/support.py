"""The pure parts of the CLI: exit codes, the argument parser, tables and JSON shapes.

Nothing here prints (only :mod:`asynchub._cli.main` does, and it runs the commands).

Exit codes (also in ``asynchub --help``):

===  ===========================================================================
0    success
1    some items failed (prefetch, mirror; the others completed), or another error
2    usage error (bad option or setting)
3    model, opset or manifest not found (or an invalid manifest)
4    integrity error (SHA-256 or size mismatch, unsafe archive; ``cache verify``)
5    network or transfer error
6    untrusted repo
7    cache or disk error (including not enough free space)
8    offline and not cached
130  interrupted (Ctrl-C); partial downloads are kept and resume
===  ===========================================================================

A prefetch whose items ALL failed with errors of one class exits with that class's code (e.g.
8 when offline and nothing was cached); any other mix of failures exits with 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._hub.registry import all_sources
from .._onnx import DEFAULT_REPO

if TYPE_CHECKING:
    from .._config import HubConfig
    from .._onnx.manifest import ModelInfo
    from .._onnx.prefetch import PrefetchResult

__all__ = [
    "EXIT_CODES",
    "Handler",
    "build_parser",
    "entry_json",
    "exit_code_for",
    "format_models",
    "prefetch_code",
    "result_json",
    "table",
]

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INTEGRITY = 0, 1, 2, 3, 4
EXIT_NETWORK, EXIT_UNTRUSTED, EXIT_CACHE, EXIT_OFFLINE, EXIT_INTERRUPTED = 5, 6, 7, 8, 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_PARTIAL: "some items failed (prefetch, mirror; the others completed), or another error",
    EXIT_USAGE: "usage error (bad option or setting)",
    EXIT_NOT_FOUND: "model, opset or manifest not found (or an invalid manifest)",
    EXIT_INTEGRITY: "integrity error (SHA-256 or size mismatch, unsafe archive)",
    EXIT_NETWORK: "network or transfer error",
    EXIT_UNTRUSTED: "untrusted repo",
    EXIT_CACHE: "cache or disk error (including not enough free space)",
    EXIT_OFFLINE: "offline and not cached",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); partial downloads are kept and resume",
}

Handler = Callable[[argparse.Namespace, "HubConfig"], Coroutine[Any, Any, int]]


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code of an error (see ``asynchub --help``)."""
    from .._exceptions import (  # here, not at the top: --help needs none of them
        ArchiveError,
        CacheError,
        ConfigError,
        HTTPStatusError,
        IntegrityError,
        ManifestError,
        ManifestNotFoundError,
        MirrorsExhaustedError,
        ModelNotFoundError,
        OfflineError,
        OpsetNotFoundError,
        TransferError,
        UntrustedRepoError,
    )

    if isinstance(exc, OfflineError) or isinstance(exc.__cause__, OfflineError):
        return EXIT_OFFLINE
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    cause = exc.__cause__
    if (
        isinstance(exc, ManifestNotFoundError)
        and isinstance(cause, TransferError)
        and not (isinstance(cause, HTTPStatusError) and cause.status in (404, 410))
    ):
        return EXIT_NETWORK  # the manifest host could not be reached, not a missing repo
    if isinstance(
        exc, (ModelNotFoundError, OpsetNotFoundError, ManifestNotFoundError, ManifestError)
    ):
        return EXIT_NOT_FOUND
    if isinstance(exc, (IntegrityError, ArchiveError)):
        return EXIT_INTEGRITY
    if isinstance(exc, MirrorsExhaustedError) and exc.errors:
        codes = {exit_code_for(error) for _, error in exc.errors}
        return codes.pop() if len(codes) == 1 else EXIT_NETWORK
    if isinstance(exc, TransferError):
        return EXIT_NETWORK
    if isinstance(exc, UntrustedRepoError):
        return EXIT_UNTRUSTED
    if isinstance(exc, CacheError):
        return EXIT_CACHE
    return EXIT_PARTIAL


# --- tables and JSON ------------------------------------------------------------------------


def table(rows: list[list[str]], header: list[str], right: frozenset[int] = frozenset()) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def format_models(entries: Sequence[ModelInfo]) -> str:
    """The ``asynchub list`` table."""
    from .._onnx.prefetch import human_bytes

    rows = [
        [
            e.model,
            str(e.opset),
            human_bytes(e.model_bytes) if e.model_bytes is not None else "?",
            human_bytes(e.model_with_data_bytes)
            if e.model_with_data_path and e.model_with_data_bytes is not None
            else "-",
            ", ".join(sorted(e.tags, key=str.lower)),
        ]
        for e in entries
    ]
    names = len({e.model.lower() for e in entries})
    header = ["MODEL", "OPSET", "SIZE", "TEST DATA", "TAGS"]
    text = table(rows, header, right=frozenset({1, 2, 3}))
    return f"{text}\n{len(entries)} entries, {names} models"


def entry_json(e: ModelInfo) -> dict[str, Any]:
    return {
        "model": e.model,
        "opset": e.opset,
        "model_path": e.model_path,
        "model_sha": e.model_sha,
        "model_bytes": e.model_bytes,
        "tags": sorted(e.tags, key=str.lower),
        "model_with_data_path": e.model_with_data_path,
        "model_with_data_sha": e.model_with_data_sha,
        "model_with_data_bytes": e.model_with_data_bytes,
    }


def result_json(result: PrefetchResult) -> dict[str, Any]:
    return {
        "repo": result.repo,
        "bytes_total": result.bytes_total,
        "bytes_planned": result.bytes_planned,
        "bytes_fetched": result.bytes_fetched,
        "files_planned": result.files_planned,
        "elapsed": result.elapsed,
        "ok": len(result.ok),
        "failed": len(result.failed),
        "notes": list(result.notes),
        "items": [
            {
                "model": i.model,
                "opset": i.opset,
                "kind": i.kind,
                "name": i.name,
                "sha256": i.sha256,
                "size": i.size,
                "status": i.status,
                "path": str(i.path) if i.path else None,
                "error": str(i.error) if i.error else None,
                "exit_code": exit_code_for(i.error) if i.error else 0,
            }
            for i in result.items
        ],
    }


def prefetch_code(result: PrefetchResult) -> int:
    if not result.failed:
        return EXIT_OK
    codes = {exit_code_for(i.error) for i in result.failed if i.error is not None}
    if not result.ok and len(codes) == 1:
        return codes.pop()
    return EXIT_PARTIAL


# --- parser ----------------------------------------------------------------------------------


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in sorted(EXIT_CODES.items()))
    return (
        f"exit codes:\n{codes}\n\nEnvironment: ASYNCHUB_CACHE_DIR, ASYNCHUB_MANIFEST_URL, "
        "ASYNCHUB_FILE_URLS, ASYNCHUB_OFFLINE, ASYNCHUB_LIMIT_RATE, "
        "ASYNCHUB_MAX_CONNECTIONS, ASYNCHUB_DISABLE_PROGRESS_BARS, ... (see the README).\n"
        "Sizes and rates are decimal: 50M = 50,000,000 bytes; Mi = 2^20."
    )


def _globals(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Global options, accepted before and after the command (``SUPPRESS`` keeps a value
    given before the command from being reset by the sub-parser's default)."""
    default = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--repo", default=default, help=f"manifest repo owner/name[:ref] (default {DEFAULT_REPO})"
    )
    group.add_argument(
        "--offline",
        action="store_true",
        default=False if top else default,
        help="never touch the network; use the cache only",
    )
    group.add_argument(
        "--cache-dir",
        default=default,
        metavar="DIR",
        help=f"cache directory (default: {_default_cache_dir()})",
    )
    group.add_argument(
        "--proxy",
        default=default,
        metavar="URL",
        help="proxy for every request, http://[user:password@]host:port (default: "
        "ASYNCHUB_PROXY, else HTTPS_PROXY/HTTP_PROXY/ALL_PROXY; NO_PROXY still applies)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if top else default,
        help="no progress bars, errors only on stderr",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else default,
        help="more log output (-v info, -vv debug)",
    )


def _default_cache_dir() -> str:
    from .._config import default_cache_dir  # light (no async core), read once for the help

    return str(default_cache_dir())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _transfer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        metavar="N",
        help="connections across all files (default 40)",
    )
    parser.add_argument(
        "--limit-rate",
        metavar="RATE",
        help="bandwidth cap in bytes/s over all connections, decimal units "
        "(50M = 50 MB/s, 500k = 500 kB/s; 16Mi = 16 MiB/s)",
    )


def _selection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tag",
        action="append",
        metavar="T",
        help="models with this tag (any case; repeat for ANY of several)",
    )
    parser.add_argument("--model", action="append", metavar="M", help="this model (repeatable)")
    parser.add_argument("--all", action="store_true", help="every model of the manifest")
    parser.add_argument(
        "--all-opsets",
        action="store_true",
        help="every opset of each model (default: the latest only)",
    )
    parser.add_argument("--with-test-data", action="store_true", help="also the test-data archives")
    parser.add_argument("--force", action="store_true", help="download again even if cached")
    parser.add_argument(
        "--no-space-check",
        action="store_true",
        help="go ahead even if the free disk space looks too small",
    )
    parser.add_argument("--trust-repo", action="store_true", help="trust a non-default repo")
    parser.add_argument("--json", action="store_true", help="print JSON")
    _transfer_options(parser)


def build_parser(handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """The whole ``asynchub`` parser; ``handlers`` maps each command name to its coroutine."""
    parser = argparse.ArgumentParser(
        prog="asynchub",
        description="Fast, safe downloads of ONNX Model Zoo models.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"asynchub {__version__}")
    _globals(parser, top=True)
    # not required: a bare `asynchub` prints the help (exit 0), see main()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_epilog(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _globals(p, top=False)
        p.set_defaults(handler=handlers[name])
        return p

    p = command("list", "list the models of the manifest")
    p.add_argument("--model", help="only this model name (any case)")
    p.add_argument("--tag", action="append", metavar="T", help="models with ANY of these tags")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("info", "show one manifest entry")
    p.add_argument("model")
    p.add_argument("--opset", type=int, help="this opset (default: the latest)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("download", "download models and print their local paths")
    p.add_argument("model", nargs="+", metavar="MODEL", help="one or more model names")
    p.add_argument("--opset", type=int, help="this opset (default: the latest)")
    p.add_argument(
        "--with-test-data",
        action="store_true",
        help="fetch and extract the test data; print the directory",
    )
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("--trust-repo", action="store_true", help="trust a non-default repo")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list, one object per model: path, sha, size, mirror (null when it "
        "came from the cache), seconds",
    )
    _transfer_options(p)
    p = command("prefetch", "download a selection under one connection budget")
    _selection_options(p)
    p = command("mirror", "write a selection as a static mirror (manifest + verified files)")
    p.add_argument("out_dir", metavar="OUT_DIR")
    _selection_options(p)
    p = command("cache", "cache administration")
    cache = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    cache.add_parser("path", help="print the cache directory")
    ls = cache.add_parser("ls", help="list cached files, grouped per model")
    ls.add_argument("--json", action="store_true", help="print JSON")
    verify = cache.add_parser("verify", help="re-hash every cached file, report bad ones")
    verify.add_argument("--delete", action="store_true", help="delete the bad files")
    verify.add_argument("--json", action="store_true", help="print JSON")
    prune = cache.add_parser("prune", help="remove partials and unreferenced files")
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    prune.add_argument("--json", action="store_true", help="print JSON")
    rm = cache.add_parser("rm", help="remove a model's cached files, or the files of a SHA-256")
    rm.add_argument(
        "target",
        metavar="MODEL|SHA",
        help="a model name (every opset, with its test data) or at least 8 hex digits of a "
        "SHA-256 (as `asynchub cache ls` shows)",
    )
    rm.add_argument("--dry-run", action="store_true", help="only say what would go")
    rm.add_argument("--json", action="store_true", help="print JSON")
    p = command(
        "demo",
        "serve a generated zoo on 127.0.0.1 and use it end to end "
        "(no network needed; --cache-dir should be a scratch directory)",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="only serve the demo zoo and print the two environment lines that point asynchub "
        "at it; runs until Ctrl-C or SIGTERM",
    )
    _transfer_options(p)
    for source in all_sources():
        if source.add_cli is not None:
            source.add_cli(sub)
    for nested in _nested_parsers(parser):
        if not any("--offline" in a.option_strings for a in nested._actions):
            _globals(nested, top=False)
    return parser


def _nested_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (commands, their actions, the MindSpore commands), so the
    global options can be accepted after any of them."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.append(child)
                found.extend(_nested_parsers(child))
    return found
