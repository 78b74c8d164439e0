"""Progress bars in a real Jupyter kernel.

A notebook built with nbformat is executed by nbclient in a real ipykernel (this venv's
Python, from a kernelspec written into the test's temp dir) against a local mirror of the
generated zoo. Cell 1 runs the sync ``hub.load``, cell 2 ``await hub.aload``: the
module-level functions with the environment pointing at the mirror, as a user would.

* With ipywidgets (the usual notebook set-up) each cell shows a tqdm widget
  (``application/vnd.jupyter.widget-view+json``), and the stored widget state shows the bar
  full and our text ("399.7 kB/399.7 kB … files 1/1"). A third cell feeds public
  ``ProgressBars`` a total that grows after the first frame: the widget's maximum follows.
* Without ipywidgets (simulated by a first cell that makes ``import ipywidgets`` fail, the way
  a kernel without the package behaves), tqdm falls back to text on the cell's stderr.
* With ``ASYNCHUB_DISABLE_PROGRESS_BARS=1`` no cell shows either.

The mirror paces bodies at 500 kB/s so the drawing thread draws while bytes move (about
0.8 s of download for each notebook).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_PREFIX
from tests.mirror import MirrorServer

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
if importlib.util.find_spec("ipykernel") is None:  # run in the kernel, never imported here
    pytest.skip("ipykernel is not installed", allow_module_level=True)
kernelspec = pytest.importorskip("jupyter_client.kernelspec")
manager = pytest.importorskip("jupyter_client.manager")

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
KERNEL_NAME = "asynchub-test"
RATE = 500_000  # bytes/s per response body

LOAD_CELL = 'import asynchub as hub\nmodel = hub.load("TinyNet")\nprint(model.graph.name)'
ALOAD_CELL = 'model = await hub.aload("NanoText")\nprint(model.graph.name)'
# Public API only: a total that grows after the first frame (a file planned late).
GROWING_TOTAL_CELL = """\
from asynchub import ProgressBars, ProgressEvent
bars = ProgressBars(description="grown", interval=3600)
bars(ProgressEvent("planned", "a.onnx", total=100))
bars(ProgressEvent("transfer", "a.onnx", nbytes=50))
bars.render()
bars(ProgressEvent("planned", "b.onnx", total=200))
bars(ProgressEvent("transfer", "a.onnx", nbytes=50))
bars.render()
bars(ProgressEvent("transfer", "b.onnx", nbytes=200))
bars.close()
"""
NO_WIDGETS_CELL = 'import sys\nsys.modules["ipywidgets"] = None  # as if it were not installed'


@pytest.fixture
def paced_mirror(mirror_root: Path) -> Iterator[MirrorServer]:
    server = MirrorServer(mirror_root, hosts=("127.0.0.1",), rate_limit=RATE)
    with server.running():
        yield server


@pytest.fixture
def kernel_dir(tmp_path: Path) -> Path:
    """A kernelspec for this venv's Python, visible only to this test's kernel manager."""
    spec = tmp_path / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec_json = {"argv": argv, "display_name": "asynchub test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(spec_json))
    return tmp_path / "kernels"


def _kernel_env(server: MirrorServer, home: Path, *, disabled: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHUB_")}
    env["ASYNCHUB_MANIFEST_URL"] = server.url + "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json"
    env["ASYNCHUB_FILE_URLS"] = server.url + "/{owner}/{repo}/{ref}/{path}"
    env["ONNX_HOME"] = str(home)
    if disabled:
        env["ASYNCHUB_DISABLE_PROGRESS_BARS"] = "1"
    return env


def _run(kernels: Path, cells: list[str], env: dict[str, str]) -> Any:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    km = manager.KernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=kernelspec.KernelSpecManager(kernel_dirs=[str(kernels)]),
    )
    client = nbclient.NotebookClient(
        nb, km=km, timeout=60, startup_timeout=60, store_widget_state=True
    )
    client.execute(env=env)
    return nb


def _stderr(cell: Any) -> str:
    return "".join(
        o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stderr"
    )


def _stdout(cell: Any) -> str:
    return "".join(
        o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stdout"
    )


def _widget_ids(cell: Any) -> list[str]:
    return [
        o["data"][WIDGET_MIME]["model_id"]
        for o in cell.outputs
        if o["output_type"] == "display_data" and WIDGET_MIME in o.get("data", {})
    ]


def _widget_texts(nb: Any) -> list[str]:
    """Every HTML widget's final text (tqdm's description and our numbers)."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE_MIME, {}).get("state", {})
    return [
        m["state"]["value"].replace("\u2007", " ")
        for m in state.values()
        if m.get("model_name") == "HTMLModel"
    ]


