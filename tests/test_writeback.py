"""start_writeback: the disk is asked to write just-written bytes at once (Linux), a refusal is
only a hint lost, never an error."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from asynchub._engine.writeback import start_writeback

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux")


@linux
def test_written_bytes_are_queued_for_the_disk(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"x" * 65536, 0)
        assert start_writeback(fd, 0, 65536) is True
    finally:
        os.close(fd)


@linux
def test_a_descriptor_that_cannot_be_synced_is_refused_quietly() -> None:
    read, write = os.pipe()
    try:
        assert start_writeback(write, 0, 4096) is False  # ESPIPE: no exception
    finally:
        os.close(read)
        os.close(write)


def test_nothing_to_write_asks_nothing(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert start_writeback(fd, 0, 0) is False
    finally:
        os.close(fd)
