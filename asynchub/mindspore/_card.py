"""Parse and validate MindSpore Hub asset cards (``mshub_res/assets/<uid>.md``).

A card is a Markdown file whose front matter (between the first two ``---`` lines, after an
optional ``# Title``) lists the model's metadata and an ``asset:`` list of files::

    # alexnet
    ---
    model-name: alexnet
    module-type: cv-classification
    mindspore-version: 1.10
    asset:
    -
        file-format: ckpt
        asset-link: <https://download.mindspore.cn/models/r1.10/alexnet.ckpt>
        asset-sha256: f5f74f1bff1de9c46da58fb0b13fd81dfa0208cc49c3108dadf2f313eac349f2
    license: Apache2.0
    ---

The front matter looks like YAML but is not: about 170 real cards (``evaluation: -``) are not
valid YAML, and MindSpore's own loader reads ``1.10`` as the float ``1.1``. So this module
parses the small, line-based subset the real cards use, keeps every value as text, and refuses
everything else. Choices made here, each from the 2,915 cards of the hub:

* Top-level lines are ``key: value``; a key with no value may be followed by a block: a list
  (items start with ``-``, alone or followed by the item's first ``key: value``; the item's
  other keys are indented) or a mapping (indented ``key: value`` lines). Tabs, deeper nesting,
  duplicate top-level keys and any other line shape are refused, naming the line.
* The ten Chinese cards (``*_cn.md``) write keys in Chinese with a full-width colon (U+FF1A);
  their keys are translated (``模型名称`` → ``model-name``, ``资源`` → ``asset``, ...).
* Values are stripped (cards often end lines with two spaces); links may be ``<...>``-wrapped.
  ``file-format`` is lower-cased without a leading dot (the Chinese cards write ``.ckpt``).
* ``asset-link`` must be ``http``/``https`` with a host, without credentials, spaces or control
  characters. The cache file name is the link's last path segment (percent-decoded) and must
  be a plain file name: not empty, no ``/``, ``\\``, NUL or control character, not ``.``/``..``,
  at most 255 UTF-8 bytes.
* ``asset-sha256`` is either a full SHA-256 (64 hex digits, stored in lower case) or, as in the
  118 MindCV/MindYOLO assets of the 2.3 and 2.5 cards, a short digest of 8 to 16 hex digits
  (the prefix those projects put in their file names); any other length (e.g. 63 digits) is
  refused. Six cards give no digest at all. Assets without a full digest parse (their card is
  readable) but have ``sha256=None``; the API refuses to download what it cannot verify.
* An asset entry may repeat ``asset-link`` only if it gives no digest (three real cards list two
  checkpoints in one entry); each link is then its own asset. One digest cannot verify two
  files, so a repeated link with a digest is refused.
* ``asset:`` missing means a metadata-only card (27 real cards, e.g. the MindONE 2.5 entries
  that point at a code repository); ``asset:`` present with no entries is refused.
* ``model-name`` is the one required field; other fields are ``None`` when absent or empty.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .._cache.layout import MAX_SEGMENT_BYTES
from .._exceptions import ConfigError, ManifestError

__all__ = [
    "MAX_CARD_BYTES",
    "Asset",
    "AssetCard",
    "normalize_uid",
    "parse_card",
]

#: Largest card accepted; the largest real card is ~78 KB (mostly Markdown after the header).
MAX_CARD_BYTES = 1024 * 1024
#: Longest link accepted, in characters.
MAX_URL_CHARS = 4096
#: Lines scanned for the opening ``---`` (real cards open it on line 3).
MAX_PREAMBLE_LINES = 50

_UID = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*\Z")
_MAX_UID_CHARS = 1024
_HEX = re.compile(r"[0-9a-fA-F]+\Z")
#: A key: a word character, then word characters, spaces, dots and dashes. Lines are split at
#: their first colon (``:`` or the full-width U+FF1A of the Chinese cards) by ``str.find`` and
#: only the key is matched, with this pattern that has a single repetition: every parse is
#: linear in the line's length. (A lazy ``key\s*:`` pattern over the whole line backtracked
#: quadratically on colon-less lines: 9 s for 32k spaces.)
_KEY = re.compile(r"\w[\w .-]*")
_COLONS = (":", "\uff1a")
_ITEM = re.compile(r"(?P<indent> *)-(?:(?: +)(?P<rest>.*))?\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f\\<>\"'`]")
_FIX = "fix the card or ask its publisher"

#: Keys of the Chinese cards, translated to the English keys of the others.
_KEY_ALIASES = {
    "模型名称": "model-name",
    "骨干网络": "backbone-name",
    "模块类型": "module-type",
    "可微调": "fine-tunable",
    "输入形状": "input-shape",
    "模型版本": "model-version",
    "训练数据集": "train-dataset",
    "准确率": "accuracy",
    "作者": "author",
    "更新时间": "update-time",
    "代码仓链接": "repo-link",
    "用户ID": "user-id",
    "用途": "used-for",
    "训练后端": "train-backend",
    "推理后端": "infer-backend",
    "MindSpore版本": "mindspore-version",
    "MindSpore Lite": "mindspore-lite",
    "许可证": "license",
    "摘要": "summary",
    "资源": "asset",
    "文件格式": "file-format",
    "资源链接": "asset-link",
    "资源SHA256校验码": "asset-sha256",
}


@dataclass(frozen=True)
class Asset:
    """One file of a card.

    ``sha256`` is the full digest (lower case) or ``None`` when the card gives none or only a
    short one (then in ``sha256_prefix``); only assets with ``sha256`` can be downloaded.
    """

    file_format: str
    url: str
    sha256: str | None
    filename: str
    sha256_prefix: str | None = None

    @property
    def verifiable(self) -> bool:
        """Whether the card gives a full SHA-256 for this file."""
        return self.sha256 is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file_format": self.file_format,
            "url": self.url,
            "sha256": self.sha256,
            "sha256_prefix": self.sha256_prefix,
            "filename": self.filename,
        }


@dataclass(frozen=True)
class AssetCard:
    """The validated front matter of one card. ``raw`` holds every key as parsed (text
    values, translated keys), including the ones without a typed field."""

    uid: str
    model_name: str
    backbone_name: str | None
    module_type: str | None
    model_version: str | None
    train_dataset: str | None
    evaluation: str | dict[str, str | None] | None
    mindspore_version: str | None
    used_for: str | None
    license: str | None
    summary: str | None
    assets: tuple[Asset, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (used by ``--json``)."""
        return {
            "uid": self.uid,
            "model_name": self.model_name,
            "backbone_name": self.backbone_name,
            "module_type": self.module_type,
            "model_version": self.model_version,
            "train_dataset": self.train_dataset,
            "evaluation": self.evaluation,
            "mindspore_version": self.mindspore_version,
            "used_for": self.used_for,
            "license": self.license,
            "summary": self.summary,
            "assets": [asset.to_dict() for asset in self.assets],
            "raw": self.raw,
        }


