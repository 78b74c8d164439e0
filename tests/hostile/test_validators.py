"""Validators that flap, and a CDN that ignores Range now and then, do not restart files.

* Load-balanced backends serve the same bytes under different strong ETags (one per backend,
  alternating per request) and honour ``If-Range`` (a tag that is not theirs gets the whole
  file with ``200``). A multi-chunk download must complete: the SHA-256 verifies the bytes end
  to end, so a validator change alone discards nothing.
* A CDN that answers every fifth ranged request with ``200`` and the whole body: the range is
  asked again (bounded by the retry budget); the file never starts over from byte 0.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import anyio
import pytest

from asynchub import AsyncHub, HubError, ProgressEvent
from tests.conftest import mirror_config
from tests.hostile.helpers import leftovers, write_manifest
from tests.hostile.netfaults import RawRequest, RawServer, blob_entry
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)

REL = "validated/blob/blob.bin"
FILES = "/{owner}/{repo}/{ref}/{path}"
SIZE = 1024 * 1024 + 12345


def _answer(status: str, headers: dict[str, str], body: bytes) -> bytes:
    headers = {"Connection": "close", "Content-Length": str(len(body)), **headers}
    head = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(head).encode() + body


class Backends:
    """One URL in front of backends that alternate per request."""

    def __init__(self, data: bytes, *, etags: tuple[str, ...], ignore_every: int = 0) -> None:
        self.data = data
        self.etags = etags
        self.ignore_every = ignore_every
        self.count = 0
        self.ranged = 0
        self.whole = 0  # 200 answers with the whole body

    async def __call__(self, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        etag = self.etags[self.count % len(self.etags)]
        self.count += 1
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        asked = request.range
        if_range = request.headers.get("if-range")
        honour = asked is not None and (if_range is None or if_range == etag)
        if asked is not None:
            self.ranged += 1
            if self.ignore_every and self.ranged % self.ignore_every == 0:
                honour = False
        if not honour:
            self.whole += 1
            writer.write(_answer("200 OK", headers, self.data))
            return
        assert asked is not None
        start, last = asked
        end = len(self.data) - 1 if last is None else min(last, len(self.data) - 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(self.data)}"
        writer.write(_answer("206 Partial Content", headers, self.data[start : end + 1]))


async def _download(
    backends: Backends, mirror: MirrorServer, tmp_path: Path
) -> tuple[Path | HubError, list[str]]:
    events: list[ProgressEvent] = []
    async with RawServer(backends) as server:
        config = mirror_config(mirror.url, tmp_path / "cache", file_urls=(server.url + FILES,))
        with anyio.fail_after(45):
            async with AsyncHub(config, progress=events.append) as hub:
                try:
                    outcome: Path | HubError = await hub.download("Blob")
                except HubError as exc:
                    outcome = exc
    return outcome, [e.message for e in events if e.kind == "retry"]


@pytest.mark.parametrize("backends", [2, 3])
async def test_backends_with_different_etags_for_the_same_bytes(
    backends: int, mirror: MirrorServer, tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    write_manifest(mirror, [blob_entry("Blob", REL, data)])
    server = Backends(data, etags=tuple(f'"backend-{i}-{SIZE}"' for i in range(backends)))
    outcome, retries = await _download(server, mirror, tmp_path)
    assert isinstance(outcome, Path), outcome
    assert outcome.read_bytes() == data
    assert not any("again" in m and "file" in m for m in retries), retries
    assert server.whole == 0, f"{server.whole} whole-file answers to range requests"
    assert leftovers(tmp_path / "cache") == []


async def test_cdn_ignoring_range_sometimes_does_not_restart_the_file(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    write_manifest(mirror, [blob_entry("Blob", REL, data)])
    server = Backends(data, etags=('"same"',), ignore_every=5)
    outcome, retries = await _download(server, mirror, tmp_path)
    assert isinstance(outcome, Path), outcome
    assert outcome.read_bytes() == data
    assert server.whole >= 3  # the fault was exercised
    assert not any("starting the file again" in m for m in retries), retries
    chunks = -(-SIZE // (64 * 1024))
    assert server.ranged <= chunks + 2 * server.whole + 2, (server.ranged, chunks)
    assert leftovers(tmp_path / "cache") == []
