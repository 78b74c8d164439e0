"""The README's headline table is rebuilt from the benchmark results, never typed by hand:
the medians of the run's rows, a failed tool shown as failed, the ``hub.load`` row from
``load_overlap.json`` when there is one, and nothing outside the markers touched."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _headline  # noqa: E402

pytestmark = pytest.mark.timeout(30)
GIB = 1024**3


def _row(tool: str, wall: list[float], *, cpu: float = 1.0, rss: float = 50.0,
         requests: int = 1, error: str | None = None) -> dict[str, Any]:
    return {"tool": tool, "wall": wall, "seconds": [w - 0.1 for w in wall],
            "cpu": [cpu] * len(wall), "rss": [rss] * len(wall),
            "requests": [requests] * len(wall), "error": error}


def _results() -> dict[str, Any]:
    single = [
        _row("asynchub download", [1.4, 1.2, 1.3], cpu=1.5, rss=70),
        _row("aria2c -x16 -s16", [2.0, 2.2, 2.1]),
        _row("hf_transfer", [0.9, 0.95, 1.0]),
        _row("hf_transfer, 100 files", [1.1, 1.1, 1.1], error="sha256sum: 1 file(s) differ"),
        _row("curl", [1.25, 1.25, 1.25]),
        _row("bare Python client (no verify)", [0.7, 0.7, 0.7]),
        _row("bare Python client (verifies)", [1.0, 1.0, 1.1]),
    ]
    return {
        "meta": {"profile": "full", "date": "2026-12-07 09:01", "command": "python run.py --full"},
        "limits": {"sha1": {"seconds": [0.83, 0.84, 0.83], "nbytes": GIB}},
        "scenarios": {
            "A": {"bytes": GIB, "rows": single},
            "C": {"bytes": GIB, "rows": [
                _row("asynchub prefetch", [1.6, 1.7, 1.5], cpu=2.03, rss=67),
                _row("aria2c -j16 -x16 -s16", [3.8, 3.8, 3.8]),
                _row("onnx.hub 1.20.1 load, one by one", [47.1, 47.0, 47.2]),
            ]},
            "D": {"bytes": 30_000, "rows": [
                _row("asynchub load, warm", [0.75], requests=0),
                _row("onnx.hub 1.20.1 load, warm", [0.75], requests=1),
            ]},
        },
    }


def test_the_table_shows_the_medians_of_the_run() -> None:
    text = _headline.render(_results())
    assert "| one 1 GiB model, no cap | 1.30 s, 1.50 CPU-s, 70 MB |" in text
    assert "aria2c -x16 2.10 s" in text and "hf_transfer 950 ms (16 requests at once)" in text
    assert "/ - (100)" in text  # the failed run is not shown as a time
    assert "| a tag of 60 models (1 GiB), same cap, 20 ms per request | 1.60 s, 2.03 CPU-s" in text
    assert "onnx.hub one by one 47.10 s" in text
    assert "| small model, warm `load` | 0 requests | onnx.hub: 1 request |" in text
    assert "830 ms per GiB" in text and "moved the bytes in 600 ms (A)" in text
    assert "moved and verified them in 900 ms (A)" in text
    assert "hub.load" not in text  # no load_overlap results given


def test_refresh_rewrites_only_between_the_markers(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "full-results.json").write_text(json.dumps(_results()))
    (results / "load_overlap.json").write_text(json.dumps({
        "size_mb": 1024, "date": "2026-12-07 09:34", "models": [
            {"model": "BenchBig", "label": "2 tensors", "asynchub": 1.67, "onnx.hub": 3.27},
            {"model": "LayerBig", "label": "29 tensors", "asynchub": 1.81, "onnx.hub": 5.17},
        ]}))  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{_headline.START}\nold table\n{_headline.END}\nafter\n")
    assert _headline.refresh(readme, results)
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith(f"{_headline.END}\nafter\n")
    assert "old table" not in text
    assert "| 1.67 s / 1.81 s | onnx.hub 3.27 s / 5.17 s |" in text
    assert "2 tensors / 29 tensors" in text


def test_refresh_leaves_a_readme_without_markers_or_results_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    results = tmp_path / "results"
    results.mkdir()
    assert not _headline.refresh(readme, results)  # no full run yet
    (results / "full-results.json").write_text(json.dumps(_results()))
    assert not _headline.refresh(readme, results)  # no markers
    assert readme.read_text() == "no markers here\n"