def normalize_uid(uid: str) -> str:
    """A card uid (``mindspore/1.10/alexnet_cifar10``) from a uid or a card URL.

    A URL is accepted as ``mindspore_hub.load`` accepts it: any ``http(s)`` URL whose path
    contains ``/mshub_res/assets/`` and ends in ``.md`` (raw, GitHub or Gitee ``blob`` pages).
    The uid must be ``/``-separated segments of ``[A-Za-z0-9_.-]``, none ``.`` or ``..``, and
    must not start with ``_`` (``_cards`` holds the card cache beside the asset folders);
    anything else raises :class:`~asynchub.ConfigError`.
    """
    if not isinstance(uid, str):
        raise ConfigError(f"a MindSpore uid must be a string, not {type(uid).__name__}")
    text = uid.strip()
    if "://" in text:
        parts = urllib.parse.urlsplit(text)
        marker = "/mshub_res/assets/"
        if parts.scheme not in ("http", "https") or marker not in parts.path:
            raise ConfigError(
                f"{uid[:200]!r} is not a MindSpore Hub card URL; expected "
                "https://.../mshub_res/assets/<uid>.md or a uid like mindspore/1.10/alexnet_cifar10"
            )
        rest = urllib.parse.unquote(parts.path.split(marker, 1)[1])
        if not rest.endswith(".md"):
            raise ConfigError(f"card URL {uid[:200]!r} must end in .md")
        text = rest[: -len(".md")]
    if len(text) > _MAX_UID_CHARS or not _UID.match(text):
        raise ConfigError(
            f"{uid[:200]!r} is not a MindSpore uid: use '/'-separated names of letters, digits,"
            " '_', '.' and '-' (e.g. mindspore/1.10/alexnet_cifar10)"
        )
    if any(segment in (".", "..") for segment in text.split("/")):
        raise ConfigError(f"{uid[:200]!r} has a '.' or '..' segment; that is not a card uid")
    if text.startswith("_"):
        raise ConfigError(
            f"{uid[:200]!r} starts with '_', which is reserved for the cache's own folders"
        )
    return text


# --------------------------------------------------------------------------- parsing


