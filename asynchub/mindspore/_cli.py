"""``asynchub mindspore info|download|list|prefetch``: the MindSpore Hub commands of the CLI.

:func:`add_parser` registers the ``mindspore`` command on the main CLI's sub-parsers; each
sub-command stores its handler as ``func`` (called with the parsed arguments, returns the exit
code). The main CLI's global options are read when present: ``--cache-dir``, ``--offline``,
``-v``, ``--quiet``. ``--json`` prints one JSON document (``indent=2``) on stdout; otherwise a
short human-readable text. Errors print ``asynchub: error: ...`` on stderr and exit with the
main CLI's code for the error (``exit_code_for``); ``prefetch`` exits with 1 when any uid
failed (after fetching all the others).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .._cli.terminal import printable

if TYPE_CHECKING:
    from ._card import AssetCard

__all__ = ["add_parser", "main"]


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uids", nargs="*", metavar="UID", help="uids or card URLs")
    parser.add_argument(
        "--cards-dir", type=Path, help="a local checkout of mindspore-ai/hub (or its assets dir)"
    )
    parser.add_argument("--version", help="MindSpore version, e.g. 1.10")
    parser.add_argument("--module-type", help="e.g. cv (also matches cv-classification)")
    parser.add_argument("--dataset", help="training dataset, e.g. imagenet2012 (any case)")
    parser.add_argument("--text", help="substring of the uid, name, backbone or summary")


def _api() -> Any:
    """The MindSpore API module, imported when a command runs (``--help`` stays cheap)."""
    from . import _api as api

    return api


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``mindspore`` and its sub-commands on the main CLI's ``subparsers``."""
    ms = subparsers.add_parser(
        "mindspore",
        help="MindSpore Hub asset cards (info, download, list, prefetch)",
        description="Read MindSpore Hub asset cards and download their verified files.",
    )
    commands = ms.add_subparsers(dest="mindspore_command", metavar="COMMAND", required=True)

    p = commands.add_parser("info", help="show a card's metadata and assets")
    p.add_argument("uid", help="e.g. mindspore/1.10/alexnet_cifar10, or a card URL")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = commands.add_parser("download", help="download and verify a card's asset files")
    p.add_argument("uid", help="e.g. mindspore/1.10/alexnet_cifar10, or a card URL")
    p.add_argument("--format", dest="file_format", help="only assets of this format (ckpt)")
    p.add_argument("--force-reload", action="store_true", help="download again")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_download)

    p = commands.add_parser("list", help="list cards of given uids or of a local checkout")
    _add_filters(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_list)

    p = commands.add_parser("prefetch", help="download the assets of many cards")
    _add_filters(p)
    p.add_argument("--format", dest="file_format", help="only assets of this format (ckpt)")
    p.add_argument("--force-reload", action="store_true", help="download again")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_prefetch)


def _hub(args: argparse.Namespace) -> Any:
    from .._config import HubConfig
    from .._hub.sync import Hub

    overrides: dict[str, Any] = {}
    if getattr(args, "cache_dir", None):
        overrides["cache_dir"] = Path(args.cache_dir)
    if getattr(args, "offline", False):
        overrides["offline"] = True
    if getattr(args, "proxy", None):
        overrides["proxy"] = args.proxy
    return Hub(HubConfig.from_env(**overrides))


def _print(text: str, file: TextIO | None = None) -> None:
    """Every line of this CLI goes through here (terminal control characters escaped)."""
    print(printable(text), file=file)


def _print_json(value: Any) -> None:
    print(printable(json.dumps(value, indent=2, ensure_ascii=False), json_text=True))


def _summary(card: AssetCard) -> dict[str, Any]:
    data = card.to_dict()
    data.pop("raw")
    return data


def _run(args: argparse.Namespace, body: Any) -> int:
    from .._exceptions import HubError

    try:
        with _hub(args) as hub:
            result: int = body(hub)
            return result
    except HubError as exc:
        from .._cli.messages import cli_message
        from .._cli.support import exit_code_for

        _print(f"asynchub: error: {cli_message(str(exc))}", file=sys.stderr)
        return exit_code_for(exc)


