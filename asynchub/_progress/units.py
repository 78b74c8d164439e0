"""The one size format of asynchub: decimal SI units, everywhere a size or a rate is shown or
read (progress bars, CLI summaries, ``cache ls``, ``--limit-rate``, ``ASYNCHUB_LIMIT_RATE``,
``ASYNCHUB_CHUNK_SIZE``).

Choice: **decimal** (``1 MB = 1,000,000 bytes``, ``kB``, ``MB``, ``GB``). Network rates and
model sizes on the hubs people compare with (Hugging Face, pip, hf) are quoted in decimal
units, and tqdm scales by 1000 by default, so a bar, a summary and a ``--limit-rate`` agree
without conversions. Shown sizes have one decimal (``399.7 kB``, ``80.4 MB``), plain bytes
none (``587 B``), with a space before the unit. Read sizes accept a plain number of bytes or a
number with ``k``/``K``, ``M``, ``G``, ``T`` (decimal, an optional ``B`` and ``/s``), and the
binary ``Ki``, ``Mi``, ``Gi``, ``Ti`` (``KiB``, ``MiB``...) for whoever means powers of 1024.
"""

from __future__ import annotations

import re

__all__ = ["format_rate", "format_size", "parse_size_text"]

_DECIMAL = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
_BINARY = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgGtT]?)(i?)[bB]?(?:/s)?\s*$")


def format_size(n: float) -> str:
    """``1234567`` → ``"1.2 MB"``; ``587`` → ``"587 B"`` (decimal units)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 999.95 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def format_rate(bytes_per_second: float) -> str:
    """``26_200_000`` → ``"26.2 MB/s"``."""
    return f"{format_size(bytes_per_second)}/s"


def parse_size_text(text: str) -> int | None:
    """``"50M"`` → 50,000,000; ``"16Mi"`` → 16,777,216; ``None`` if ``text`` is not a size."""
    match = _SIZE.match(text)
    if match is None:
        return None
    number, unit, binary = match.groups()
    unit = unit.upper()
    if binary and not unit:
        return None
    factor = _BINARY[unit] if binary else _DECIMAL[unit]
    return int(float(number) * factor)
