"""Bad local input gets a typed, short error: manifest names too long for the file system,
out-of-range configuration values, a relative cache directory; and ``asynchub.mindspore`` is an
attribute of ``asynchub`` like ``asynchub.hub``, without making ``import asynchub`` dearer.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import asynchub
from asynchub import AsyncHub, ConfigError, HubConfig, HubError, ManifestError
from tests.hostile.helpers import ROOT, entry, write_manifest
from tests.hostile.local_helpers import MAX_MESSAGE
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------- long names


@pytest.mark.parametrize("field", ["model_path", "model_with_data_path"])
@pytest.mark.parametrize("length", [191, 205, 255])
async def test_basename_too_long_for_the_cache_is_a_manifest_error(
    field: str,
    length: int,
    mirror: MirrorServer,
    hub_config: HubConfig,
    zoo_manifest: list[dict[str, Any]],
) -> None:
    """``<sha256>_<basename>`` must fit in one 255-byte path component (with room for the
    temporary suffixes); a longer basename used to pass validation and end in a bare
    ``OSError`` (name too long) when the file was created."""
    raw = copy.deepcopy(entry(zoo_manifest, "TinyNet", 13))
    long_name = "n" * (length - len(".tar.gz")) + ".tar.gz"
    if field == "model_path":
        raw["model_path"] = "validated/long/" + long_name.replace(".tar.gz", ".onnx").rjust(
            length, "n"
        )
    else:
        raw["metadata"]["model_with_data_path"] = "validated/long/" + long_name
    write_manifest(mirror, [raw])
    async with AsyncHub(hub_config) as hub:
        with pytest.raises(ManifestError) as caught:
            if field == "model_path":
                await hub.download("TinyNet", opset=13)
            else:
                await hub.download_model_with_test_data("TinyNet", opset=13)
    message = str(caught.value)
    assert "bytes" in message and field in message, message
    assert len(message) < MAX_MESSAGE


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ASYNCHUB_CHUNK_SIZE", "inf"),
        ("ASYNCHUB_CHUNK_SIZE", "-inf"),
        ("ASYNCHUB_CHUNK_SIZE", "nan"),
        ("ASYNCHUB_CHUNK_SIZE", "1e400"),
        ("ASYNCHUB_CHUNK_SIZE", "64"),
        ("ASYNCHUB_CHUNK_SIZE", "0"),
        ("ASYNCHUB_CHUNK_SIZE", "1e30"),
        ("ASYNCHUB_CHUNK_SIZE", "9" * 5000),
        ("ASYNCHUB_LIMIT_RATE", "inf"),
        ("ASYNCHUB_LIMIT_RATE", "0"),
        ("ASYNCHUB_MAX_CONNECTIONS", "0"),
        ("ASYNCHUB_MAX_CONNECTIONS", "1e3"),
        ("ASYNCHUB_MAX_CONNECTIONS", "100000000000"),
        ("ASYNCHUB_MAX_CONNECTIONS_PER_HOST", "-4"),
    ],
)
def test_out_of_range_environment_values_are_config_errors(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        HubConfig.from_env({var: value})
    message = str(caught.value)
    assert var in message, message
    assert "between" in message or "at least" in message or "number" in message, message
    assert len(message) < MAX_MESSAGE, len(message)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8M", 8_000_000),
        ("256K", 256_000),
        ("1G", 1000**3),
        ("16Mi", 16 * 1024**2),
        ("64K", 64_000),
    ],
)
def test_chunk_size_units_are_accepted(value: str, expected: int) -> None:
    assert HubConfig.from_env({"ASYNCHUB_CHUNK_SIZE": value}).chunk_size == expected


def test_chunk_size_error_names_the_range() -> None:
    with pytest.raises(ConfigError, match=r"ASYNCHUB_CHUNK_SIZE.*64K.*8M"):
        HubConfig.from_env({"ASYNCHUB_CHUNK_SIZE": "64"})


def test_relative_cache_dir_is_resolved_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    asynchub.set_dir("relative-cache")
    expected = str(tmp_path / "relative-cache")
    assert asynchub.get_dir() == expected
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert asynchub.get_dir() == expected
    hub = AsyncHub(HubConfig(cache_dir=Path("rel2")))
    monkeypatch.chdir(tmp_path)
    assert hub.get_dir() == str(elsewhere / "rel2")


def test_errors_from_bad_config_are_hub_errors() -> None:
    with pytest.raises(HubError):
        HubConfig.from_env({"ASYNCHUB_CHUNK_SIZE": "inf"})


# --------------------------------------------------------------------------- lazy mindspore


def _python(code: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_mindspore_is_a_lazy_attribute_of_asynchub() -> None:
    out = _python(
        "import sys, asynchub\n"
        "before = 'asynchub.mindspore' in sys.modules\n"
        "ms = asynchub.mindspore\n"
        "print(before, ms.__name__, callable(ms.info), 'mindspore' in dir(asynchub))"
    )
    assert out == "False asynchub.mindspore True True"


def test_mindspore_asset_name_too_long_to_cache_is_refused_before_download(
    tmp_path: Path,
) -> None:
    """A card may name a file of up to 255 bytes (it still parses: its metadata is readable),
    but one longer than the cache's 140-byte basename limit is refused with a clear
    ``ManifestError`` when a download is planned, not with a bare ``OSError`` later."""
    from asynchub.mindspore import parse_card
    from asynchub.mindspore._source import asset_job

    name = "w" * 200 + ".ckpt"
    card = parse_card(
        "# x\n---\nmodel-name: x\nasset:\n-\n    file-format: ckpt\n"
        f"    asset-link: https://download.example/{name}\n"
        f"    asset-sha256: {'ab' * 32}\n---\n",
        "mindspore/1.10/x",
    )
    with pytest.raises(ManifestError, match="too long to cache") as caught:
        asset_job(tmp_path, card, card.assets[0])
    assert len(str(caught.value)) < MAX_MESSAGE
    short = parse_card(
        "# x\n---\nmodel-name: x\nasset:\n-\n    file-format: ckpt\n"
        "    asset-link: https://download.example/w.ckpt\n"
        f"    asset-sha256: {'ab' * 32}\n---\n",
        "mindspore/1.10/x",
    )
    assert asset_job(tmp_path, short, short.assets[0]).dest.name == f"{'ab' * 32}_w.ckpt"
