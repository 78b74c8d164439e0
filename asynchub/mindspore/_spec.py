"""MindSpore Hub as a registered source (see :mod:`asynchub._hub.source`).

It owns the cache folder ``mindspore/`` (assets at ``mindspore/<uid>/<sha256>_<file>``, cards
under ``mindspore/_cards/``) and the ``asynchub mindspore`` command. Importing this module is
cheap: the card parser, the API and the CLI handlers are imported when first used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .._hub.source import SourceSpec

if TYPE_CHECKING:
    import argparse

    from .._cache.admin import FileRef
    from .._engine.engine import FileJob
    from .._hub.source import Source, SourceHost

__all__ = ["SPEC"]


class _MindSporeSource:
    """MindSpore Hub on one hub: a selection is a uid (or a card URL)."""

    def __init__(self, host: SourceHost) -> None:
        self._host = host

    async def resolve(self, selection: str, *, force: bool = False) -> list[FileJob]:
        from ._source import card_jobs

        return await card_jobs(self._host, selection, refresh=force)


def _open(host: SourceHost) -> Source:
    return _MindSporeSource(host)


def _references(root: Path) -> Mapping[Path, FileRef] | None:
    from ._source import cached_references

    return cached_references(root)


def _add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ._cli import add_parser

    add_parser(subparsers)


SPEC = SourceSpec(
    name="mindspore",
    cache_namespace="mindspore",
    documents="mindspore/_cards",
    open=_open,
    references=_references,
    add_cli=_add_cli,
)
