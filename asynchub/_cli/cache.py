"""``asynchub cache path|ls|verify|prune|rm``: cache administration on the command line.

``cache ls`` groups the cached files per model (the names come from the cached manifests):
one heading per model with the directory its files live in, then one line per file (opset,
model or test data, size, and the file name with its SHA-256 shortened to ``12345678…abcd``);
``--json`` keeps every full path. ``cache rm MODEL|SHA`` removes a model's files (every
opset, test data included) or those of one SHA-256 prefix (8 hex digits or more).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import anyio

from .._cache import admin
from .._config import HubConfig
from .._exceptions import ConfigError, ModelNotFoundError
from .._progress.units import format_size
from .support import EXIT_INTEGRITY, EXIT_OK, table

__all__ = ["cmd_cache", "format_cache_listing"]

UNKNOWN = "(files no cached manifest names)"


def _short_name(name: str) -> str:
    sha, _, rest = name.partition("_")
    if len(sha) == 64:
        return f"{sha[:8]}…{sha[-4:]}_{rest}"
    return name


def _file_json(f: admin.CachedFile) -> dict[str, Any]:
    return {
        "path": str(f.path),
        "rel": f.rel,
        "sha256": f.sha256,
        "size": f.size,
        "kind": f.kind,
        "model": f.model,
        "opset": f.opset,
        "role": f.role,
    }


def format_cache_listing(files: list[admin.CachedFile], root: object) -> str:
    """The ``cache ls`` text (see the module docstring)."""
    groups: dict[str, list[admin.CachedFile]] = {}
    for f in files:
        groups.setdefault(f.model or UNKNOWN, []).append(f)
    lines: list[str] = []
    order = sorted(groups, key=lambda m: (m == UNKNOWN, m.lower()))
    for model in order:
        members = sorted(
            groups[model],
            key=lambda f: (f.opset or 0, f.role != "model", f.kind, f.rel),
        )
        folder = os.path.commonpath([str(PurePosixPath(f.rel).parent) for f in members])
        size = format_size(sum(f.size for f in members))
        lines.append(f"{model}  {size}  in {folder}/")
        rows = [
            [
                f"opset {f.opset}" if f.opset is not None else "",
                "test data" if f.role == "test_data" else (f.role or "file"),
                format_size(f.size),
                _short_name(PurePosixPath(f.rel).name)
                + ("/  (extracted)" if f.kind == "extracted" else ""),
            ]
            for f in members
        ]
        body = table(rows, ["", "", "", ""], right=frozenset({2})).split("\n")[1:]
        lines.extend("  " + row for row in body)
    models = sum(1 for m in groups if m != UNKNOWN)
    total = format_size(sum(f.size for f in files))
    lines.append(f"{models} models, {len(files)} items, {total} in {root}")
    return "\n".join(lines)


async def cmd_cache(
    args: argparse.Namespace,
    config: HubConfig,
    out: Callable[[str], None],
    out_json: Callable[[Any], None],
) -> int:
    from .._hub.registry import all_sources

    root = config.cache_dir
    owners = all_sources()
    action = args.cache_command
    if action == "path":
        out(str(root))
        return EXIT_OK
    if action == "ls":
        files = await anyio.to_thread.run_sync(admin.list_cache, root, owners)
        if args.json:
            out_json([_file_json(f) for f in files])
        else:
            out(format_cache_listing(files, root))
        return EXIT_OK
    if action == "rm":
        return await _rm(args, root, owners, out, out_json)
    if action == "verify":
        report = await anyio.to_thread.run_sync(
            lambda: admin.verify_cache(root, owners, delete=args.delete)
        )
        if args.json:
            out_json(
                {
                    "checked": report.checked,
                    "bytes_checked": report.bytes_checked,
                    "bad": [{"path": str(p), "problem": why} for p, why in report.bad],
                    "deleted": [str(p) for p in report.deleted],
                }
            )
        else:
            for path, why in report.bad:
                out(f"BAD {path}: {why}{' (deleted)' if path in report.deleted else ''}")
            out(
                f"checked {report.checked} files ({format_size(report.bytes_checked)}): "
                f"{len(report.bad)} bad"
            )
        return EXIT_INTEGRITY if report.bad else EXIT_OK
    pruned = await anyio.to_thread.run_sync(
        lambda: admin.prune_cache(root, owners, dry_run=args.dry_run, host=config.host_id)
    )
    if args.json:
        out_json(
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
            out(f"{verb} {path} ({why}, {format_size(n)})")
        out(f"{verb} {len(pruned.removed)} items, {format_size(pruned.bytes)}")
    return EXIT_OK


async def _rm(
    args: argparse.Namespace,
    root: Any,
    owners: Any,
    out: Callable[[str], None],
    out_json: Callable[[Any], None],
) -> int:
    target = args.target.strip()
    files = await anyio.to_thread.run_sync(admin.select_cached, root, owners, target)
    if not files:
        lowered = target.lower()
        if set(lowered) <= set("0123456789abcdef") and len(lowered) < admin.MIN_SHA_PREFIX:
            raise ConfigError(
                f"{target!r} is no cached model; a SHA-256 prefix needs at least "
                f"{admin.MIN_SHA_PREFIX} hex digits (see `asynchub cache ls`)"
            )
        raise ModelNotFoundError(
            f"nothing in the cache {root} is model or SHA-256 {target!r}; "
            "run `asynchub cache ls` to see what is cached"
        )
    freed = 0
    if not args.dry_run:
        freed = await anyio.to_thread.run_sync(admin.remove_cached, root, files)
    if args.json:
        out_json(
            {
                "dry_run": args.dry_run,
                "removed": [_file_json(f) for f in files],
                "bytes": sum(f.size for f in files) if args.dry_run else freed,
            }
        )
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    for f in files:
        label = f"{f.model} opset {f.opset} " if f.model else ""
        out(f"{verb} {label}{f.role or f.kind}: {f.path}")
    out(f"{verb} {len(files)} items, {format_size(sum(f.size for f in files))}")
    return EXIT_OK
