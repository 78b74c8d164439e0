"""MindSpore Hub asset cards: the parser on every real card of the hub (skipped when
``../shared/data/mindspore_hub`` is absent) and on small and hostile cards."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from asynchub._exceptions import ConfigError, ManifestError
from asynchub.mindspore._card import MAX_CARD_BYTES, Asset, AssetCard, normalize_uid, parse_card

REAL_CARDS = (
    (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mindspore_hub")
    / "mshub_res"
    / "assets"
)
#: Cards in the hub snapshot of ``../shared/data/mindspore_hub`` (see its SOURCE.txt).
REAL_CARD_COUNT = 2915

SHA = "f5f74f1bff1de9c46da58fb0b13fd81dfa0208cc49c3108dadf2f313eac349f2"
SHA2 = "e" * 64


def card(assets: str, *, extra: str = "", title: str = "# alexnet\n\n") -> str:
    """A card shaped like the real ones (blank lines between keys, trailing spaces)."""
    return (
        f"{title}---\n\nmodel-name: alexnet\n\nbackbone-name: alexnet\n\n"
        "module-type: cv-classification\n\nfine-tunable: True\n\nmodel-version: 1.10\n\n"
        "train-dataset: cifar10\n\nevaluation: acc88.0\n\n"
        "repo-link: <https://gitee.com/mindspore/models/tree/r1.10/official/cv/alexnet>\n\n"
        f"used-for: inference\n\nmindspore-version: 1.10\n\n{assets}\n\n{extra}"
        "license: Apache2.0\n\nsummary: alexnet is used for cv\n\n---\n\n## Introduction\n\n"
        "---\n\ntext after a horizontal rule\n"
    )


def one_asset(
    link: str = "<https://download.mindspore.cn/models/r1.10/alexnet.ckpt>",
    sha: str = SHA,
    fmt: str = "ckpt",
) -> str:
    return f"asset:\n\n-\n    file-format: {fmt}\n    asset-link: {link}\n    asset-sha256: {sha}"


def real_cards() -> list[tuple[str, Path]]:
    if not REAL_CARDS.is_dir():
        pytest.skip("the MindSpore Hub cards (../shared/data/mindspore_hub) are not present")
    return [
        (p.relative_to(REAL_CARDS).with_suffix("").as_posix(), p)
        for p in sorted(REAL_CARDS.rglob("*.md"))
    ]


# --------------------------------------------------------------------------- real cards


def test_every_real_card_parses() -> None:
    cards = [parse_card(path.read_bytes(), uid) for uid, path in real_cards()]
    assert len(cards) == REAL_CARD_COUNT
    formats = collections.Counter(a.file_format for c in cards for a in c.assets)
    # The distribution of file formats over all assets of the hub.
    assert formats == {"ckpt": 2881, "mslite": 18}
    assets = [a for c in cards for a in c.assets]
    assert sum(a.sha256 is not None for a in assets) == 2772
    assert sum(a.sha256_prefix is not None for a in assets) == 118  # MindCV-style short digests
    assert sum(a.sha256 is None and a.sha256_prefix is None for a in assets) == 9
    assert collections.Counter(len(c.assets) for c in cards) == {1: 2877, 2: 11, 0: 27}
    assert all(a.url.startswith("https://") for a in assets)
    assert all(a.sha256 is None or len(a.sha256) == 64 for a in assets)
    assert all(c.model_name for c in cards)


def test_real_card_fields() -> None:
    paths = dict(real_cards())
    alexnet = parse_card(
        paths["mindspore/1.10/alexnet_cifar10"].read_bytes(), "mindspore/1.10/alexnet_cifar10"
    )
    assert alexnet.model_name == "alexnet"
    assert alexnet.mindspore_version == "1.10"  # text, not the float 1.1 YAML would give
    assert alexnet.module_type == "cv-classification"
    assert alexnet.train_dataset == "cifar10"
    assert alexnet.evaluation == "acc88.0"
    assert alexnet.license == "Apache2.0"
    assert alexnet.assets == (
        Asset(
            "ckpt",
            "https://download.mindspore.cn/models/r1.10/"
            "alexnet_ascend_v1100_cifar10_official_cv_acc88.0.ckpt",
            SHA,
            "alexnet_ascend_v1100_cifar10_official_cv_acc88.0.ckpt",
        ),
    )
    assert alexnet.raw["repo-link"].startswith("<https://gitee.com/")
    # A Chinese card (full-width colons, translated keys, CRLF, '.ckpt' formats, two assets).
    uid = "noah-cvlab/gpu/1.0/ghostnet_int8_v1.0_oxford_pets_cn"
    cn = parse_card(paths[uid].read_bytes(), uid)
    assert cn.model_name == "GhostNet_INT8"
    assert [a.file_format for a in cn.assets] == ["ckpt", "mslite"]
    assert [a.filename for a in cn.assets] == ["ghostnet_1x_pets_int8.ckpt", "ghostnet_int8.ms"]
    assert all(a.verifiable for a in cn.assets)
    # A MindCV card with a short digest: readable, but not verifiable.
    hrnet = parse_card(
        paths["mindspore/2.3/hrnet_w32_imagenet2012"].read_bytes(),
        "mindspore/2.3/hrnet_w32_imagenet2012",
    )
    assert hrnet.assets[0].sha256 is None
    assert hrnet.assets[0].sha256_prefix == "e616cdcb"
    assert not hrnet.assets[0].verifiable


# --------------------------------------------------------------------------- small cards


def test_two_assets_and_dash_forms() -> None:
    assets = (
        f"asset:\n\n- file-format: ckpt  \n  asset-link: https://h.example/a/m.ckpt  \n"
        f"  asset-sha256: {SHA}  \n\n-\n    file-format: .MINDIR\n"
        f"    asset-link: <http://h.example/b/m.mindir>\n    asset-sha256: {SHA2.upper()}"
    )
    parsed = parse_card(card(assets), "pub/1.0/m")
    assert [a.file_format for a in parsed.assets] == ["ckpt", "mindir"]
    assert [a.url for a in parsed.assets] == [
        "https://h.example/a/m.ckpt",
        "http://h.example/b/m.mindir",
    ]
    assert [a.sha256 for a in parsed.assets] == [SHA, SHA2]
    assert parsed.to_dict()["assets"][1]["filename"] == "m.mindir"
    assert isinstance(parsed, AssetCard)


def test_metadata_only_card_and_mapping_evaluation() -> None:
    text = card("", extra="evaluation2:\n  top1: 0.9\n  top5: 0.99\n")
    parsed = parse_card(text, "pub/m")
    assert parsed.assets == ()
    assert parsed.raw["evaluation2"] == {"top1": "0.9", "top5": "0.99"}


def test_repeated_link_without_digest_is_two_unverifiable_assets() -> None:
    assets = (
        "asset:\n- file-format: ckpt\n  asset-link: https://h.example/vit.ckpt\n"
        "  asset-link: https://h.example/swin.ckpt"
    )
    parsed = parse_card(card(assets), "pub/m")
    assert [a.filename for a in parsed.assets] == ["vit.ckpt", "swin.ckpt"]
    assert not any(a.verifiable for a in parsed.assets)


def test_percent_encoded_file_name() -> None:
    parsed = parse_card(card(one_asset("https://h.example/a/my%20model.ckpt")), "pub/m")
    assert parsed.assets[0].filename == "my model.ckpt"


# --------------------------------------------------------------------------- uids


@pytest.mark.parametrize(
    ("given", "uid"),
    [
        ("mindspore/1.10/alexnet_cifar10", "mindspore/1.10/alexnet_cifar10"),
        (
            "https://raw.githubusercontent.com/mindspore-ai/hub/master/mshub_res/assets/"
            "mindspore/1.10/alexnet_cifar10.md",
            "mindspore/1.10/alexnet_cifar10",
        ),
        (
            "https://gitee.com/mindspore/hub/blob/master/mshub_res/assets/noah-cvlab/gpu/1.0/"
            "ghostnet_v1.0_oxford_pets.md",
            "noah-cvlab/gpu/1.0/ghostnet_v1.0_oxford_pets",
        ),
    ],
)
def test_normalize_uid(given: str, uid: str) -> None:
    assert normalize_uid(given) == uid


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../etc/passwd",
        "mindspore/../../x",
        "mindspore/./x",
        "/abs/uid",
        "a//b",
        "a\\b",
        "a b",
        "a/b\x00",
        "_cards/x",
        "file:///mshub_res/assets/x.md",
        "https://h.example/mshub_res/assets/x.txt",
        "https://h.example/other/x.md",
        "https://h.example/mshub_res/assets/%2e%2e/x.md",
    ],
)
def test_bad_uids_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        normalize_uid(bad)


# --------------------------------------------------------------------------- hostile cards


HOSTILE = [
    (card(one_asset("<file:///etc/passwd>")), "asset-link"),
    (card(one_asset("ftp://h.example/m.ckpt")), "asset-link"),
    (card(one_asset("javascript:alert(1)")), "asset-link"),
    (card(one_asset("https:///m.ckpt")), "asset-link"),
    (card(one_asset("https://user:pw@h.example/m.ckpt")), "asset-link"),
    (card(one_asset("https://h.example/a b.ckpt")), "asset-link"),
    (card(one_asset("https://h.example:99999/m.ckpt")), "asset-link"),
    (card(one_asset("https://h.example/models/")), "asset-link"),
    (card(one_asset("https://h.example/models/..")), "asset-link"),
    (card(one_asset("https://h.example/models/%2e%2e")), "asset-link"),
    (card(one_asset("https://h.example/a/..%2f..%2fetc%2fpasswd")), "asset-link"),
    (card(one_asset("https://h.example/a/..%5cevil.ckpt")), "asset-link"),
    (card(one_asset("https://h.example/a/x%00.ckpt")), "asset-link"),
    (card(one_asset("https://h.example/" + "a" * 256 + ".ckpt")), "asset-link"),
    (card(one_asset(sha=SHA[:63])), "asset-sha256"),
    (card(one_asset(sha=SHA + "0")), "asset-sha256"),
    (card(one_asset(sha="g" * 64)), "asset-sha256"),
    (card(one_asset(sha="abc")), "asset-sha256"),
    (card(one_asset(fmt="")), "file-format"),
    (card(one_asset(fmt="ckpt; rm -rf")), "file-format"),
    (card("asset:\n"), "asset"),
    (card("asset: model.ckpt"), "asset"),
    (card("asset:\n- file-format: ckpt\n  asset-sha256: " + SHA), "asset-link"),
    (card("asset:\n- asset-link: https://h.example/m.ckpt\n  asset-sha256: " + SHA), "file-format"),
    (
        card(
            "asset:\n- file-format: ckpt\n  asset-link: https://h.example/a.ckpt\n"
            "  asset-link: https://h.example/b.ckpt\n  asset-sha256: " + SHA
        ),
        "asset-link",
    ),
    (
        card(
            "asset:\n- file-format: ckpt\n  asset-link: https://h.example/a.ckpt\n"
            f"  asset-sha256: {SHA}\n  asset-sha256: {SHA2}"
        ),
        "asset-sha256",
    ),
    (card(one_asset(), extra="model-name: again\n"), "model-name"),
    (card(one_asset()).replace("model-name: alexnet", "model-name:"), "model-name"),
    (card(one_asset()).replace("model-name: alexnet\n", ""), "model-name"),
    (card(one_asset()).replace("license: Apache2.0", "license:\n- name: Apache2.0"), "license"),
]


@pytest.mark.parametrize(
    ("text", "field"), HOSTILE, ids=[f"{n}-{field}" for n, (_, field) in enumerate(HOSTILE)]
)
def test_hostile_cards_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_card(text, "evil/1.0/card")
    message = str(info.value)
    assert "'evil/1.0/card'" in message
    assert f"'{field}'" in message


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("# t\n---\nmodel-name: x\n" + one_asset() + "\n", "never closed"),
        ("# t\nmodel-name: x\n---\n---\n", "before the front matter"),
        ("<html><body>Not Found</body></html>", "before the front matter"),
        ("", "no opening"),
        ("# t\n---\nmodel-name: x\nthis is not a key value line\n---\n", "line 4"),
        ("# t\n---\nmodel-name: x\n\tlicense: x\n---\n", "tab"),
        ("# t\n---\nmodel-name: x\n  stray: x\n---\n", "belongs to no key"),
        ("# t\n---\nmodel-name: x\n- item\n---\n", "outside a list"),
        ("# t\n---\nmodel-name: x\nsummary: a\x1bb\n---\n", "control character"),
    ],
)
def test_broken_front_matter(text: str, what: str) -> None:
    with pytest.raises(ManifestError, match="'bad/card'") as info:
        parse_card(text, "bad/card")
    assert what in str(info.value)


def test_oversized_and_non_utf8_cards() -> None:
    with pytest.raises(ManifestError, match="larger than"):
        parse_card(b"# t\n---\n" + b"x" * MAX_CARD_BYTES, "big/card")
    with pytest.raises(ManifestError, match="not UTF-8"):
        parse_card(b"# t\n---\nmodel-name: \xff\n---\n", "bin/card")
    with pytest.raises(ConfigError):
        parse_card(card(one_asset()), "../escape")
