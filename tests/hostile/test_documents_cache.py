"""Cached documents (manifests, cards) are only replaced by documents that validate.

* A bad ``200`` (a truncated close-delimited body, an HTML error page, an empty body, JSON
  that parses but fails validation) never replaces a good cached copy: the copy stays on disk,
  byte for byte, and is used (a warning says why); an offline hub still works afterwards.
* ``503`` with ``Retry-After`` while a good copy is cached: the copy is used at once, with one
  request and no wait.
* A manifest that is missing (404) and not cached raises onnx.hub's message, "Could not find
  manifest at <url>", followed by what to do; every error message stays short.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from asynchub import AsyncHub, HubError, ManifestNotFoundError, RetryPolicy
from asynchub import mindspore as ms
from tests.conftest import REPO_PREFIX, mirror_config
from tests.hostile.netfaults import card_text
from tests.mirror import Fault, MirrorServer

pytestmark = pytest.mark.timeout(60)

MANIFEST_REL = f"{REPO_PREFIX}/ONNX_HUB_MANIFEST.json"
MANIFEST_GLOB = "*ONNX_HUB_MANIFEST.json"
MAX_MESSAGE = 2000
UID = "test/cached"

BAD_MANIFESTS = {
    "html-error-page": b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>\n",
    "empty": b"",
    "fails-validation": json.dumps([{"model": 1, "model_path": "../../etc/passwd"}]).encode(),
    "not-a-list": b'{"error": "rate limited"}',
}


def _manifest_file(cache: Path) -> Path:
    return cache / "_manifests" / "onnx" / "models" / "main" / "ONNX_HUB_MANIFEST.json"


async def _models(config: Any) -> list[str] | HubError:
    async with AsyncHub(config) as hub:
        try:
            return sorted({m.model for m in await hub.list_models()})
        except HubError as exc:
            return exc


async def _warm(mirror: MirrorServer, cache: Path) -> tuple[list[str], bytes]:
    models = await _models(mirror_config(mirror.url, cache))
    assert isinstance(models, list), models
    return models, _manifest_file(cache).read_bytes()


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
async def test_bad_manifest_200_keeps_the_cached_copy(
    case: str, mirror: MirrorServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    models, good = await _warm(mirror, cache)
    mirror.set_file(MANIFEST_REL, BAD_MANIFESTS[case])  # a new ETag: answered 200
    assert await _models(mirror_config(mirror.url, cache)) == models
    assert _manifest_file(cache).read_bytes() == good
    assert await _models(mirror_config(mirror.url, cache, offline=True)) == models
    assert len(mirror.requests_for(MANIFEST_GLOB)) == 2


async def test_truncated_close_delimited_manifest_keeps_the_cached_copy(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    models, good = await _warm(mirror, cache)
    mirror.set_file(MANIFEST_REL, good)  # same bytes, new ETag: answered 200
    mirror.add_fault(Fault("close_delimited", path=MANIFEST_GLOB, after_bytes=200, times=None))
    assert await _models(mirror_config(mirror.url, cache)) == models
    assert _manifest_file(cache).read_bytes() == good
    assert await _models(mirror_config(mirror.url, cache, offline=True)) == models


@pytest.mark.parametrize("bad", [b"<html><body>Service unavailable</body></html>", b""])
async def test_bad_card_200_keeps_the_cached_card(bad: bytes, tmp_path: Path) -> None:
    root, cache = tmp_path / "mirror", tmp_path / "cache"
    data = os.urandom(2000)
    asset_url = "http://127.0.0.1:9/files/net.ckpt"
    good = card_text(asset_url, hashlib.sha256(data).hexdigest()).encode()
    rel = f"cards/{UID}.md"
    async with MirrorServer(root) as mirror:
        mirror.set_file(rel, good)
        config = mirror_config(mirror.url, cache, mindspore_card_url=mirror.url + "/cards/{uid}.md")
        async with AsyncHub(config) as hub:
            assert [a.url for a in (await ms.ainfo(UID, hub=hub)).assets] == [asset_url]
        cached = cache / "mindspore" / "_cards" / f"{UID}.md"
        assert cached.read_bytes() == good
        mirror.set_file(rel, bad)
        async with AsyncHub(config) as hub:
            assert [a.url for a in (await ms.ainfo(UID, hub=hub)).assets] == [asset_url]
        assert cached.read_bytes() == good
        assert len(mirror.requests_for("*.md")) == 2


async def test_manifest_503_with_retry_after_uses_the_cache_at_once(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    models, _ = await _warm(mirror, cache)
    mirror.set_file(MANIFEST_REL, _manifest_file(cache).read_bytes())
    mirror.add_fault(Fault("status", path=MANIFEST_GLOB, status=503, retry_after="600", times=None))
    patient = RetryPolicy(attempts=3, backoff_base=1.0, backoff_cap=10.0, max_retry_after=10.0)
    started = time.monotonic()
    assert await _models(mirror_config(mirror.url, cache, retry=patient)) == models
    assert time.monotonic() - started < 5.0
    assert len(mirror.requests_for(MANIFEST_GLOB)) == 2  # the warm-up, then one try


async def test_missing_manifest_message_matches_onnx_hub(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    (mirror.root / MANIFEST_REL).unlink()
    config = mirror_config(mirror.url, tmp_path / "cache")
    outcome = await _models(config)
    assert isinstance(outcome, ManifestNotFoundError), outcome
    assert isinstance(outcome, AssertionError)
    url = f"{mirror.url}/{MANIFEST_REL}"
    message = str(outcome)
    assert message.startswith(f"Could not find manifest at {url}"), message
    assert "ASYNCHUB_MANIFEST_URL" in message  # then what to do
    assert len(message) <= MAX_MESSAGE


async def test_error_page_bodies_do_not_make_long_messages(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    mirror.set_file(MANIFEST_REL, b"<html>" + b"x" * 1_000_000 + b"</html>")
    outcome = await _models(mirror_config(mirror.url, tmp_path / "cache"))
    assert isinstance(outcome, HubError), outcome
    assert len(str(outcome)) <= MAX_MESSAGE, len(str(outcome))
