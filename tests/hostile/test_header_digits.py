"""Headers with Unicode digits are invalid headers, never a bare ``ValueError``.

``"²".isdigit()`` and ``"١٢".isdigit()`` are true but ``int("²")`` fails (and ``int("١٢")``
reads Arabic-Indic digits, which HTTP does not allow): numbers in ``Retry-After``,
``Content-Range`` and ``Content-Length`` are read as ASCII digits only. A ``Retry-After`` that
is not a number is ignored (the policy's own back-off applies); a ``Content-Range`` that is
not ASCII is a :class:`ProtocolError` (retried, then the next mirror). The healthy second
mirror serves the file, a cached manifest is used, the CLI prints one line and no traceback.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asynchub import AsyncHub, HubConfig, HubError, ProtocolError
from asynchub._engine.ranged import parse_content_range
from asynchub._engine.retry import parse_retry_after
from tests.conftest import REPO_PREFIX, mirror_config
from tests.hostile.helpers import write_manifest
from tests.hostile.netfaults import RawServer, blob_entry, fixed, ranged_file
from tests.mirror import Fault, MirrorServer

pytestmark = pytest.mark.timeout(60)

FILES = "/{owner}/{repo}/{ref}/{path}"
MANIFEST = "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json"
REL = "validated/blob/blob.bin"
UNICODE_NUMBERS = ["²", "¹²", "١٢", "１２", "3²", "𝟙"]  # noqa: RUF001


@pytest.mark.parametrize("value", UNICODE_NUMBERS)
def test_retry_after_reads_ascii_digits_only(value: str) -> None:
    assert parse_retry_after(value, now=0.0) is None
    assert parse_retry_after("12", now=0.0) == 12.0


@pytest.mark.parametrize("value", UNICODE_NUMBERS)
def test_content_range_reads_ascii_digits_only(value: str) -> None:
    for header in (f"bytes 0-{value}/100", f"bytes {value}-5/100", f"bytes 0-5/{value}"):
        with pytest.raises(ProtocolError):
            parse_content_range(header, "http://127.0.0.1/x")
    assert parse_content_range("bytes 0-5/100", "http://127.0.0.1/x") == (0, 5, 100)


@pytest.fixture
def blob(mirror_root: Path) -> bytes:
    data = os.urandom(300_000)
    (mirror_root / REPO_PREFIX / REL).parent.mkdir(parents=True, exist_ok=True)
    (mirror_root / REPO_PREFIX / REL).write_bytes(data)
    return data


@pytest.fixture
async def blob_mirror(mirror: MirrorServer, blob: bytes) -> AsyncIterator[MirrorServer]:
    write_manifest(mirror, [blob_entry("Blob", REL, blob)])
    yield mirror


def _two_mirrors(first: str, second: MirrorServer, cache: Path, **extra: Any) -> HubConfig:
    return mirror_config(second.url, cache, file_urls=(first + FILES, second.url + FILES), **extra)


async def _download(config: HubConfig) -> Path | HubError:
    async with AsyncHub(config) as hub:
        try:
            return await hub.download("Blob")
        except HubError as exc:
            return exc


@pytest.mark.parametrize("value", ["²", "١٢"])
async def test_retry_after_with_unicode_digits_then_the_next_mirror(
    value: str, blob_mirror: MirrorServer, blob: bytes, tmp_path: Path
) -> None:
    async with RawServer(fixed("503 Service Unavailable", {"Retry-After": value})) as bad:
        outcome = await _download(_two_mirrors(bad.url, blob_mirror, tmp_path / "cache"))
        assert len(bad.requests) >= 1
    assert isinstance(outcome, Path), outcome
    assert hashlib.sha256(outcome.read_bytes()).digest() == hashlib.sha256(blob).digest()
    assert blob_mirror.served_bytes("*blob.bin") >= len(blob)


@pytest.mark.parametrize("where", ["start", "end", "total"])
async def test_content_range_with_unicode_digits_then_the_next_mirror(
    where: str, blob_mirror: MirrorServer, blob: bytes, tmp_path: Path
) -> None:
    def rewrite(start: int, end: int, total: int) -> str:
        parts = {"start": str(start), "end": str(end), "total": str(total)}
        parts[where] = parts[where][:-1] + "²"
        return f"bytes {parts['start']}-{parts['end']}/{parts['total']}"

    async with RawServer(ranged_file(blob, content_range=rewrite)) as bad:
        outcome = await _download(_two_mirrors(bad.url, blob_mirror, tmp_path / "cache"))
        assert len(bad.requests) >= 1
    assert isinstance(outcome, Path), outcome
    assert outcome.read_bytes() == blob


async def test_content_length_with_unicode_digits_is_a_typed_error(
    blob_mirror: MirrorServer, blob: bytes, tmp_path: Path
) -> None:
    async with RawServer(fixed("200 OK", {"Content-Length": "¹²"}, b"x" * 12)) as bad:
        outcome = await _download(_two_mirrors(bad.url, blob_mirror, tmp_path / "cache"))
    assert isinstance(outcome, Path), outcome
    assert outcome.read_bytes() == blob


async def test_manifest_retry_after_with_unicode_digits_uses_the_cached_manifest(
    blob_mirror: MirrorServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    async with AsyncHub(mirror_config(blob_mirror.url, cache)) as hub:
        assert [m.model for m in await hub.list_models()] == ["Blob"]
    async with RawServer(fixed("503 Service Unavailable", {"Retry-After": "²"})) as bad:
        config = mirror_config(blob_mirror.url, cache, manifest_url=bad.url + MANIFEST)
        async with AsyncHub(config) as hub:
            assert [m.model for m in await hub.list_models()] == ["Blob"]
        assert len(bad.requests) >= 1


def test_cli_prints_one_line_and_no_traceback(
    mirror_root: Path, blob: bytes, tmp_path: Path
) -> None:
    with MirrorServer(mirror_root).running() as good:
        write_manifest(good, [blob_entry("Blob", REL, blob)])
        good.add_fault(Fault("status", path="*blob.bin", status=503, retry_after="²", times=None))
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHUB_")}
        env.update(
            ASYNCHUB_MANIFEST_URL=good.url + MANIFEST,
            ASYNCHUB_FILE_URLS=good.url + FILES,
            ASYNCHUB_CACHE_DIR=str(tmp_path / "cache"),
            ASYNCHUB_DISABLE_PROGRESS_BARS="1",
        )
        proc = subprocess.run(
            [sys.executable, "-m", "asynchub", "download", "Blob"],
            env=env,
            capture_output=True,
            text=True,
            timeout=50,
            stdin=subprocess.DEVNULL,
        )
    assert proc.returncode not in (0, 1), (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "ValueError" not in proc.stderr
    assert "HTTP 503" in proc.stderr
