"""Archive headers are bounded like member data: a test-data archive whose GNU long-name (or
PAX) header announces hundreds of MiB is refused after reading a bounded prefix of it, with a
short error, in a child process whose peak memory is measured.

The 300 MiB long name below compresses ~130:1 (under the extractor's 200:1 bomb limit), so
only the header bound can stop it: before, the whole name was read into memory (1.3 GB RSS)
and echoed in a 314-million-character error.
"""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_PREFIX
from tests.hostile.helpers import entry, final_archive, leftovers, with_archive, write_manifest
from tests.hostile.local_helpers import MAX_MESSAGE, MB, run_local
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(120)

REL = "validated/vision/classification/tinynet/model/tinynet-13-headers.tar.gz"
HUGE = 300 * 1024 * 1024
#: Peak RSS allowed for the child (it imports onnx and the async core: ~60 MB).
RSS_BOUND = 200 * MB


def _low_entropy(size: int, out: Any) -> None:
    """``size`` bytes of mostly ``a`` with a random letter every 384 bytes (~130:1 in gzip)."""
    rng = random.Random(1)
    block = bytearray(b"a" * (1 << 20))
    for start in range(0, size, len(block)):
        for pos in range(0, len(block), 384):
            block[pos] = rng.randrange(98, 123)
        out.write(bytes(block[: min(len(block), size - start)]))


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(tarfile.GNU_FORMAT)


def huge_header_archive(kind: bytes) -> bytes:
    """A gzip tar whose first header is a ``kind`` extension header of ``HUGE`` bytes,
    followed by a small regular member."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6) as gz:
        if kind == tarfile.XHDTYPE:
            gz.write(_header("././@PaxHeader", kind, HUGE))
            record = f"{HUGE} path=".encode()
            gz.write(record)
            _low_entropy(HUGE - len(record) - 1, gz)
            gz.write(b"\n")
        else:
            gz.write(_header("././@LongLink", kind, HUGE))
            _low_entropy(HUGE, gz)
        gz.write(b"\0" * (-HUGE % 512))
        gz.write(_header("mnist/model.onnx", tarfile.REGTYPE, 4))
        gz.write(b"abcd" + b"\0" * 508 + b"\0" * 1024)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["gnu-longname", "gnu-longlink", "pax"])
def test_huge_extension_header_is_refused_with_bounded_memory(
    kind: str, mirror_root: Path, zoo_manifest: list[dict[str, Any]], tmp_path: Path
) -> None:
    code = {
        "gnu-longname": tarfile.GNUTYPE_LONGNAME,
        "gnu-longlink": tarfile.GNUTYPE_LONGLINK,
        "pax": tarfile.XHDTYPE,
    }[kind]
    blob = huge_header_archive(code)
    assert len(blob) < 4 * MB
    (mirror_root / REPO_PREFIX / REL).write_bytes(blob)
    raw = with_archive(entry(zoo_manifest, "TinyNet", 13), REL, blob)
    cache = tmp_path / "cache"
    with MirrorServer(mirror_root).running() as server:
        write_manifest(server, [raw])
        run = run_local(
            "test-data",
            {"base_url": server.url, "cache_dir": str(cache), "model": "TinyNet", "opset": 13},
            timeout=90,
        )
    assert run.result is not None, run.stderr[-2000:]
    result = run.result
    assert result["error"] == "ArchiveError", result
    assert "HubError" in result["mro"]
    assert len(result["message"]) < MAX_MESSAGE, len(result["message"])
    assert "header" in result["message"]
    assert result["maxrss"] < RSS_BOUND, f"peak RSS {result['maxrss'] / MB:.0f} MB"
    archive = final_archive(cache, raw)
    assert archive.is_file()
    assert not archive.with_name(archive.name.removesuffix(".tar.gz")).exists()
    assert leftovers(cache) == []


@pytest.mark.parametrize("count", [9, 2000])
def test_chains_of_extension_headers_are_bounded(count: int, tmp_path: Path) -> None:
    """Many small long-name headers in front of one member: refused after a few, with a short
    ``ArchiveError`` (a long chain used to end in a bare ``RecursionError``)."""
    from asynchub import ArchiveError
    from asynchub._cache.archive import extract_archive

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz:
        for index in range(count):
            name = f"mnist/name-{index}".encode().ljust(512, b"\0")
            gz.write(_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 512) + name)
        gz.write(_header("mnist/model.onnx", tarfile.REGTYPE, 4))
        gz.write(b"abcd" + b"\0" * 508 + b"\0" * 1024)
    archive = tmp_path / "chain.tar.gz"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(ArchiveError, match="extension headers") as caught:
        extract_archive(archive, tmp_path / "out")
    assert len(str(caught.value)) < MAX_MESSAGE
    assert not (tmp_path / "out").exists()
