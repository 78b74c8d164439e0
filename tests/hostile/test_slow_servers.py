"""Slow-but-alive servers: manifests, cards and unsized whole-file streams end in bounded time.

A per-read timeout is reset by every byte, so a server that is slow but not silent (the status
line one byte per second, a body dripping one byte per second, endless ``103 Early Hints``)
would hold a fetch forever. Documents and whole-file streams get the same watchdog as ranged
files: the response head must be complete within ``stall_timeout`` and the body must keep
``min_rate`` bytes/s over ``rate_window``. With a good cached copy, a failed revalidation uses
the copy at once (one try, no retries).

Bounds with the defaults (``stall_timeout=60``, ``rate_window=30``, ``min_rate=1024``): a
document with a cached copy is served from the cache within 67.5 s of a slow server's first
byte (the stall timeout plus one watchdog poll); here the tests use ``stall_timeout=3``,
``rate_window=2`` and allow 20 s of real time.

Each client runs in a child process with a hard timeout, against byte-level servers
(``tests/hostile/netfaults.py``) on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from asynchub import Hub
from asynchub import mindspore as ms
from tests.conftest import REPO_PREFIX, mirror_config
from tests.hostile.helpers import write_manifest
from tests.hostile.netfaults import (
    RawServer,
    blob_entry,
    card_text,
    drip_body,
    early_hints,
    run_netchild,
    silent,
    slow_headers,
)
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(120)

MANIFEST_PATH = "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json"
WATCHDOG = {"stall_timeout": 3.0, "rate_window": 2.0, "min_rate": 1024, "connect_timeout": 3.0}
RETRY = {"attempts": 3, "backoff_base": 0.001, "backoff_cap": 0.01}
BOUND = 20.0
HARD_TIMEOUT = 40.0
UID = "test/slow"

FAULTS = {
    "slow-headers": lambda: slow_headers(1.0),
    "drip-body": lambda: drip_body(b"[" + b" " * 100_000 + b"]", 1.0),
    "early-hints": lambda: early_hints(0.5),
    "silent": silent,
}


def _args(mirror: MirrorServer, cache: Path, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": mirror.url,
        "cache_dir": str(cache),
        "config": dict(WATCHDOG),
        "retry": dict(RETRY),
        **extra,
    }


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_slow_manifest_server_falls_back_to_the_cached_manifest(
    fault: str, mirror_root: Path, tmp_path: Path, zoo_manifest: list[dict[str, Any]]
) -> None:
    cache = tmp_path / "cache"
    expected = sorted({e["model"] for e in zoo_manifest})
    with MirrorServer(mirror_root).running() as mirror:
        with Hub(mirror_config(mirror.url, cache)) as hub:
            assert sorted({m.model for m in hub.list_models()}) == expected
        with RawServer(FAULTS[fault]()).running() as raw:
            run = run_netchild(
                _args(mirror, cache, action="list", manifest_url=raw.url + MANIFEST_PATH),
                timeout=HARD_TIMEOUT,
            )
            connections = raw.connections
    assert run.result is not None, run.stderr[-2000:]
    assert run.result["error"] is None, run.result
    assert run.result["models"] == expected
    assert run.result["elapsed"] < BOUND, run.result
    assert connections == 1, f"{connections} tries although a good copy was cached"


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_slow_card_server_falls_back_to_the_cached_card(fault: str, tmp_path: Path) -> None:
    root, cache = tmp_path / "mirror", tmp_path / "cache"
    data = os.urandom(3000)
    asset_url = "http://127.0.0.1:9/files/net.ckpt"
    card = root / "cards" / f"{UID}.md"
    card.parent.mkdir(parents=True)
    card.write_text(card_text(asset_url, hashlib.sha256(data).hexdigest()), "utf-8")
    with MirrorServer(root).running() as mirror:
        template = mirror.url + "/cards/{uid}.md"
        with Hub(mirror_config(mirror.url, cache, mindspore_card_url=template)) as hub:
            assert [a.url for a in ms.info(UID, hub=hub).assets] == [asset_url]
        with RawServer(FAULTS[fault]()).running() as raw:
            run = run_netchild(
                _args(mirror, cache, action="card", uid=UID, card_url=raw.url + "/{uid}.md"),
                timeout=HARD_TIMEOUT,
            )
            connections = raw.connections
    assert run.result is not None, run.stderr[-2000:]
    assert run.result["error"] is None, run.result
    assert run.result["assets"] == [asset_url]
    assert run.result["elapsed"] < BOUND, run.result
    assert connections == 1, f"{connections} tries although a good copy was cached"


@pytest.mark.parametrize("length", [False, True], ids=["close-delimited", "with-length"])
def test_dripping_unsized_stream_moves_to_the_next_mirror(
    length: bool, mirror_root: Path, tmp_path: Path
) -> None:
    """A file of unknown size whose first mirror answers 200 (no Range) and then drips: the
    whole-file stream is cut by the watchdog and the next mirror serves the file."""
    cache = tmp_path / "cache"
    data = os.urandom(200_000)
    rel = "validated/blob/blob.bin"
    (mirror_root / REPO_PREFIX / rel).parent.mkdir(parents=True, exist_ok=True)
    (mirror_root / REPO_PREFIX / rel).write_bytes(data)
    with MirrorServer(mirror_root).running() as mirror:
        write_manifest(mirror, [blob_entry("Blob", rel, data, sized=False)])
        dripping = drip_body(b"" if not length else b"x" * len(data), 1.0, length=length)
        with RawServer(dripping).running() as raw:
            run = run_netchild(
                _args(
                    mirror,
                    cache,
                    action="download",
                    model="Blob",
                    retry={**RETRY, "attempts": 1},
                    file_urls=[
                        raw.url + "/{owner}/{repo}/{ref}/{path}",
                        mirror.url + "/{owner}/{repo}/{ref}/{path}",
                    ],
                ),
                timeout=HARD_TIMEOUT,
            )
            tries = len(raw.requests)
        served = mirror.served_bytes("*blob.bin")
    assert run.result is not None, run.stderr[-2000:]
    assert run.result["error"] is None, run.result
    assert run.result["sha"] == hashlib.sha256(data).hexdigest()
    assert run.result["elapsed"] < BOUND, run.result
    assert served >= len(data)
    assert tries <= 10, f"{tries} requests to the dripping mirror"
