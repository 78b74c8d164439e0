"""Safe extraction: good archives extract atomically; hostile or broken ones change nothing.

Every archive is built here with ``tarfile`` and ``io.BytesIO``. For each rejected archive the
whole temporary tree is compared before and after: the target, a staging directory, or any
file an attack aims at (siblings like ``<target>_evil``) must not appear.
"""

from __future__ import annotations

import gzip
import io
import multiprocessing
import os
import queue
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from asynchub._cache.archive import (
    COMPLETE_MARKER,
    ExtractLimits,
    _publish,
    extract_archive,
    find_model_dir,
)
from asynchub._exceptions import ArchiveError, ConfigError

Member = tuple[tarfile.TarInfo, bytes | None]


# --------------------------------------------------------------------------- archive building


def _model_bytes() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        "add",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _tensor_bytes() -> bytes:
    tensor = numpy_helper.from_array(np.array([1.0, 2.0], dtype=np.float32), "x")
    return bytes(tensor.SerializeToString())


def reg(name: str, data: bytes = b"data") -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def directory(name: str) -> Member:
    return special(name, tarfile.DIRTYPE)


def good_members() -> list[Member]:
    return [
        directory("mnist"),
        reg("mnist/model.onnx", _model_bytes()),
        directory("mnist/test_data_set_0"),
        reg("mnist/test_data_set_0/input_0.pb", _tensor_bytes()),
        reg("mnist/test_data_set_0/output_0.pb", _tensor_bytes()),
    ]


