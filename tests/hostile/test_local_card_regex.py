"""MindSpore card parsing is linear: hostile front-matter lines (tens of thousands of spaces
or separators and no colon) are refused in milliseconds, not in seconds to hours.

Each card is parsed in a child process under a hard timeout. Sizes 32 KiB and 256 KiB (and a
card of ~1 MiB, the size limit) tell a linear parser from a quadratic one: before, the
32 KiB line alone took ~9 s and the 256 KiB one would take ~10 min. The bound per card is
generous (a linear parse takes a few milliseconds).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asynchub.mindspore._card import MAX_CARD_BYTES
from tests.hostile.local_helpers import MAX_MESSAGE, run_local

pytestmark = pytest.mark.timeout(120)

PER_CARD = 2.0
HEAD = "# hostile\n---\nmodel-name: x\n"


def _card(line: str) -> str:
    return HEAD + line + "\n---\n"


def _cards() -> dict[str, str]:
    cards: dict[str, str] = {}
    for size in (32 * 1024, 256 * 1024):
        label = f"{size // 1024}k"
        cards[f"spaces-{label}"] = _card("a" + " " * size + "b")
        cards[f"dots-{label}"] = _card("a" + "." * size + "!")
        cards[f"dashes-{label}"] = _card("a" + " -" * (size // 2) + "!")
        cards[f"indented-{label}"] = _card("asset:\n-\n    a" + " " * size + "b")
        cards[f"item-{label}"] = _card("asset:\n- a" + " " * size + "b")
    near_limit = MAX_CARD_BYTES - 64
    cards["one-line-1m"] = _card("a" + " " * (near_limit - len(HEAD) - 8) + "b")
    many = "\n".join("k" + " " * 1000 + "v" for _ in range(near_limit // 1010))
    cards["many-lines-1m"] = HEAD + many + "\n---\n"
    return cards


def test_hostile_card_lines_parse_in_linear_time(tmp_path: Path) -> None:
    cards = _cards()
    assert all(len(text.encode()) <= MAX_CARD_BYTES for text in cards.values())
    cards_file = tmp_path / "cards.json"
    cards_file.write_text(json.dumps(cards))
    run = run_local("card", {"cards_file": str(cards_file)}, timeout=90)
    assert run.result is not None, run.stderr[-2000:]
    slow = {k: round(v, 2) for k, v in run.result["timings"].items() if v > PER_CARD}
    assert not slow, f"cards that took over {PER_CARD} s: {slow}"
    for name, error in run.result["errors"].items():
        assert error is not None, f"{name} was accepted"
        assert error["error"] == "ManifestError", (name, error)
        assert len(error["message"]) < MAX_MESSAGE, (name, len(error["message"]))
