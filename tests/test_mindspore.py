"""MindSpore Hub through asynchub: real cards (from ``../shared/data/mindspore_hub``, copied
into a temp dir with their links rewritten to a local mirror and matching assets generated),
plus hand-made cards with two assets, a wrong digest, hostile links and no assets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from asynchub import mindspore as ms
from asynchub._cache.layout import cache_path
from asynchub._cli.main import exit_code_for
from asynchub._config import HubConfig
from asynchub._exceptions import (
    ConfigError,
    IntegrityError,
    ManifestError,
    ModelNotFoundError,
    OfflineError,
)
from asynchub._hub.client import AsyncHub
from asynchub._hub.sync import Hub
from asynchub.mindspore._card import parse_card
from tests.conftest import FAST_RETRY
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
REAL_ASSETS = ROOT.parent / "shared" / "data" / "mindspore_hub" / "mshub_res" / "assets"
CARDS_PREFIX = "hub/mshub_res/assets"
KIB = 1024

#: Real cards served by the mirror (each with full SHA-256s); the ``_cn`` one has two assets.
REAL_UIDS = [
    "mindspore/1.10/alexnet_cifar10",
    "mindspore/1.10/gpt3_openweb",
    "mindspore/1.9/resnet50_imagenet2012",
    "mindspore/1.3/lenet_mnist",
    "noah-cvlab/gpu/1.0/ghostnet_int8_v1.0_oxford_pets_cn",
    "noah-cvlab/ascend/1.0/ghostnet_ssd_v1.0",
]
TWO_ASSETS = "noah-cvlab/gpu/1.0/ghostnet_int8_v1.0_oxford_pets_cn"
SHORT_DIGEST = "mindspore/2.3/hrnet_w32_imagenet2012"


@dataclass
class MsMirror:
    server: MirrorServer
    root: Path
    cache: Path
    #: uid -> generated asset bytes, in card order
    files: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def card_template(self) -> str:
        return f"{self.server.url}/{CARDS_PREFIX}/{{uid}}.md"

    def config(self, **overrides: Any) -> HubConfig:
        values: dict[str, Any] = {
            "cache_dir": self.cache,
            "mindspore_card_url": self.card_template,
            "retry": FAST_RETRY,
            "chunk_size": 64 * KIB,
            "min_split_size": 64 * KIB,
            "stall_timeout": 5.0,
            "connect_timeout": 5.0,
        }
        values.update(overrides)
        return HubConfig(**values)

    def put_card(self, uid: str, text: str) -> None:
        path = self.root / CARDS_PREFIX / f"{uid}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")

    def put_file(self, rel: str, data: bytes) -> str:
        path = self.root / "files" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{self.server.url}/files/{rel}"

    def requests(self, glob: str = "*") -> int:
        return len(self.server.requests_for(glob))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rewrite_real_card(mirror: MsMirror, uid: str, index: int) -> None:
    """Copy a real card, pointing each asset-link at the mirror and its digest at generated
    bytes (one asset is larger than the engine's chunk size)."""
    text = (REAL_ASSETS / f"{uid}.md").read_text("utf-8")
    card = parse_card(text, uid)
    datas = []
    for number, asset in enumerate(card.assets):
        size = 200 * KIB + 7 if (index, number) == (0, 0) else 1 * KIB + 31 * index + number
        data = os.urandom(size)
        new_url = mirror.put_file(f"{uid}/{asset.filename}", data)
        assert asset.url in text and asset.sha256 is not None
        text = text.replace(asset.url, new_url, 1)
        text = re.sub(asset.sha256, _sha(data), text, count=1, flags=re.IGNORECASE)
        datas.append(data)
    mirror.put_card(uid, text)
    mirror.files[uid] = datas


def _card(assets: str) -> str:
    return (
        "# test\n\n---\n\nmodel-name: test\n\nmodule-type: cv-classification\n\n"
        "train-dataset: cifar10\n\nmindspore-version: 1.10\n\n"
        f"{assets}\n\nlicense: Apache2.0\n\nsummary: a test card\n\n---\n\n## Usage\n"
    )


def _entry(url: str, sha: str, fmt: str = "ckpt") -> str:
    return f"-\n    file-format: {fmt}\n    asset-link: <{url}>  \n    asset-sha256: {sha}  \n"


@pytest.fixture
async def msm(tmp_path: Path) -> AsyncIterator[MsMirror]:
    if not REAL_ASSETS.is_dir():
        pytest.skip("the MindSpore Hub cards (../shared/data/mindspore_hub) are not present")
    server = MirrorServer(tmp_path / "mirror")
    (tmp_path / "mirror").mkdir()
    await server.start()
    mirror = MsMirror(server, tmp_path / "mirror", tmp_path / "cache")
    try:
        for index, uid in enumerate(REAL_UIDS):
            _rewrite_real_card(mirror, uid, index)
        a, b = os.urandom(3000), os.urandom(5000)
        mirror.put_card(
            "test/two",
            _card(
                "asset:\n"
                + _entry(mirror.put_file("test/two/net.ckpt", a), _sha(a))
                + _entry(mirror.put_file("test/two/net.mindir", b), _sha(b), ".MINDIR")
            ),
        )
        mirror.files["test/two"] = [a, b]
        good = os.urandom(4000)
        mirror.put_card(
            "test/wrong_sha",
            _card("asset:\n" + _entry(mirror.put_file("test/wrong/w.ckpt", good), "0" * 64)),
        )
        mirror.put_card(
            "test/file_link", _card("asset:\n" + _entry("file:///etc/passwd", "1" * 64))
        )
        mirror.put_card(
            "test/escape",
            _card("asset:\n" + _entry(f"{server.url}/files/..%2f..%2f..%2fevil", "2" * 64)),
        )
        mirror.put_card("test/no_assets", _card(""))
        mirror.put_card(SHORT_DIGEST, (REAL_ASSETS / f"{SHORT_DIGEST}.md").read_text("utf-8"))
        yield mirror
    finally:
        await server.stop()


def _expected_path(mirror: MsMirror, uid: str, index: int) -> Path:
    card = parse_card((mirror.root / CARDS_PREFIX / f"{uid}.md").read_bytes(), uid)
    asset = card.assets[index]
    assert asset.sha256 is not None
    return cache_path(mirror.cache, f"mindspore/{uid}/{asset.filename}", asset.sha256)


# --------------------------------------------------------------------------- async API


async def test_info_of_real_cards(msm: MsMirror) -> None:
    async with AsyncHub(msm.config()) as hub:
        card = await ms.ainfo("mindspore/1.10/alexnet_cifar10", hub=hub)
        assert card.model_name == "alexnet"
        assert card.mindspore_version == "1.10"
        assert card.assets[0].url.startswith(msm.server.url + "/files/")
        # A card URL works as well, as with mindspore_hub.load.
        by_url = await ms.ainfo(
            msm.card_template.replace("{uid}", "mindspore/1.10/alexnet_cifar10"), hub=hub
        )
        assert by_url.uid == card.uid and by_url.assets == card.assets
    assert (
        msm.cache / "mindspore" / "_cards" / "mindspore" / "1.10" / "alexnet_cifar10.md"
    ).is_file()


async def test_download_real_cards(msm: MsMirror) -> None:
    async with AsyncHub(msm.config()) as hub:
        for uid in REAL_UIDS:
            paths = await ms.adownload_weights(uid, hub=hub)
            assert len(paths) == len(msm.files[uid])
            for index, (path, data) in enumerate(zip(paths, msm.files[uid], strict=True)):
                assert path == _expected_path(msm, uid, index)
                assert path.read_bytes() == data
                assert path.name.startswith(_sha(data) + "_")


async def test_card_with_two_assets(msm: MsMirror) -> None:
    async with AsyncHub(msm.config()) as hub:
        paths = await ms.adownload_weights("test/two", hub=hub)
        assert [p.read_bytes() for p in paths] == msm.files["test/two"]
        assert [p.name.split("_", 1)[1] for p in paths] == ["net.ckpt", "net.mindir"]
        only = await ms.adownload_weights("test/two", file_format="mindir", hub=hub)
        assert only == paths[1:]
        real = await ms.adownload_weights(TWO_ASSETS, hub=hub)
        assert [p.name.split("_", 1)[1] for p in real] == [
            "ghostnet_1x_pets_int8.ckpt",
            "ghostnet_int8.ms",
        ]
        with pytest.raises(ManifestError, match="no 'onnx' asset"):
            await ms.adownload_weights("test/two", file_format="onnx", hub=hub)


async def test_wrong_sha_is_an_integrity_error(msm: MsMirror) -> None:
    async with AsyncHub(msm.config()) as hub:
        with pytest.raises(IntegrityError):
            await ms.adownload_weights("test/wrong_sha", hub=hub)
    final = cache_path(msm.cache, "mindspore/test/wrong_sha/w.ckpt", "0" * 64)
    assert not final.exists()
    assert msm.requests("/files/test/wrong/*") >= 1


async def test_hostile_cards_are_refused_before_any_download(msm: MsMirror) -> None:
    async with AsyncHub(msm.config()) as hub:
        with pytest.raises(ManifestError, match="asset-link"):
            await ms.ainfo("test/file_link", hub=hub)
        with pytest.raises(ManifestError, match="path separator"):
            await ms.adownload_weights("test/escape", hub=hub)
        with pytest.raises(ConfigError):
            await ms.ainfo("../../etc/passwd", hub=hub)
        with pytest.raises(ConfigError):
            await ms.ainfo("https://evil.example/not/a/card.md", hub=hub)
    assert msm.requests("/files/*") == 0
    assert not (msm.root.parent / "evil").exists()
    assert not (msm.cache.parent / "evil").exists()


async def test_unverifiable_and_empty_cards(msm: MsMirror) -> None:
    async with AsyncHub(msm.config()) as hub:
        card = await ms.ainfo(SHORT_DIGEST, hub=hub)
        assert card.assets[0].sha256_prefix == "e616cdcb"
        with pytest.raises(IntegrityError, match="short digest"):
            await ms.adownload_weights(SHORT_DIGEST, hub=hub)
        with pytest.raises(ManifestError, match="no asset files"):
            await ms.adownload_weights("test/no_assets", hub=hub)
        with pytest.raises(ModelNotFoundError, match="No MindSpore Hub card"):
            await ms.ainfo("mindspore/1.10/does_not_exist", hub=hub)
    assert not (msm.cache / "mindspore" / SHORT_DIGEST).exists()
    assert not (msm.cache / "mindspore" / "test" / "no_assets").exists()


async def test_offline_after_first_use(msm: MsMirror) -> None:
    uid = "mindspore/1.10/alexnet_cifar10"
    async with AsyncHub(msm.config()) as hub:
        first = await ms.adownload_weights(uid, hub=hub)
    before = len(msm.server.requests)
    async with AsyncHub(msm.config(offline=True)) as offline:
        card = await ms.ainfo(uid, hub=offline)
        again = await ms.adownload_weights(uid, hub=offline)
        assert again == first and card.model_name == "alexnet"
        with pytest.raises(OfflineError):
            await ms.ainfo("mindspore/1.10/gpt3_openweb", hub=offline)
    assert len(msm.server.requests) == before


async def test_card_is_revalidated_and_force_reload_downloads_again(msm: MsMirror) -> None:
    uid = "mindspore/1.3/lenet_mnist"
    async with AsyncHub(msm.config()) as hub:
        [path] = await ms.adownload_weights(uid, hub=hub)
    async with AsyncHub(msm.config()) as hub:
        await ms.ainfo(uid, hub=hub)
        card_requests = msm.server.requests_for(f"/{CARDS_PREFIX}/{uid}.md")
        assert card_requests[-1].headers.get("If-None-Match")  # a conditional GET
        assert card_requests[-1].status == 304
        files_before = msm.requests("/files/*")
        assert await ms.adownload_weights(uid, hub=hub) == [path]
        assert msm.requests("/files/*") == files_before  # cached and verified: no request
        assert await ms.adownload_weights(uid, force_reload=True, hub=hub) == [path]
        assert msm.requests("/files/*") > files_before


async def test_list_models_over_uids(msm: MsMirror) -> None:
    async with AsyncHub(msm.config()) as hub:
        cards = await ms.alist_models(REAL_UIDS, hub=hub)
        assert [c.uid for c in cards] == REAL_UIDS
        cv = await ms.alist_models(REAL_UIDS, module_type="CV", hub=hub)
        assert {c.uid for c in cv} == {
            "mindspore/1.10/alexnet_cifar10",
            "mindspore/1.9/resnet50_imagenet2012",
            "mindspore/1.3/lenet_mnist",
            "noah-cvlab/gpu/1.0/ghostnet_int8_v1.0_oxford_pets_cn",
            "noah-cvlab/ascend/1.0/ghostnet_ssd_v1.0",
        }
        ten = await ms.alist_models(REAL_UIDS, version="1.10", text="ALEX", hub=hub)
        assert [c.uid for c in ten] == ["mindspore/1.10/alexnet_cifar10"]
        with pytest.raises(ModelNotFoundError):
            await ms.alist_models([*REAL_UIDS, "nope/none"], hub=hub)
        with pytest.raises(ConfigError, match="either uids"):
            await ms.alist_models(hub=hub)


async def test_list_models_over_a_local_checkout(tmp_path: Path) -> None:
    if not REAL_ASSETS.is_dir():
        pytest.skip("the MindSpore Hub cards (../shared/data/mindspore_hub) are not present")
    # Offline and with an unreachable card URL: a checkout needs no network.
    config = HubConfig(cache_dir=tmp_path / "c", offline=True, mindspore_card_url="http://0/{uid}")
    async with AsyncHub(config) as hub:
        everything = await ms.alist_models(cards_dir=REAL_ASSETS.parents[1], hub=hub)
        assert len(everything) == 2915
        cifar = await ms.alist_models(
            cards_dir=REAL_ASSETS, version="1.10", module_type="cv", dataset="CIFAR10", hub=hub
        )
        assert cifar and all(c.uid.startswith("mindspore/1.10/") for c in cifar)
        assert "mindspore/1.10/alexnet_cifar10" in {c.uid for c in cifar}
        assert all(c.train_dataset and c.train_dataset.lower() == "cifar10" for c in cifar)
        with pytest.raises(ConfigError):
            await ms.alist_models(cards_dir=tmp_path / "missing", hub=hub)


async def test_prefetch_reports_each_uid(msm: MsMirror) -> None:
    async with AsyncHub(msm.config()) as hub:
        selection = [*REAL_UIDS, "test/wrong_sha", "test/file_link", "nope/none", "test/two"]
        result = await ms.aprefetch(selection, hub=hub)
        assert not result
        assert set(result.ok) == {*REAL_UIDS, "test/two"}
        assert isinstance(result.failed["test/wrong_sha"], IntegrityError)
        assert isinstance(result.failed["test/file_link"], ManifestError)
        assert isinstance(result.failed["nope/none"], ModelNotFoundError)
        for uid in REAL_UIDS:
            assert [p.read_bytes() for p in result.ok[uid]] == msm.files[uid]
        # Cards from list_models are accepted too (no second card fetch needed).
        cards = await ms.alist_models(REAL_UIDS[:2], hub=hub)
        assert (await ms.aprefetch(cards, hub=hub)).ok.keys() == set(REAL_UIDS[:2])


# --------------------------------------------------------------------------- sync API


def test_sync_api_with_default_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not REAL_ASSETS.is_dir():
        pytest.skip("the MindSpore Hub cards (../shared/data/mindspore_hub) are not present")
    server = MirrorServer(tmp_path / "mirror")
    (tmp_path / "mirror").mkdir()
    with server.running():
        mirror = MsMirror(server, tmp_path / "mirror", tmp_path / "cache")
        _rewrite_real_card(mirror, "mindspore/1.10/alexnet_cifar10", 1)
        monkeypatch.setenv("ASYNCHUB_MINDSPORE_CARD_URL", mirror.card_template)
        monkeypatch.setenv("ASYNCHUB_CACHE_DIR", str(mirror.cache))
        assert ms.info("mindspore/1.10/alexnet_cifar10").model_name == "alexnet"
        [path] = ms.download_weights("mindspore/1.10/alexnet_cifar10")
        assert path.read_bytes() == mirror.files["mindspore/1.10/alexnet_cifar10"][0]
        assert path.is_relative_to(mirror.cache / "mindspore" / "mindspore" / "1.10")
        assert [c.uid for c in ms.list_models(["mindspore/1.10/alexnet_cifar10"])] == [
            "mindspore/1.10/alexnet_cifar10"
        ]
        assert ms.prefetch(["mindspore/1.10/alexnet_cifar10"]).ok
        with Hub(mirror.config(offline=True)) as hub:  # an explicit hub
            assert ms.download_weights("mindspore/1.10/alexnet_cifar10", hub=hub) == [path]


# --------------------------------------------------------------------------- CLI


async def _cli(msm: MsMirror, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "ASYNCHUB_MINDSPORE_CARD_URL": msm.card_template,
        "ASYNCHUB_DISABLE_PROGRESS_BARS": "1",
    }
    result = await anyio.run_process(
        [sys.executable, "-m", "asynchub", "--cache-dir", str(msm.cache), *args],
        env=env,
        check=False,
        cwd=ROOT,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_cli_json(msm: MsMirror) -> None:
    uid = "mindspore/1.10/alexnet_cifar10"
    code, out, err = await _cli(msm, "mindspore", "info", uid, "--json")
    assert code == 0, err
    assert json.loads(out)["model_name"] == "alexnet"

    code, out, err = await _cli(msm, "mindspore", "download", uid, "--json")
    assert code == 0, err
    files = json.loads(out)["files"]
    assert [Path(f).read_bytes() for f in files] == msm.files[uid]
    assert all(Path(f).is_relative_to(msm.cache / "mindspore" / uid) for f in files)

    code, out, err = await _cli(msm, "mindspore", "list", *REAL_UIDS, "--version", "1.10", "--json")
    assert code == 0, err
    assert [c["uid"] for c in json.loads(out)] == [
        "mindspore/1.10/alexnet_cifar10",
        "mindspore/1.10/gpt3_openweb",
    ]

    code, out, err = await _cli(
        msm, "mindspore", "prefetch", "test/two", "test/wrong_sha", "--json"
    )
    assert code == 1
    report = json.loads(out)
    assert list(report["ok"]) == ["test/two"] and list(report["failed"]) == ["test/wrong_sha"]

    code, out, err = await _cli(msm, "--offline", "mindspore", "info", "test/two")
    assert code == 0 and "test/two: test" in out  # from the card cache

    code, out, err = await _cli(msm, "mindspore", "info", "test/file_link")
    assert code == exit_code_for(ManifestError("x")) != 0
    assert "asset-link" in err and not out
