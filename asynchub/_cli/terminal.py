"""Text for a terminal: control characters escaped, so printed data cannot drive it.

Manifests, cards, server errors and command-line arguments reach the CLI's output (tags,
``io_ports`` names, error messages). Printed raw, an escape sequence in them could retitle the
terminal, clear it, hide or overwrite lines, or reorder text (bidi overrides). Every CLI
printer passes its text through :func:`printable`, which writes such characters as Python
escapes (``\\x1b``, ``\\u202e``), keeping newlines and tabs (the CLI's own layout).

Escaped: C0 controls but ``\\n`` and ``\\t`` (``\\r`` included: it overwrites a line), DEL, C1
controls (``\\x9b`` is a one-byte CSI), lone surrogates, and the bidirectional formatting
characters (U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069). For JSON output
(``json_text=True``) the same characters become JSON escapes (``\u001b``), which keeps the
document exact: in JSON text they can only stand inside strings.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def printable(text: str, *, json_text: bool = False) -> str:
    """``text`` with terminal control characters escaped (see the module docstring)."""
    return _UNSAFE.sub(_json_escape if json_text else _escape, text)