def build(members: list[Member], *, compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def snapshot(root: Path) -> set[str]:
    """Every path under ``root`` (links not followed)."""
    found: set[str] = set()
    for current, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(current, name), root))
    return found


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(archive path, target); the archive lives apart from the cache directory."""
    (tmp_path / "src").mkdir()
    (tmp_path / "cache").mkdir()
    return tmp_path / "src" / "mnist.tar.gz", tmp_path / "cache" / "mnist"


def assert_rejected(
    archive: Path,
    target: Path,
    blob: bytes,
    *,
    limits: ExtractLimits | None = None,
    evil: tuple[Path, ...] = (),
    match: str | None = None,
) -> ArchiveError:
    archive.write_bytes(blob)
    root = archive.parent.parent
    before = snapshot(root)
    with pytest.raises(ArchiveError) as caught:
        if limits is None:
            extract_archive(archive, target)
        else:
            extract_archive(archive, target, limits=limits)
    message = str(caught.value)
    assert str(archive) in message
    assert "unsafe or broken" in message
    if match is not None:
        assert match in message
    assert not os.path.lexists(target)
    assert os.listdir(target.parent) == [], "staging (or anything else) left in the parent"
    assert snapshot(root) == before, "something was written outside the staging directory"
    for path in evil:
        assert not os.path.lexists(path), f"{path} was created"
    return caught.value


# --------------------------------------------------------------------------- good archives


def test_good_archive_extracts_and_model_dir_is_found(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    archive.write_bytes(build(good_members()))
    assert extract_archive(archive, target) == target
    model_dir = find_model_dir(target)
    assert model_dir == target / "mnist"
    model = onnx.load(str(model_dir / "model.onnx"))
    assert model.graph.node[0].op_type == "Add"
    tensor = onnx.TensorProto()
    tensor.ParseFromString((model_dir / "test_data_set_0" / "input_0.pb").read_bytes())
    assert numpy_helper.to_array(tensor).tolist() == [1.0, 2.0]
    assert (target / COMPLETE_MARKER).is_file()
    assert (model_dir / "model.onnx").stat().st_mode & 0o777 == 0o644
    assert (model_dir / "test_data_set_0").stat().st_mode & 0o777 == 0o755
    assert sorted(os.listdir(target.parent)) == ["mnist"]  # the publish lock is deleted on release


def test_second_call_does_not_redo(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    archive.write_bytes(build(good_members()))
    extract_archive(archive, target)
    model = target / "mnist" / "model.onnx"
    stamps = (model.stat().st_mtime_ns, model.stat().st_ino, (target / COMPLETE_MARKER).stat())
    archive.unlink()  # a redo would have to read it and fail
    assert extract_archive(archive, target) == target
    assert (model.stat().st_mtime_ns, model.stat().st_ino, (target / COMPLETE_MARKER).stat()) == (
        stamps
    )


def test_plain_tar_and_dot_root_entry(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    members = [directory("."), reg("./mnist/model.onnx", _model_bytes())]
    archive.write_bytes(build(members, compress=False))
    extract_archive(archive, target)
    assert find_model_dir(target) == target / "mnist"


def test_incomplete_target_is_replaced(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    (target / "mnist").mkdir(parents=True)
    (target / "mnist" / "stale.onnx").write_bytes(b"old")
    archive.write_bytes(build(good_members()))
    extract_archive(archive, target)
    assert not (target / "mnist" / "stale.onnx").exists()
    assert (target / "mnist" / "model.onnx").read_bytes() == _model_bytes()
    assert sorted(os.listdir(target.parent)) == ["mnist"]


def test_symlink_at_target_is_replaced_not_followed(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    elsewhere = target.parent.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_bytes(b"keep")
    target.symlink_to(elsewhere, target_is_directory=True)
    archive.write_bytes(build(good_members()))
    extract_archive(archive, target)
    assert not target.is_symlink()
    assert (target / "mnist" / "model.onnx").is_file()
    assert os.listdir(elsewhere) == ["keep"]


def test_publish_loser_discards_its_staging(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    archive.write_bytes(build(good_members()))
    extract_archive(archive, target)
    inode = (target / "mnist" / "model.onnx").stat().st_ino
    staging = target.parent / ".mnist.staging-late"
    (staging / "mnist").mkdir(parents=True)
    (staging / "mnist" / "model.onnx").write_bytes(b"late")
    assert _publish(staging, target) == target
    assert not staging.exists()
    assert (target / "mnist" / "model.onnx").stat().st_ino == inode


# --------------------------------------------------------------------------- hostile members


def _cve_2025_4517_chain() -> list[Member]:
    """Nested long-named directories reached through a chain of symbolic links, a link that
    climbs out through the chain, a hard link to that link, then a file written through it."""
    long = "d" * 200
    members: list[Member] = []
    path = ""
    for step in "abcdefghijklmnop":
        members.append(directory(path + long))
        members.append(special(path + step, tarfile.SYMTYPE, long))
        path = path + step + "/"
    climb = path + "l" * 200
    members.append(special(climb, tarfile.SYMTYPE, "../" * 16))
    members.append(special("escape", tarfile.SYMTYPE, climb + "/../../mnist_evil"))
    members.append(special("escape_hl", tarfile.LNKTYPE, "escape"))
    members.append(directory("escape_hl/x"))
    members.append(reg("escape_hl/x/pwned", b"pwned"))
    return members


def _pax_name(name: str) -> Member:
    info, data = reg("placeholder")
    info.pax_headers = {"path": name}
    return info, data


HOSTILE: dict[str, tuple[Callable[[Path], list[Member]], tuple[str, ...], str]] = {
    # id: (members after the good ones, given the temp root; evil paths under root; message)
    "dotdot": (lambda r: [reg("../../evil/x")], ("evil",), "'..'"),
    "dotdot-inner": (lambda r: [reg("mnist/../../../evil/x")], ("evil",), "'..'"),
    "sibling-prefix": (lambda r: [reg("../mnist_evil/x")], ("cache/mnist_evil",), "'..'"),
    "absolute": (lambda r: [reg(f"{r}/abs_evil/x")], ("abs_evil",), "absolute"),
    "backslash": (lambda r: [reg("..\\..\\evil\\x")], ("evil",), "backslash"),
    "drive-letter": (lambda r: [reg("C:evil/x")], ("cache/C:evil",), "absolute"),
    "nul": (lambda r: [_pax_name("mnist/ok\x00/../../../evil")], ("evil",), "NUL"),
    "empty-name": (lambda r: [reg(".")], (), "empty name"),
    "marker-name": (lambda r: [reg(COMPLETE_MARKER)], (), "reserved"),
    "symlink": (
        lambda r: [special("mnist/up", tarfile.SYMTYPE, "../../evil"), reg("mnist/up/x")],
        ("evil",),
        "symbolic link",
    ),
    "symlink-absolute": (
        lambda r: [special("abs", tarfile.SYMTYPE, str(r / "evil")), reg("abs/x")],
        ("evil",),
        "symbolic link",
    ),
    "hardlink": (
        lambda r: [special("mnist/hl", tarfile.LNKTYPE, "mnist/model.onnx")],
        (),
        "hard link",
    ),
    "hardlink-outside": (
        lambda r: [special("mnist/hl", tarfile.LNKTYPE, str(r / "src" / "mnist.tar.gz"))],
        (),
        "hard link",
    ),
    "empty-named-link": (lambda r: [special("", tarfile.LNKTYPE, "")], (), "hard link"),
    "link-to-empty": (lambda r: [special("mnist/e", tarfile.LNKTYPE, "")], (), "hard link"),
    "cve-2025-4517-chain": (lambda r: _cve_2025_4517_chain(), ("cache/mnist_evil",), "link"),
    "char-device": (lambda r: [special("mnist/tty", tarfile.CHRTYPE)], (), "device"),
    "block-device": (lambda r: [special("mnist/sda", tarfile.BLKTYPE)], (), "device"),
    "fifo": (lambda r: [special("mnist/pipe", tarfile.FIFOTYPE)], (), "FIFO"),
    "unknown-type": (lambda r: [special("mnist/odd", b"Z")], (), "unsupported type"),
    "duplicate-file": (lambda r: [reg("mnist/model.onnx", b"evil")], (), "twice"),
    "duplicate-normalised": (lambda r: [reg("mnist/./model.onnx", b"evil")], (), "twice"),
    "duplicate-dir": (lambda r: [directory("mnist/")], (), "twice"),
    "file-over-dir": (lambda r: [reg("mnist/test_data_set_0", b"x")], (), "twice"),
    "dir-over-file": (lambda r: [reg("f"), directory("f"), reg("f/x")], (), "twice"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_rejected(case: str, layout: tuple[Path, Path]) -> None:
    archive, target = layout
    root = archive.parent.parent
    make, evil, match = HOSTILE[case]
    blob = build(good_members() + make(root))
    assert_rejected(archive, target, blob, evil=tuple(root / path for path in evil), match=match)


def test_hostile_archive_leaves_existing_target_alone(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    (target / "old").mkdir(parents=True)
    archive.write_bytes(build([*good_members(), reg("../mnist_evil/x")]))
    with pytest.raises(ArchiveError):
        extract_archive(archive, target)
    assert os.listdir(target) == ["old"]
    assert os.listdir(target.parent) == ["mnist"]


# --------------------------------------------------------------------------- limits and breakage


def test_gzip_bomb_is_stopped_by_ratio(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    zeros = b"\0" * (50 * 1024 * 1024)  # compresses about 1000:1, over the default 200
    blob = build([*good_members(), reg("mnist/bomb.bin", zeros)])
    assert len(blob) < 200 * 1024
    assert_rejected(archive, target, blob, match="compression bomb")


def test_header_bomb_counts_towards_ratio(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    # each PAX header stays under the 64 KiB header limit; together they are a bomb
    padded = []
    for index in range(128):
        info, data = reg(f"mnist/x{index}")
        info.pax_headers = {"comment": "a" * (60 * 1024)}
        padded.append((info, data))
    blob = build([*good_members(), *padded])
    assert_rejected(archive, target, blob, match="compression bomb")


def test_oversized_pax_header_is_refused_before_it_is_read(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    info, data = reg("mnist/x")
    info.pax_headers = {"comment": "a" * (8 * 1024 * 1024)}
    blob = build([*good_members(), (info, data)])
    assert_rejected(archive, target, blob, match="PAX extended header of 83886")


def test_too_many_members(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    blob = build([*good_members(), *(reg(f"mnist/f{i}") for i in range(5))])
    assert_rejected(archive, target, blob, limits=ExtractLimits(max_members=6), match="members")


def test_too_many_bytes(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    members = [reg("a", os.urandom(600)), reg("b", os.urandom(600))]
    limits = ExtractLimits(max_total_bytes=1000)
    assert_rejected(archive, target, build(members), limits=limits, match="1000 bytes")


def test_member_too_large(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    limits = ExtractLimits(max_member_bytes=100)
    blob = build([reg("a", os.urandom(50)), reg("b", os.urandom(101))])
    assert_rejected(archive, target, blob, limits=limits, match="larger than 100 bytes")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_gzip(keep: float, layout: tuple[Path, Path]) -> None:
    archive, target = layout
    members = [*good_members(), reg("mnist/big.bin", os.urandom(200_000))]
    blob = build(members)
    assert_rejected(archive, target, blob[: int(len(blob) * keep)])


def test_corrupt_gzip(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    blob = bytearray(build([*good_members(), reg("mnist/big.bin", os.urandom(100_000))]))
    for offset in range(len(blob) // 2, len(blob) // 2 + 64):
        blob[offset] ^= 0xFF
    assert_rejected(archive, target, bytes(blob))


def test_truncated_plain_tar(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    blob = build([*good_members(), reg("mnist/big.bin", os.urandom(100_000))], compress=False)
    assert_rejected(archive, target, blob[: len(blob) - 60_000], match="big.bin")


@pytest.mark.parametrize(
    "blob",
    [b"", os.urandom(4096), gzip.compress(os.urandom(4096)), b"BZh91AY&SY" + bytes(100)],
    ids=["empty", "random", "gzip-of-random", "bzip2"],
)
def test_not_a_tar_archive(blob: bytes, layout: tuple[Path, Path]) -> None:
    archive, target = layout
    assert_rejected(archive, target, blob)


def test_missing_archive_is_a_clear_error(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    with pytest.raises(OSError, match=r"mnist\.tar\.gz"):
        extract_archive(archive, target)
    assert os.listdir(target.parent) == []


def test_limits_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_ratio"):
        ExtractLimits(max_ratio=0)


# --------------------------------------------------------------------------- find_model_dir


def test_find_model_dir_prefers_test_data_then_depth_then_name(tmp_path: Path) -> None:
    for rel in ("b/model.onnx", "a/model.onnx", "z/deep/model.onnx"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"m")
    assert find_model_dir(tmp_path) == tmp_path / "a"
    (tmp_path / "z" / "deep" / "test_data_set_0").mkdir()
    assert find_model_dir(tmp_path) == tmp_path / "z" / "deep"
    (tmp_path / "b" / "test_data_set_1").mkdir()
    assert find_model_dir(tmp_path) == tmp_path / "b"


def test_find_model_dir_without_model(tmp_path: Path) -> None:
    (tmp_path / "x" / "test_data_set_0").mkdir(parents=True)
    (tmp_path / "x" / "link.onnx").symlink_to(tmp_path / "nowhere.onnx")
    with pytest.raises(ArchiveError, match=r"no \.onnx model"):
        find_model_dir(tmp_path)


# --------------------------------------------------------------------------- concurrency


def _racing_files() -> list[Member]:
    rng = np.random.default_rng(7)
    data = [reg(f"mnist/test_data_set_0/blob_{i}.pb", rng.bytes(64 * 1024)) for i in range(40)]
    return [*good_members(), *data]


def _assert_complete(target: Path) -> None:
    assert (target / COMPLETE_MARKER).is_file()
    for info, data in _racing_files():
        if data is not None:
            assert (target / info.name).read_bytes() == data
    leftovers = [n for n in os.listdir(target.parent) if n not in ("mnist", ".mnist.lock")]
    assert leftovers == []


def _extract_in_child(
    barrier: threading.Barrier, archive: str, target: str, results: multiprocessing.Queue[str]
) -> None:
    barrier.wait(timeout=60)
    try:
        results.put(str(extract_archive(Path(archive), Path(target))))
    except BaseException as exc:
        results.put(f"error: {exc!r}")
        raise


def test_two_processes_extract_the_same_archive(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    archive.write_bytes(build(_racing_files()))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results: multiprocessing.Queue[str] = context.Queue()
    workers = [
        context.Process(
            target=_extract_in_child, args=(barrier, str(archive), str(target), results)
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        outcomes = [results.get(timeout=90) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
    assert outcomes == [str(target), str(target)]
    assert [worker.exitcode for worker in workers] == [0, 0]
    _assert_complete(target)


def test_threads_extract_the_same_archive(layout: tuple[Path, Path]) -> None:
    archive, target = layout
    archive.write_bytes(build(_racing_files()))
    barrier = threading.Barrier(4)
    outcomes: queue.Queue[object] = queue.Queue()

    def run() -> None:
        barrier.wait(timeout=30)
        try:
            outcomes.put(extract_archive(archive, target))
        except Exception as exc:
            outcomes.put(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [outcomes.get_nowait() for _ in threads] == [target] * 4
    _assert_complete(target)
