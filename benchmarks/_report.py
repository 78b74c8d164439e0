"""Markdown tables and matplotlib plots of a benchmark run, written to ``benchmarks/results/``.

Columns of a scenario table: median wall time of the process with min-max over the runs,
in-process time where the driver reports it (asynchub, onnx.hub, bare onnx.load), MB/s from the
wall time (1 MB = 10^6 bytes), the asynchub speed-up over that row (row wall / asynchub wall),
the row's wall time as a multiple of the single-core SHA-256 time of the same bytes, peak RSS,
CPU seconds (user + system, the process and its children) and requests seen by the mirror.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
DOCS = HERE.parent / "docs" / "benchmarks.md"
MARK_START = "<!-- results:start -->"
MARK_END = "<!-- results:end -->"
MiB = 1024 * 1024


def chunk_label(nbytes: int) -> str:
    """A chunk size as it was given: ``16 MiB`` for 16Mi, ``16 MB`` for 16M (sizes use
    asynchub's units: M is 10^6 bytes, Mi 2^20)."""
    return f"{nbytes // MiB} MiB" if nbytes % MiB == 0 else f"{nbytes / 1e6:g} MB"


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt_time(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return _sec(med)
    return f"{_sec(med)} ({_sec(min(values))}-{_sec(max(values))})"


def _sec(value: float) -> str:
    if value < 0.01:
        return f"{value * 1000:.2f} ms"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def _reference(scenario: dict[str, Any]) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = scenario["rows"]
    for row in rows:
        if row["tool"].startswith("asynchub") and row["wall"] and not row["error"]:
            return row
    return None


def scenario_table(scenario: dict[str, Any]) -> str:
    ref = _reference(scenario)
    ref_wall = _med(ref["wall"]) if ref else None
    limit = scenario.get("limit_seconds")
    lines = [
        f"### {scenario['title']}",
        "",
        f"_{scenario['header']}_",
        "",
        "| tool | n | wall (min-max) | in-process | MB/s | asynchub speed-up | x SHA-256 limit "
        "| peak RSS MB | CPU s | CPU s/GiB | requests | note |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    gib = scenario["bytes"] / 2**30
    for row in scenario["rows"]:
        if row["error"] and not row["wall"]:
            lines.append(f"| {row['tool']} | 0 | - | - | - | - | - | - | - | - | - | "
                         f"{_esc(row['error'])} |")
            continue
        wall = _med(row["wall"]) or 0.0
        inproc = _med(row["seconds"])
        mbps = scenario["bytes"] / wall / 1e6 if wall else 0.0
        speedup = (f"{wall / ref_wall:.2f} x" if ref_wall and row is not ref else
                   ("1 (reference)" if row is ref else "-"))
        lim = f"{wall / limit:.2f}" if limit else "-"
        requests = str(max(row["requests"])) if row["requests"] else "-"
        note = row["error"] or row["note"]
        per_gib = f"{(_med(row['cpu']) or 0) / gib:.2f}" if gib >= 0.01 else "-"
        extra = row["extra"][0] if row["extra"] else {}
        if "repeat_median" in extra:
            rm = _med([e["repeat_median"] for e in row["extra"] if "repeat_median" in e]) or 0.0
            note = f"{note}; repeat calls {rm * 1000:.2f} ms".strip("; ")
        lines.append(
            f"| {row['tool']} | {len(row['wall'])} | {_fmt_time(row['wall'])} | "
            f"{_sec(inproc) if inproc is not None else '-'} | "
            f"{f'{mbps:.0f}' if scenario['bytes'] >= 1e6 else '-'} | {speedup} | {lim} | "
            f"{max(row['rss']):.0f} | {_med(row['cpu']) or 0:.2f} | {per_gib} | {requests} | "
            f"{_esc(note)} |")
    if limit:
        lines += ["", f"SHA-256 limit for these bytes: {_sec(limit)} ({scenario['limit_name']})."]
    if scenario["targets"]:
        lines += ["", "Targets:", ""]
        for t in scenario["targets"]:
            mark = {True: "PASS", False: "MISS", None: "info"}[t["ok"]]
            lines.append(f"- **{mark}** {t['text']}: {t['detail']}")
    return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("|", "/"))


def limits_table(limits: dict[str, Any], ttfb: dict[str, Any]) -> str:
    lines = ["### Limits of this machine (measured in the same run)", "",
             "| limit | n | time (min-max) | throughput |", "|---|---:|---|---:|"]
    for lim in limits.values():
        rate = lim["nbytes"] / statistics.median(lim["seconds"]) / 1e9
        lines.append(f"| {lim['name']} ({lim['nbytes'] / MiB:.0f} MiB) | {len(lim['seconds'])} | "
                     f"{_fmt_time(lim['seconds'])} | {rate:.2f} GB/s |")
    if ttfb:
        lines += ["", "| endpoint | time to first byte, manifest (median of 5) |", "|---|---:|"]
        for name, values in ttfb.items():
            lines.append(f"| {name} | {_fmt_time(values)} |")
    return "\n".join(lines) + "\n"


def sweep_table(sweep: dict[str, Any]) -> str:
    points = sweep["points"]
    chunks = sorted({p["chunk"] for p in points if p["tool"] == "asynchub"})
    conns = sorted({p["connections"] for p in points})
    head = " | ".join(f"asynchub {chunk_label(c)} chunks" for c in chunks)
    has_aria = any(p["tool"] == "aria2c" for p in points)
    lines = ["### E: throughput (MB/s) by connections and chunk size", "",
             f"_{sweep['header']}_", "",
             f"| connections | {head}{' | aria2c -xN -sN' if has_aria else ''} |",
             "|---:|" + "---:|" * (len(chunks) + int(has_aria))]
    for c in conns:
        cells = []
        for k in chunks:
            pt = next((p for p in points if p["tool"] == "asynchub" and p["connections"] == c
                       and p["chunk"] == k), None)
            cells.append(_mbps(pt))
        if has_aria:
            pt = next((p for p in points if p["tool"] == "aria2c" and p["connections"] == c), None)
            cells.append(_mbps(pt))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if has_aria and max(conns) > 16:
        lines += ["", "aria2c allows at most 16 connections per server (-x16)."]
    best, knee = sweep.get("best"), sweep.get("knee")
    if best:
        lines += ["", f"Best: **{best['connections']} connections, {chunk_label(best['chunk'])} "
                      f"chunks** ({best['mbps']:.0f} MB/s)."]
    if knee and knee is not best:
        lines.append(f"Fewest connections within 5 % of the best: {knee['connections']} "
                     f"connections, {chunk_label(knee['chunk'])} chunks ({knee['mbps']:.0f} MB/s).")
    versus = sweep.get("versus")
    if versus:
        lines += ["", "The adaptive width against the best fixed setting, in rounds:", "",
                  "| tool | n | wall (min-max) | MB/s | requests |", "|---|---:|---|---:|---:|"]
        for row in versus["rows"]:
            wall = _med(row["wall"])
            mbps = f"{sweep['bytes'] / wall / 1e6:.0f}" if wall else "-"
            requests = _med(row["requests"]) if row.get("requests") else None
            lines.append(f"| {row['tool']} | {len(row['wall'])} | {_fmt_time(row['wall'])} | "
                         f"{mbps} | {f'{requests:.0f}' if requests is not None else '-'} |")
        lines += ["", "Targets:", ""]
        for t in versus["targets"]:
            mark = {True: "PASS", False: "MISS", None: "info"}[t["ok"]]
            lines.append(f"- **{mark}** {t['text']}: {t['detail']}")
    return "\n".join(lines) + "\n"


def _mbps(pt: dict[str, Any] | None) -> str:
    if pt is None:
        return "-"
    if pt["error"] and not pt["wall"]:
        return "failed"
    return f"{pt['mbps']:.0f}" if pt["mbps"] else "-"


# ---------------------------------------------------------------------- plots
def plot_sweep(sweep: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = [p for p in sweep["points"] if p["mbps"]]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    series: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        label = (f"asynchub, {chunk_label(p['chunk'])} chunks" if p["tool"] == "asynchub"
                 else "aria2c -xN -sN")
        series.setdefault(label, []).append(p)
    for label, pts in series.items():
        pts.sort(key=lambda p: p["connections"])
        style = "--" if label.startswith("aria2c") else "-"
        ax.plot([p["connections"] for p in pts], [p["mbps"] for p in pts], style, marker="o",
                label=label)
    conns = sorted({p["connections"] for p in points})
    if sweep.get("rate_limit"):
        ideal = [c * sweep["rate_limit"] / 1e6 for c in conns]
        ax.plot(conns, ideal, ":", color="grey", label="connections x per-connection cap")
    if sweep.get("sha_rate"):
        ax.axhline(sweep["sha_rate"] / 1e6, color="red", linestyle=":",
                   label="SHA-256, one core")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(conns, [str(c) for c in conns])
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("connections")
    ax.set_ylabel("MB/s (wall time of the process), log scale")
    ax.set_title(sweep["header"][:90], fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_bars(scenarios: list[dict[str, Any]], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    shown = [s for s in scenarios if any(r["wall"] for r in s["rows"])]
    if not shown:
        return None
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 2.2 + 1.6 * len(shown)), dpi=110,
                             squeeze=False)
    for ax, scenario in zip(axes[:, 0], shown, strict=True):
        rows = [r for r in scenario["rows"] if r["wall"]]
        labels = [r["tool"] for r in rows]
        med = [statistics.median(r["wall"]) for r in rows]
        low = [m - min(r["wall"]) for m, r in zip(med, rows, strict=True)]
        high = [max(r["wall"]) - m for m, r in zip(med, rows, strict=True)]
        colors = ["tab:green" if lab.startswith("asynchub") else "tab:grey" for lab in labels]
        ax.barh(labels, med, xerr=[low, high], color=colors, capsize=3)
        if scenario.get("limit_seconds"):
            ax.axvline(scenario["limit_seconds"], color="red", linestyle=":",
                       label="SHA-256 one core")
            ax.legend(fontsize=7, loc="lower right")
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel("wall seconds (median, min-max), log scale", fontsize=8)
        ax.set_title(scenario["title"], fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- files
def write(results: dict[str, Any], *, prefix: str = "", update_readme: bool = True) -> Path:
    """Write ``<prefix>results.md``, ``.json`` and the plots; refresh the README's table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{prefix}results.json").write_text(json.dumps(results, indent=1))
    meta = results["meta"]
    parts = [f"## Results ({meta['profile']}, {meta['date']})", "",
             f"_{meta['machine']}; mirror: {meta['mirror']}; command: `{meta['command']}`_", ""]
    if results.get("limits"):
        parts.append(limits_table(results["limits"], results.get("ttfb", {})))
    scenarios = list(results.get("scenarios", {}).values())
    parts += [scenario_table(s) for s in scenarios]
    if results.get("sweep"):
        parts.append(sweep_table(results["sweep"]))
        if plot_sweep(results["sweep"], RESULTS / f"{prefix}sweep.png"):
            parts.append(f"![throughput vs connections]({prefix}sweep.png)\n")
    if plot_bars(scenarios, RESULTS / f"{prefix}scenarios.png"):
        parts.append(f"![wall time per scenario]({prefix}scenarios.png)\n")
    text = "\n".join(parts)
    out = RESULTS / f"{prefix}results.md"
    out.write_text(text)
    if update_readme:
        import _headline

        # the project's page of results (linked from the README), then this folder's README
        for page, prefix_of_links in ((DOCS, "../benchmarks/results/"), (README, "results/")):
            if page.exists():
                body = text.replace("](", f"]({prefix_of_links}")
                body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.MULTILINE)  # under "## Latest"
                _headline.replace_between(page, MARK_START, MARK_END, body)
        if prefix == "full-":  # a complete full run: the project README's headline table
            _headline.refresh()
    return out