def _progress_values(nb: Any) -> list[tuple[float, float]]:
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE_MIME, {}).get("state", {})
    return [
        (m["state"]["value"], m["state"]["max"])
        for m in state.values()
        if m.get("model_name") == "FloatProgressModel"
    ]


def _sizes(mirror_root: Path) -> dict[str, int]:
    manifest = json.loads((mirror_root / REPO_PREFIX / "ONNX_HUB_MANIFEST.json").read_text())
    sizes: dict[str, int] = {}
    for entry in manifest:
        if entry["model"] in ("TinyNet", "NanoText"):
            size = int(entry["metadata"]["model_bytes"])
            sizes[entry["model"]] = max(sizes.get(entry["model"], 0), size)
    return sizes


@pytest.mark.timeout(180)
def test_widgets_in_both_cells(
    paced_mirror: MirrorServer, kernel_dir: Path, tmp_path: Path, mirror_root: Path
) -> None:
    if importlib.util.find_spec("ipywidgets") is None:
        pytest.skip("ipywidgets is not installed (the text fallback is tested below)")
    env = _kernel_env(paced_mirror, tmp_path / "home", disabled=False)
    nb = _run(kernel_dir, [LOAD_CELL, ALOAD_CELL, GROWING_TOTAL_CELL], env)
    load_cell, aload_cell, grow_cell = nb.cells
    assert _stdout(load_cell) == "tinynet\n" and _stdout(aload_cell) == "nanotext\n"
    assert len(_widget_ids(load_cell)) == 1, load_cell.outputs
    assert len(_widget_ids(aload_cell)) == 1, aload_cell.outputs
    assert len(_widget_ids(grow_cell)) == 1, grow_cell.outputs
    assert "%|" not in _stderr(load_cell) + _stderr(aload_cell)  # widgets, not text
    # The widgets ended full, with our numbers: one bar per operation.
    sizes = _sizes(mirror_root)
    values = _progress_values(nb)
    expected = [(float(s), float(s)) for s in (*sizes.values(), 300)]
    assert sorted(values) == sorted(expected), values
    texts = " | ".join(_widget_texts(nb))
    assert texts.count("asynchub: 100%") == 2, texts
    assert "399.7 kB/399.7 kB" in texts and "299.5 kB/299.5 kB" in texts, texts
    assert texts.count("files 1/1") == 2, texts
    assert "grown: 100%" in texts and "300 B/300 B" in texts, texts


@pytest.mark.timeout(180)
def test_text_bars_without_ipywidgets(
    paced_mirror: MirrorServer, kernel_dir: Path, tmp_path: Path
) -> None:
    env = _kernel_env(paced_mirror, tmp_path / "home", disabled=False)
    nb = _run(kernel_dir, [NO_WIDGETS_CELL, LOAD_CELL, ALOAD_CELL], env)
    _, load_cell, aload_cell = nb.cells
    assert _stdout(load_cell) == "tinynet\n" and _stdout(aload_cell) == "nanotext\n"
    for cell, size in ((load_cell, "399.7 kB"), (aload_cell, "299.5 kB")):
        text = _stderr(cell)
        assert not _widget_ids(cell), cell.outputs
        assert f"asynchub: 100%|██████████| {size}/{size}" in text, text
        assert "files 1/1" in text, text


@pytest.mark.timeout(180)
def test_no_bars_when_disabled(
    paced_mirror: MirrorServer, kernel_dir: Path, tmp_path: Path
) -> None:
    env = _kernel_env(paced_mirror, tmp_path / "home", disabled=True)
    nb = _run(kernel_dir, [LOAD_CELL, ALOAD_CELL], env)
    for cell in nb.cells:
        assert cell.outputs, "the cell did not run"
        assert not _widget_ids(cell), cell.outputs
        assert "%|" not in _stderr(cell) and "asynchub:" not in _stderr(cell), cell.outputs
    assert [_stdout(c) for c in nb.cells] == ["tinynet\n", "nanotext\n"]
    assert not _progress_values(nb) and not _widget_texts(nb)
    assert paced_mirror.served_bytes() > 600_000  # the bytes did move, silently
