"""Library messages in the words of the command line.

The library's errors speak Python (``Call list_models()``, ``pass trust_repo=True``,
``HubConfig.max_connections``), which is right for a caller of the API. The CLI shows the same
errors with the Python names replaced by the commands, options and environment variables a
person at a shell uses. Choice: one phrase table here rather than a second wording in every
``raise`` site, so the library keeps one message per error and the CLI's vocabulary lives in
one place; tests/test_cli_completeness.py checks the translated messages, so a reworded library
message that no longer matches shows up as a failing test, not as Python in the terminal.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["cli_message", "close_names"]

#: ``(python wording, CLI wording)``, applied in order.
_PHRASES: tuple[tuple[str, str], ...] = (
    ("Call list_models() to see", "Run `asynchub list` to see"),
    ("Run `asynchub list` (or list_models()) to see", "Run `asynchub list` to see"),
    (
        "Pass one of them as opset=, or leave opset unset for the newest.",
        "Pass one of them with --opset, or leave --opset out for the newest.",
    ),
    ("pass check_space=False / --no-space-check", "pass --no-space-check"),
    ("pass trust_repo=True, or set", "pass --trust-repo, or set"),
    ("trust_repo=True", "--trust-repo"),
    ("force_reload=True", "--force"),
    (
        "list_models needs either uids (a list of MindSpore Hub uids) or cards_dir (a local "
        "checkout of mindspore-ai/hub)",
        "`asynchub mindspore list` needs either UIDs or --cards-dir (a local checkout of "
        "mindspore-ai/hub)",
    ),
)

#: ``HubConfig`` fields named in validation errors → the option and the environment variable.
_FIELDS = {
    "max_connections": "--max-connections / ASYNCHUB_MAX_CONNECTIONS",
    "max_connections_per_host": "ASYNCHUB_MAX_CONNECTIONS_PER_HOST",
    "chunk_size": "ASYNCHUB_CHUNK_SIZE",
    "limit_rate": "--limit-rate / ASYNCHUB_LIMIT_RATE",
    "file_urls": "ASYNCHUB_FILE_URLS",
    "cache_dir": "--cache-dir / ASYNCHUB_CACHE_DIR",
    "offline": "--offline / ASYNCHUB_OFFLINE",
}
_FIELD = re.compile(r"HubConfig\.(\w+)")


def cli_message(message: str) -> str:
    """``message`` with its Python names replaced by CLI commands, options and variables."""
    for python, cli in _PHRASES:
        message = message.replace(python, cli)
    return _FIELD.sub(lambda m: _FIELDS.get(m.group(1), m.group(0)), message)


def close_names(word: str, names: Iterable[str], *, limit: int = 3) -> list[str]:
    """Up to ``limit`` of ``names`` close to ``word`` (any case): names that contain it or
    start like it first, then ``difflib``'s closest spellings."""
    by_lower: dict[str, str] = {}
    for name in names:
        by_lower.setdefault(name.lower(), name)
    wanted = word.lower()
    found = [by_lower[n] for n in sorted(by_lower) if wanted and wanted in n]
    for n in difflib.get_close_matches(wanted, list(by_lower), n=limit, cutoff=0.6):
        if by_lower[n] not in found:
            found.append(by_lower[n])
    return found[:limit]