class _Fail:
    """Builds the error messages of one card."""

    def __init__(self, uid: str) -> None:
        self.uid = uid

    def __call__(self, where: str, problem: str) -> NoReturn:
        raise ManifestError(f"asset card {self.uid!r}, {where}: {problem}; {_FIX}")


def _front_matter(text: str, fail: _Fail) -> list[tuple[int, str]]:
    """The numbered lines between the opening and closing ``---``."""
    lines = text.splitlines()
    start = None
    for number, line in enumerate(lines[:MAX_PREAMBLE_LINES], 1):
        stripped = line.strip()
        if stripped == "---":
            start = number
            break
        if stripped and not stripped.startswith("#"):
            fail(f"line {number}", "text before the front matter (expected '---' after the title)")
    if start is None:
        fail("front matter", "no opening '---' line; this is not an asset card")
    for number in range(start + 1, len(lines) + 1):
        if lines[number - 1].strip() == "---":
            return [(n, lines[n - 1].rstrip()) for n in range(start + 1, number)]
    fail("front matter", f"opened at line {start} but never closed with '---'")


def _split_key(line: str, number: int, fail: _Fail) -> tuple[str, str | None]:
    text = line.strip()
    found = [i for i in (text.find(colon) for colon in _COLONS) if i >= 0]
    key = text[: min(found)].rstrip() if found else ""
    if not found or _KEY.fullmatch(key) is None:
        fail(f"line {number}", f"{text[:80]!r} is not a 'key: value' line")
    value = text[min(found) + 1 :].strip()
    return _KEY_ALIASES.get(key, key), (value or None)


def _parse_lines(lines: list[tuple[int, str]], fail: _Fail) -> dict[str, Any]:
    """The front matter as a dict (see the module docstring for the grammar)."""
    raw: dict[str, Any] = {}
    block_key: str | None = None  # top-level key with an empty value: a block may follow
    item: list[tuple[str, str | None]] | None = None  # the list item being filled
    for number, line in lines:
        if not line.strip():
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            fail(f"line {number}", "indented with a tab; use spaces")
        if _CONTROL.search(line):
            fail(f"line {number}", "contains a control character")
        dash = _ITEM.match(line)
        if dash is not None:
            if block_key is None or isinstance(raw[block_key], dict):
                fail(f"line {number}", "a '-' list item outside a list")
            if raw[block_key] is None:
                raw[block_key] = []
            item = []
            raw[block_key].append(item)
            if dash.group("rest"):
                item.append(_split_key(dash.group("rest"), number, fail))
            continue
        if line[0] == " ":
            pair = _split_key(line, number, fail)
            if item is not None:
                item.append(pair)
            elif block_key is not None and not isinstance(raw[block_key], list):
                if raw[block_key] is None:
                    raw[block_key] = {}
                if pair[0] in raw[block_key]:
                    fail(f"field {block_key!r}", f"repeats the key {pair[0]!r}")
                raw[block_key][pair[0]] = pair[1]
            else:
                fail(f"line {number}", "an indented line that belongs to no key")
            continue
        key, value = _split_key(line, number, fail)
        if key in raw:
            fail(f"field {key!r}", f"appears twice (line {number})")
        raw[key] = value
        block_key = key if value is None else None
        item = None
    for key, value in raw.items():
        if isinstance(value, list):
            raw[key] = [_item_dict(pairs) for pairs in value]
    return raw


