"""Signatures a person (and an IDE, and mypy) can read: ``prefetch``/``aprefetch`` and
``HubConfig.from_env`` take explicit keywords, so a typo such as ``tag=`` for ``tags=`` is
caught by ``mypy --strict`` before it runs, and by Python when it runs; ``help()`` shows them.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import asynchub
from asynchub import AsyncHub, Hub, HubConfig

ROOT = Path(__file__).resolve().parents[1]

GOOD = '''
from pathlib import Path

import asynchub
from asynchub import AsyncHub, Hub, HubConfig, PrefetchResult


def sync_calls(hub: Hub) -> PrefetchResult:
    asynchub.prefetch(models=["resnet50"], all_opsets=True, with_test_data=True)
    config = HubConfig.from_env(max_connections=8, offline=True, proxy="http://p:3128")
    assert config.max_connections == 8
    folder: Path = asynchub.download_with_test_data("mnist")
    legacy: str = asynchub.download_model_with_test_data("mnist")
    assert folder and legacy
    return hub.prefetch(tags=["vision"], check_space=False)


async def async_calls(hub: AsyncHub) -> PrefetchResult:
    await asynchub.aprefetch(all=True, repo="onnx/models:main")
    folder: Path = await asynchub.adownload_with_test_data("mnist")
    assert folder
    return await hub.prefetch(tags=["vision"], force_reload=True)
'''

BAD = '''
import asynchub
from asynchub import AsyncHub, Hub, HubConfig


def sync_calls(hub: Hub) -> None:
    hub.prefetch(tag=["vision"])  # line 7
    asynchub.prefetch(model=["resnet50"])  # line 8
    HubConfig.from_env(max_conections=8)  # line 9
    HubConfig.from_env(offline="yes")  # line 10


async def async_calls(hub: AsyncHub) -> None:
    await hub.prefetch(tag=["vision"])  # line 14
    await asynchub.aprefetch(tags="vision")  # line 15
'''


@pytest.mark.timeout(300)
def test_mypy_catches_a_misspelled_keyword(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD))
    env = dict(os.environ, MYPYPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--config-file", os.devnull, "--cache-dir", str(tmp_path / ".mypy_cache"),
         "good.py", "bad.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert not [line for line in lines if line.startswith("good.py")], result.stdout
    flagged = {int(line.split(":")[1]) for line in lines if line.startswith("bad.py")}
    assert flagged == {7, 8, 9, 10, 14, 15}, result.stdout + result.stderr
    assert 'Unexpected keyword argument "tag"' in result.stdout


def test_misspelled_keywords_fail_at_run_time_too(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="tag"):
        Hub(HubConfig(cache_dir=tmp_path)).prefetch(tag=["vision"])  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="max_conections"):
        HubConfig.from_env({}, max_conections=8)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "function",
    [asynchub.prefetch, asynchub.aprefetch, Hub.prefetch, AsyncHub.prefetch],
    ids=["prefetch", "aprefetch", "Hub.prefetch", "AsyncHub.prefetch"],
)
def test_prefetch_keywords_are_visible(function: object) -> None:
    parameters = inspect.signature(function).parameters  # type: ignore[arg-type]
    keywords = [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert keywords[:3] == ["tags", "models", "all"]
    assert {"repo", "with_test_data", "force_reload", "trust_repo"} <= set(keywords)
    assert not [p for p in parameters.values() if p.kind is p.VAR_KEYWORD]


def test_from_env_keywords_are_the_config_fields() -> None:
    parameters = inspect.signature(HubConfig.from_env).parameters
    fields = {f.name for f in HubConfig.__dataclass_fields__.values()}
    keywords = {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert keywords == fields
    assert not [p for p in parameters.values() if p.kind is p.VAR_KEYWORD]


def test_the_path_twin_of_download_model_with_test_data() -> None:
    legacy = inspect.signature(asynchub.download_model_with_test_data)
    twin = inspect.signature(asynchub.download_with_test_data)
    assert list(legacy.parameters) == list(twin.parameters)
    assert twin.return_annotation in (Path, "Path")
    assert legacy.return_annotation in (str, "str")
    assert "str" in (asynchub.download_model_with_test_data.__doc__ or "")
    assert "download_with_test_data" in (asynchub.download_model_with_test_data.__doc__ or "")