def _cmd_info(args: argparse.Namespace) -> int:
    def body(hub: Any) -> int:
        card = _api().info(args.uid, hub=hub)
        if args.json:
            _print_json(card.to_dict())
            return 0
        _print(f"{card.uid}: {card.model_name}")
        for label, value in (
            ("backbone", card.backbone_name),
            ("module type", card.module_type),
            ("MindSpore", card.mindspore_version),
            ("dataset", card.train_dataset),
            ("evaluation", card.evaluation),
            ("license", card.license),
            ("summary", card.summary),
        ):
            if value:
                _print(f"  {label}: {value}")
        for asset in card.assets:
            sha = asset.sha256 or f"(unverifiable: {asset.sha256_prefix or 'no sha256'})"
            _print(f"  asset {asset.file_format}: {asset.url}\n    sha256 {sha}")
        return 0

    return _run(args, body)


def _cmd_download(args: argparse.Namespace) -> int:
    def body(hub: Any) -> int:
        paths = _api().download_weights(
            args.uid, args.force_reload, file_format=args.file_format, hub=hub
        )
        if args.json:
            _print_json({"uid": args.uid, "files": [str(p) for p in paths]})
        else:
            for path in paths:
                _print(str(path))
        return 0

    return _run(args, body)


def _select(args: argparse.Namespace, hub: Any) -> list[AssetCard]:
    cards: list[AssetCard] = _api().list_models(
        args.uids or None,
        cards_dir=args.cards_dir,
        version=args.version,
        module_type=args.module_type,
        dataset=args.dataset,
        text=args.text,
        hub=hub,
    )
    return cards


def _cmd_list(args: argparse.Namespace) -> int:
    def body(hub: Any) -> int:
        cards = _select(args, hub)
        if args.json:
            _print_json([_summary(card) for card in cards])
            return 0
        for card in cards:
            formats = ",".join(a.file_format for a in card.assets) or "-"
            _print(f"{card.uid}\t{card.model_name}\t{card.module_type or '-'}\t{formats}")
        if not getattr(args, "quiet", False):
            _print(f"{len(cards)} card(s)", file=sys.stderr)
        return 0

    return _run(args, body)


def _cmd_prefetch(args: argparse.Namespace) -> int:
    def body(hub: Any) -> int:
        filters = (args.cards_dir, args.version, args.module_type, args.dataset, args.text)
        # Plain uids go straight to prefetch, so a missing card is one failure among others.
        selection: list[Any] = args.uids if all(f is None for f in filters) else []
        if not selection:
            selection = list(_select(args, hub))
        result = _api().prefetch(
            selection, force_reload=args.force_reload, file_format=args.file_format, hub=hub
        )
        if args.json:
            _print_json(
                {
                    "ok": {uid: [str(p) for p in paths] for uid, paths in result.ok.items()},
                    "failed": {uid: str(exc) for uid, exc in result.failed.items()},
                }
            )
        else:
            for uid, paths in result.ok.items():
                _print(f"ok      {uid} ({len(paths)} file(s))")
            for uid, exc in result.failed.items():
                _print(f"FAILED  {uid}: {exc}")
        return 0 if not result.failed else 1

    return _run(args, body)


def main(argv: Sequence[str] | None = None) -> int:
    """A standalone entry (``asynchub mindspore ...`` without the rest of the CLI), with the
    same global options as the main CLI."""
    from .._config import default_cache_dir

    parser = argparse.ArgumentParser(prog="asynchub")
    parser.add_argument("--cache-dir", help=f"cache directory (default: {default_cache_dir()})")
    parser.add_argument("--offline", action="store_true", help="never touch the network")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--quiet", action="store_true")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    args = parser.parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO)
    code: int = args.func(args)
    return code
