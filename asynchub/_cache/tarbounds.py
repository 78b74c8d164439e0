"""Reading tar headers with bounds: the part of safe extraction that runs inside :mod:`tarfile`.

:mod:`tarfile` reads a GNU long-name or long-link header, or a PAX extended or global header,
whole into memory before it hands out the member it describes; a 300 MiB long name (2.5 MB
of gzip) cost 1.5 GB of RSS. :class:`BoundedTarInfo`, given to ``tarfile.open(tarinfo=...)``,
checks each header *before* ``tarfile`` processes it:

* an extension header holds at most :data:`MAX_HEADER_BYTES` (64 KiB: the hub's archives need
  names of at most 4096 characters, and PAX records of a few hundred bytes);
* at most :data:`MAX_HEADER_CHAIN` (8) extension headers precede one member (``tarfile``
  recurses once per header: a long chain ended in a bare ``RecursionError``);
* all extension headers of an archive hold at most :data:`MAX_HEADER_TOTAL` (16 MiB; global
  PAX headers accumulate in memory for the whole archive);
* GNU sparse members and PAX sparse maps are refused at their header, before their maps are
  read (the extractor refuses sparse files anyway).

A refusal raises :class:`LimitExceeded`, which the extractor turns into an ``ArchiveError``
naming the member. ``tarfile`` builds a ``TarInfo`` per header by itself, so the per-archive
counts live in a context variable set around each extraction by :func:`header_budget`.
The hooks are ``TarInfo._proc_member`` and ``_proc_gnusparse_*``, private but unchanged in
CPython from 3.8 to 3.13; the stream itself still goes through the extractor's size and ratio
guards.
"""

from __future__ import annotations

import contextlib
import contextvars
import tarfile
from collections.abc import Iterator

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_HEADER_CHAIN",
    "MAX_HEADER_TOTAL",
    "BoundedTarInfo",
    "LimitExceeded",
    "header_budget",
]

#: Largest extension header (GNU long name / long link, PAX extended or global) accepted.
MAX_HEADER_BYTES = 64 * 1024
#: Most extension headers accepted in front of one member.
MAX_HEADER_CHAIN = 8
#: Most extension-header bytes accepted in one archive.
MAX_HEADER_TOTAL = 16 * 1024 * 1024
_EXTENSION_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)
_EXTENSION_NAMES = {
    tarfile.GNUTYPE_LONGNAME: "GNU long-name",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link",
    tarfile.XGLTYPE: "PAX global",
}


class LimitExceeded(Exception):
    """Raised inside the read pipeline; turned into ArchiveError with the member name."""


class _HeaderBudget:
    """Extension headers seen so far: in front of the current member, and in the archive."""

    def __init__(self) -> None:
        self.chain = 0
        self.total = 0


#: The header budget of the extraction running in this thread (set by ``_extract_into``).
_budget: contextvars.ContextVar[_HeaderBudget] = contextvars.ContextVar("asynchub_tar_budget")


class BoundedTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` that checks an extension header's size before ``tarfile`` reads it (see
    the module docstring). ``tarfile`` builds one per header from the archive's stream and
    calls ``_proc_member`` on it; the extraction's :class:`_HeaderBudget` is in ``_budget``."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise LimitExceeded("holds a GNU sparse member, which is not supported")
        if self.type not in _EXTENSION_TYPES:
            return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]
        budget = _budget.get()
        kind = _EXTENSION_NAMES.get(self.type, "PAX extended")
        if self.size > MAX_HEADER_BYTES:
            raise LimitExceeded(
                f"has a {kind} header of {self.size} bytes (at most {MAX_HEADER_BYTES})"
            )
        if budget.chain >= MAX_HEADER_CHAIN:
            raise LimitExceeded(
                f"has more than {MAX_HEADER_CHAIN} extension headers in front of one member"
            )
        budget.total += self.size
        if budget.total > MAX_HEADER_TOTAL:
            raise LimitExceeded(f"has over {MAX_HEADER_TOTAL} bytes of extension headers")
        budget.chain += 1
        try:
            return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]
        finally:
            budget.chain -= 1

    def _proc_gnusparse_00(self, *args: object) -> None:
        raise LimitExceeded("holds a PAX sparse member, which is not supported")

    _proc_gnusparse_01 = _proc_gnusparse_00
    _proc_gnusparse_10 = _proc_gnusparse_00


@contextlib.contextmanager
def header_budget() -> Iterator[None]:
    """A fresh header budget for the extraction that runs inside (this thread's context)."""
    token = _budget.set(_HeaderBudget())
    try:
        yield
    finally:
        _budget.reset(token)