def _item_dict(pairs: list[tuple[str, str | None]]) -> dict[str, Any]:
    """A list item as a dict; a repeated key keeps all its values in a list."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            previous = result[key]
            result[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            result[key] = value
    return result


# --------------------------------------------------------------------------- validation


def _unwrap(value: str) -> str:
    if value.startswith("<") and value.endswith(">"):
        return value[1:-1].strip()
    return value


def _validate_url(value: str, where: str, fail: _Fail) -> str:
    url = _unwrap(value)
    if len(url) > MAX_URL_CHARS:
        fail(where, f"is {len(url)} characters long (at most {MAX_URL_CHARS})")
    bad = _URL_FORBIDDEN.search(url)
    if bad is not None:
        fail(where, f"{url[:120]!r} contains the forbidden character {bad.group()!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        fail(where, f"{url[:120]!r} is not a valid URL ({exc})")
    if parts.scheme.lower() not in ("http", "https"):
        fail(where, f"{url[:120]!r} is not an http(s) link; other schemes are refused")
    if not parts.hostname:
        fail(where, f"{url[:120]!r} has no host")
    if parts.username is not None or parts.password is not None:
        fail(where, f"{url[:120]!r} carries credentials; they do not belong in a card")
    return url


def _filename(url: str, where: str, fail: _Fail) -> str:
    path = urllib.parse.urlsplit(url).path
    if not path or path.endswith("/"):
        fail(where, f"{url[:120]!r} does not end in a file name")
    name = urllib.parse.unquote(path.rsplit("/", 1)[-1], errors="strict")
    if name in ("", ".", ".."):
        fail(where, f"{url[:120]!r} ends in {name!r}, which is not a file name")
    if "/" in name or "\\" in name:
        fail(where, f"file name {name!r} (from {url[:120]!r}) contains a path separator")
    bad = _CONTROL.search(name)
    if bad is not None:
        fail(where, f"file name {name!r} contains the control character {bad.group()!r}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
        fail(where, f"file name from {url[:120]!r} is longer than {MAX_SEGMENT_BYTES} bytes")
    return name


def _one(entry: Mapping[str, Any], key: str, where: str, fail: _Fail) -> str | None:
    value = entry.get(key)
    if isinstance(value, list):
        fail(f"{where}, field {key!r}", "appears more than once")
    return value if isinstance(value, str) else None


def _assets(entries: Any, fail: _Fail) -> tuple[Asset, ...]:
    if entries is None:
        fail("field 'asset'", "is present but lists no entries")
    if not isinstance(entries, list):
        fail("field 'asset'", "must be a list of '-' entries")
    assets: list[Asset] = []
    for index, entry in enumerate(entries, 1):
        where = f"asset {index}"
        file_format = _one(entry, "file-format", where, fail)
        if not file_format:
            fail(f"{where}, field 'file-format'", "is missing or empty")
        file_format = file_format.lstrip(".").lower()
        if not re.fullmatch(r"[a-z0-9_+-]{1,32}", file_format):
            fail(f"{where}, field 'file-format'", f"{file_format[:40]!r} is not a format name")
        sha_text = _one(entry, "asset-sha256", where, fail)
        sha256 = prefix = None
        if sha_text is not None:
            if not _HEX.match(sha_text) or not (8 <= len(sha_text) <= 16 or len(sha_text) == 64):
                fail(
                    f"{where}, field 'asset-sha256'",
                    f"{sha_text[:80]!r} is not a SHA-256 (64 hex digits, or a short digest of 8"
                    " to 16)",
                )
            if len(sha_text) == 64:
                sha256 = sha_text.lower()
            else:
                prefix = sha_text.lower()
        links = entry.get("asset-link")
        link_list = links if isinstance(links, list) else [links]
        if not link_list or any(not link for link in link_list):
            fail(f"{where}, field 'asset-link'", "is missing or empty")
        if len(link_list) > 1 and sha_text is not None:
            fail(
                f"{where}, field 'asset-link'",
                "appears more than once with one asset-sha256; one digest cannot verify two files",
            )
        for link in link_list:
            url = _validate_url(link, f"{where}, field 'asset-link'", fail)
            name = _filename(url, f"{where}, field 'asset-link'", fail)
            assets.append(Asset(file_format, url, sha256, name, prefix))
    return tuple(assets)


def _text(raw: Mapping[str, Any], key: str, fail: _Fail) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        fail(f"field {key!r}", "must be a single value, not a list or mapping")
    return value


def parse_card(data: bytes | str, uid: str) -> AssetCard:
    """Parse and validate one card; ``uid`` names it in errors (and is validated too).

    Raises :class:`~asynchub.ManifestError` naming the card and the field or line.
    """
    uid = normalize_uid(uid)
    fail = _Fail(uid)
    if len(data) > MAX_CARD_BYTES:
        fail("card", f"is larger than {MAX_CARD_BYTES} bytes")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            fail("card", f"is not UTF-8 text ({exc.reason} at byte {exc.start})")
    else:
        text = data.removeprefix("\ufeff")
    raw = _parse_lines(_front_matter(text, fail), fail)
    model_name = _text(raw, "model-name", fail)
    if not model_name:
        fail("field 'model-name'", "is missing or empty")
    evaluation = raw.get("evaluation")
    if isinstance(evaluation, list):
        fail("field 'evaluation'", "must be a value or a mapping, not a list")
    return AssetCard(
        uid=uid,
        model_name=model_name,
        backbone_name=_text(raw, "backbone-name", fail),
        module_type=_text(raw, "module-type", fail),
        model_version=_text(raw, "model-version", fail),
        train_dataset=_text(raw, "train-dataset", fail),
        evaluation=evaluation,
        mindspore_version=_text(raw, "mindspore-version", fail),
        used_for=_text(raw, "used-for", fail),
        license=_text(raw, "license", fail),
        summary=_text(raw, "summary", fail),
        assets=_assets(raw["asset"], fail) if "asset" in raw else (),
        raw=raw,
    )
