"""The headline table of the project's README, regenerated from the latest results.

``run.py --full`` writes ``results/full-results.json`` and ``load_overlap.py`` writes
``results/load_overlap.json``; each then calls :func:`refresh`, which rebuilds the table between
:data:`START` and :data:`END` in the README from both files (the ``hub.load`` row from the
second, when it exists). Nothing in the table is typed by hand, so it always shows one run's
medians. Pure text: no plotting library, so the test suite can render it from a results file.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from _report import _sec

__all__ = ["END", "START", "render", "refresh", "replace_between"]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
START = "<!-- headline:start -->"
END = "<!-- headline:end -->"
GIB = 1024**3


def _row(scenario: dict[str, Any], tool: str) -> dict[str, Any] | None:
    row = next((r for r in scenario["rows"] if r["tool"] == tool), None)
    return row if row and row["wall"] and not row.get("error") else None


def _med(values: list[float]) -> float:
    return float(statistics.median(values))


def _wall(scenario: dict[str, Any], tool: str) -> str:
    row = _row(scenario, tool)
    return _sec(_med(row["wall"])) if row else "-"


def _ours(scenario: dict[str, Any], tool: str, *, per_gib: bool = False) -> str:
    row = _row(scenario, tool)
    if row is None:
        return "failed"
    cpu = _med(row["cpu"])
    cpu_text = f"{cpu / (scenario['bytes'] / GIB):.2f} CPU-s/GiB" if per_gib else f"{cpu:.2f} CPU-s"
    return f"{_sec(_med(row['wall']))}, {cpu_text}, {max(row['rss']):.0f} MB"


def _single(scenario: dict[str, Any], *, curl: bool = True) -> str:
    peers = [
        f"aria2c -x16 {_wall(scenario, 'aria2c -x16 -s16')}",
        f"hf_transfer {_wall(scenario, 'hf_transfer')} (16 requests at once) / "
        f"{_wall(scenario, 'hf_transfer, 100 files')} (100)",
    ]
    if curl:
        peers.append(f"curl {_wall(scenario, 'curl')}")
    return ", ".join(peers)


def _requests(scenario: dict[str, Any], tool: str) -> str:
    row = _row(scenario, tool)
    if row is None or not row.get("requests"):
        return "-"
    count = max(row["requests"])
    return f"{count} request{'s' if count != 1 else ''}"


def render(full: dict[str, Any], overlap: dict[str, Any] | None = None) -> str:
    """The table (and the line under it) for ``full`` (a ``full-results.json``) and
    ``overlap`` (a ``load_overlap.json``)."""
    s = full["scenarios"]
    lines = [
        f"_Full run of {full['meta']['date']} "
        f"(`{full['meta']['command']}`; `benchmarks/results/full-results.md`)._",
        "",
        "| scenario | asynchub (SHA-256 verified) | peers (not verifying) |",
        "|---|---|---|",
    ]
    if "A" in s:
        lines.append(f"| one 1 GiB model, no cap | {_ours(s['A'], 'asynchub download')} | "
                     f"{_single(s['A'])} |")
    if "B" in s:
        lines.append("| one 1 GiB model, 25 MB/s per connection (a CDN edge) | "
                     f"{_ours(s['B'], 'asynchub download')} | {_single(s['B'])} |")
    if "F" in s:
        lines.append("| one 512 MiB model, same cap, the `asynchub download` command | "
                     f"{_ours(s['F'], '`asynchub download` command', per_gib=True)} | "
                     f"{_single(s['F'], curl=False)} |")
    if "C" in s:
        lines.append("| a tag of 60 models (1 GiB), same cap, 20 ms per request | "
                     f"{_ours(s['C'], 'asynchub prefetch')} | "
                     f"aria2c -j16 {_wall(s['C'], 'aria2c -j16 -x16 -s16')}, onnx.hub one by "
                     f"one {_wall(s['C'], 'onnx.hub 1.20.1 load, one by one')} |")
    if overlap:
        models = overlap["models"]
        ours = " / ".join(_sec(m["asynchub"]) for m in models)
        theirs = " / ".join(_sec(m["onnx.hub"]) for m in models)
        lines.append(f"| `hub.load` of a {overlap['size_mb'] // 1024} GiB model, "
                     f"{' / '.join(m['label'] for m in models)} (`benchmarks/load_overlap.py`, "
                     f"{overlap['date']}) | {ours} | onnx.hub {theirs} |")
    if "D" in s:
        lines.append(f"| small model, warm `load` | {_requests(s['D'], 'asynchub load, warm')} | "
                     f"onnx.hub: {_requests(s['D'], 'onnx.hub 1.20.1 load, warm')} |")
    notes = []
    sha = full.get("limits", {}).get("sha1")
    if sha:
        notes.append(f"SHA-256 on one core took {_med(sha['seconds']) * 1000:.0f} ms per GiB")
    for tool, did in (("bare Python client (no verify)", "moved the bytes"),
                      ("bare Python client (verifies)", "moved and verified them")):
        bare = [(sid, _row(s[sid], tool)) for sid in "ABF" if sid in s]
        shown = [f"{_sec(_med(row['seconds']))} ({sid})" for sid, row in bare
                 if row and row.get("seconds")]
        if shown:
            notes.append(f"the {tool} {did} in " + ", ".join(shown) + " in the process")
    if notes:
        lines += ["", "In that run " + "; ".join(notes) + "."]
    return "\n".join(lines)


def refresh(readme: Path = README, results: Path = RESULTS) -> bool:
    """Rebuild the README's headline table from the latest results; False if the README has
    no markers or there is no full run yet."""
    full_path = results / "full-results.json"
    if not readme.exists() or not full_path.exists():
        return False
    full = json.loads(full_path.read_text(encoding="utf-8"))
    if full.get("meta", {}).get("profile") != "full":
        return False
    overlap_path = results / "load_overlap.json"
    overlap = None
    if overlap_path.exists():
        overlap = json.loads(overlap_path.read_text(encoding="utf-8"))
    return replace_between(readme, START, END, render(full, overlap))


def replace_between(path: Path, start: str, end: str, body: str) -> bool:
    """Put ``body`` between the markers ``start`` and ``end`` of the file ``path`` (False,
    and nothing written, if it lacks them)."""
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}", encoding="utf-8")
    return True
