"""Parse and validate the ONNX hub manifest; :class:`ModelInfo`; selection by name/opset/tags.

The manifest (``ONNX_HUB_MANIFEST.json`` at the root of a repo) is a JSON list of entries::

    {"model": str, "model_path": str, "onnx_version": str, "opset_version": int,
     "metadata": {"model_sha": str, "model_bytes": int, "tags": [str, ...],
                  "model_with_data_path": str, "model_with_data_sha": str,
                  "model_with_data_bytes": int, "io_ports": {...}, ...}}

Everything is validated ONCE, in :func:`parse_manifest`; what comes out is safe to use
without further checks. Every problem raises :class:`~asynchub.ManifestError` naming the entry
(index and model name when known) and the field. Choices made here:

* Paths (``model_path``, ``model_with_data_path``) must be plain relative POSIX paths: no
  empty/``.``/``..`` segments, no backslash, control character, ``?``, ``#`` or ``%``, no
  ``:`` in the first segment (so ``C:``, ``file:`` and ``https:`` cannot sneak in), segments of
  at most 255 UTF-8 bytes, at most 4096 characters in all. Such a path can neither leave the
  cache directory nor change the host of a mirror URL.
* The basename of a cached file (``model_path``, ``model_with_data_path``) is at most
  :data:`MAX_BASENAME_BYTES` (140) UTF-8 bytes: the cache stores it as ``<sha256>_<basename>``
  (65 bytes more) and keeps temporaries beside it with up to ~45 bytes of suffix
  (``.<pid>-<token>.partial.json.<token>.tmp``), all within the 255-byte ``NAME_MAX``. A longer
  name used to pass and fail later as a bare "File name too long". (The real manifest's
  longest basename is 40 bytes.)
* Values quoted in error messages are cut to ~100 characters: every message stays short
  whatever the manifest holds.
* SHA-256 values must be exactly 64 hex digits; they are stored in lower case.
* Sizes are integers in ``[0, 2**50]`` (1 PiB); floats, booleans and strings are refused.
* ``opset_version`` is a positive integer (booleans refused).
* At the JSON level: duplicate keys in any object, ``NaN``/``Infinity`` (and numbers that
  overflow to infinity), nesting deeper than 32 levels and documents over 64 MiB are refused.
  The real manifest nests 7 levels deep and weighs ~320 KB.
* ``metadata`` may be absent (treated as ``{}``); ``model_sha`` may be absent, as onnx.hub
  allowed, and is then ``None``: the client refuses to download a file it cannot verify. An
  optional metadata field set to ``null`` counts as absent (onnx.hub read it as ``None`` too).

Matching keeps onnx.hub's contract exactly: model names compare with ``str.lower()`` on both
sides, tags too, an entry matches a tag filter if ANY of its tags is requested, ``tags=[]``
matches nothing, and without an opset the entry with the largest ``opset_version`` wins (the
first in manifest order on ties).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Sequence
from typing import Any, NoReturn

from .._cache.layout import MAX_BASENAME_BYTES, MAX_SEGMENT_BYTES
from .._exceptions import ConfigError, ManifestError, ModelNotFoundError, OpsetNotFoundError

__all__ = [
    "MAX_BASENAME_BYTES",
    "MAX_DEPTH",
    "MAX_MANIFEST_BYTES",
    "MAX_PATH_CHARS",
    "MAX_SEGMENT_BYTES",
    "MAX_SIZE",
    "MAX_SUGGESTION_CANDIDATES",
    "ModelInfo",
    "filter_models",
    "model_not_found",
    "parse_entry",
    "parse_manifest",
    "parse_manifest_spans",
    "select",
    "validate_basename",
    "validate_path",
    "validate_sha",
    "validate_size",
]

#: Largest manifest accepted (bytes, or characters for ``str`` input).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: Deepest JSON nesting accepted (the top-level list is level 1).
MAX_DEPTH = 32
#: Longest path accepted, in characters (Linux ``PATH_MAX``).
MAX_PATH_CHARS = 4096
#: Largest file size accepted: 1 PiB, far above any model, well inside a float's exact range.
MAX_SIZE = 2**50
#: Most names difflib compares when suggesting a name (see :func:`model_not_found`).
MAX_SUGGESTION_CANDIDATES = 2000
#: Largest opset accepted (``OperatorSetIdProto.version`` is an int64).
_MAX_OPSET = 2**63 - 1

_HEX = frozenset("0123456789abcdefABCDEF")
#: Control characters (Unicode category Cc) and lone surrogates (Cs).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: ... plus backslash, ``?``, ``#`` and ``%``.
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\\?#%]")
_FIX = "fix the manifest or use another repo"


def _fail(where: str, problem: str) -> NoReturn:
    raise ManifestError(f"{where}: {problem}; {_FIX}")


def _short(value: str, limit: int = 100) -> str:
    """``repr(value)``, cut to about ``limit`` characters for an error message."""
    return repr(value[:limit] + "...") if len(value) > limit else repr(value)


def validate_basename(path: str, *, where: str) -> str:
    """Refuse a (valid) path whose last segment is too long to be cached (see
    :data:`MAX_BASENAME_BYTES`)."""
    name = path.rsplit("/", 1)[-1]
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_BASENAME_BYTES:
        _fail(
            where,
            f"the file name {_short(name, 60)} is {size} bytes; cached as '<sha256>_<name>' it"
            f" must be at most {MAX_BASENAME_BYTES} bytes",
        )
    return path


def validate_path(path: Any, *, where: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path, else raise ``ManifestError``.

    ``where`` names the place the path came from (e.g. ``"manifest entry 3 ('MNIST'),
    field 'model_path'"``). The rules are listed in the module docstring.
    """
    if not isinstance(path, str):
        _fail(where, f"must be a string, not {type(path).__name__}")
    if not path:
        _fail(where, "must not be empty")
    if len(path) > MAX_PATH_CHARS:
        _fail(where, f"is {len(path)} characters long (at most {MAX_PATH_CHARS})")
    bad = _BAD_PATH_CHAR.search(path)
    if bad is not None:
        _fail(where, f"{_short(path)} contains the forbidden character {bad.group()!r}")
    if path.startswith("/"):
        _fail(where, f"{_short(path)} is absolute; it must be relative to the repo root")
    segments = path.split("/")
    if ":" in segments[0]:
        _fail(where, f"{_short(path)} has ':' in its first segment (drive letter or URL scheme)")
    for segment in segments:
        if segment in ("", ".", ".."):
            _fail(where, f"{_short(path)} has an empty, '.' or '..' segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            _fail(where, f"{_short(path)} has a segment longer than {MAX_SEGMENT_BYTES} bytes")
    return path


def validate_sha(value: Any, *, where: str) -> str:
    """Return ``value`` in lower case if it is exactly 64 hex digits, else ``ManifestError``."""
    if not isinstance(value, str):
        _fail(where, f"must be a SHA-256 hex string, not {type(value).__name__}")
    if len(value) != 64 or not _HEX.issuperset(value):
        _fail(where, f"{value[:80]!r} is not a SHA-256 (64 hex digits)")
    return value.lower()


def validate_size(value: Any, *, where: str) -> int:
    """Return ``value`` if it is an ``int`` (not ``bool``) in ``[0, 2**50]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"must be an integer number of bytes, not {type(value).__name__}")
    if not 0 <= value <= MAX_SIZE:
        _fail(where, f"{value} is outside [0, 2**50]")
    return value


def _cached_path(value: Any, *, where: str) -> str:
    return validate_basename(validate_path(value, where=where), where=where)


def _validate_opset(value: Any, *, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"must be a positive integer, not {type(value).__name__}")
    if not 1 <= value <= _MAX_OPSET:
        _fail(where, f"{value} is not a positive int64")
    return value


def _validate_name(value: Any, *, where: str) -> str:
    if not isinstance(value, str):
        _fail(where, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        _fail(where, "must not be empty")
    if _CONTROL.search(value):
        _fail(where, f"{_short(value)} contains a control character")
    return value


def _validate_tags(value: Any, *, where: str) -> set[str]:
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        _fail(where, "must be a list of strings")
    return set(value)


class ModelInfo:
    """One manifest entry, compatible with ``onnx.hub.ModelInfo``.

    Attributes as onnx.hub: ``model``, ``model_path``, ``metadata``, ``model_sha`` (lower-case
    hex, or ``None`` when the manifest gives none), ``tags`` (a set, original case), ``opset``,
    ``raw_model_info``. Added: ``model_bytes``, ``model_with_data_path``,
    ``model_with_data_sha``, ``model_with_data_bytes`` (each ``None`` when absent).

    The constructor validates ``raw_model_info`` (``ManifestError`` on any problem).
    """

    model: str
    model_path: str
    metadata: dict[str, Any]
    model_sha: str | None
    tags: set[str]
    opset: int
    raw_model_info: dict[str, Any]
    model_bytes: int | None
    model_with_data_path: str | None
    model_with_data_sha: str | None
    model_with_data_bytes: int | None

    def __init__(self, raw_model_info: dict[str, Any]) -> None:
        self._load(raw_model_info, "model info")

    @classmethod
    def _from_entry(cls, raw: Any, label: str) -> ModelInfo:
        info = cls.__new__(cls)
        info._load(raw, label)
        return info

    def _load(self, raw: Any, label: str) -> None:
        if not isinstance(raw, dict):
            _fail(label, f"must be a JSON object, not {type(raw).__name__}")
        if "model" not in raw:
            _fail(label, "field 'model' is missing")
        self.model = _validate_name(raw["model"], where=f"{label}, field 'model'")
        label = f"{label} ({_short(self.model)})"
        if "model_path" not in raw:
            _fail(label, "field 'model_path' is missing")
        where = f"{label}, field 'model_path'"
        self.model_path = _cached_path(raw["model_path"], where=where)
        if "opset_version" not in raw:
            _fail(label, "field 'opset_version' is missing")
        self.opset = _validate_opset(raw["opset_version"], where=f"{label}, field 'opset_version'")
        onnx_version = raw.get("onnx_version")
        if onnx_version is not None and not isinstance(onnx_version, str):
            _fail(f"{label}, field 'onnx_version'", "must be a string")
        metadata = raw.get("metadata", {})
        if not isinstance(metadata, dict):
            _fail(f"{label}, field 'metadata'", "must be a JSON object")
        self.metadata = metadata
        self.raw_model_info = raw

        def opt(key: str, check: Any) -> Any:
            value = metadata.get(key)
            return None if value is None else check(value, where=f"{label}, field {key!r}")

        self.model_sha = opt("model_sha", validate_sha)
        self.model_bytes = opt("model_bytes", validate_size)
        self.tags = opt("tags", _validate_tags) or set()
        self.model_with_data_path = opt("model_with_data_path", _cached_path)
        self.model_with_data_sha = opt("model_with_data_sha", validate_sha)
        self.model_with_data_bytes = opt("model_with_data_bytes", validate_size)
        _check_entry_tree(raw, label)

    def __str__(self) -> str:
        return (
            f"ModelInfo(model={self.model}, opset={self.opset}, path={self.model_path}, "
            f"metadata={self.metadata})"
        )

    def __repr__(self) -> str:
        return self.__str__()


# --- JSON level ----------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ManifestError(f"duplicate key {key[:80]!r} in a JSON object")
            seen.add(key)
    return result


def _no_constant(name: str) -> NoReturn:
    raise ManifestError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ManifestError(f"number {text[:40]} overflows to infinity")
    return value


_JSON_SCALARS = (str, int, bool, type(None))


def _check_tree(root: Any, depth: int, where: str) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH``, non-string keys and non-JSON values below
    ``root`` (which sits at nesting level ``depth``; the top-level list is level 1).

    An explicit stack, so even a self-referencing list stops at the depth limit. Parsed JSON
    only holds JSON types; the type checks matter for already-parsed ``list`` input.
    """
    stack: list[tuple[Any, int]] = [(root, depth)]
    pop, push = stack.pop, stack.append
    while stack:
        node, level = pop()
        if level > MAX_DEPTH:
            _fail(where, f"JSON nesting is deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    _fail(where, f"JSON object key {key!r} is not a string")
                if isinstance(value, (dict, list)):
                    push((value, level + 1))
                elif not isinstance(value, _JSON_SCALARS):
                    _check_scalar(value, where)
        elif isinstance(node, list):
            for value in node:
                if isinstance(value, (dict, list)):
                    push((value, level + 1))
                elif not isinstance(value, _JSON_SCALARS):
                    _check_scalar(value, where)
        elif not isinstance(node, _JSON_SCALARS):
            _check_scalar(node, where)


def _check_scalar(value: Any, where: str) -> None:
    if isinstance(value, float) and math.isfinite(value):
        return
    _fail(where, f"{value!r} ({type(value).__name__}) is not a JSON value")


def _check_entry_tree(raw: dict[str, Any], label: str) -> None:
    """:func:`_check_tree` for each field of an entry (level 2), naming the field."""
    for key, value in raw.items():
        if not isinstance(key, str):
            _fail(label, f"JSON object key {key!r} is not a string")
        if key == "metadata" and isinstance(value, dict):
            for meta_key, meta_value in value.items():
                if not isinstance(meta_key, str):
                    _fail(f"{label}, field 'metadata'", f"key {meta_key!r} is not a string")
                _check_tree(meta_value, 4, f"{label}, field {'metadata.' + meta_key!r}")
        else:
            _check_tree(value, 3, f"{label}, field {key!r}")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite_float
)
_WS = re.compile(r"[ \t\n\r]*")


def _split_list(text: str) -> tuple[list[Any], list[tuple[int, int]]] | None:
    """The items of a top-level JSON list with their character spans, decoded one at a time;
    ``None`` when the document is not a list.

    Choice: one decoder call per entry, not one for the document. ``json.loads`` of a 43 MiB
    manifest held the GIL for ~200 ms in one C call, stalling the event loop even though it
    ran in a worker thread; entry by entry, the GIL changes hands between entries. The spans
    let :mod:`.index` re-read one entry later without parsing the rest.
    """
    pos = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if not text.startswith("[", pos):
        return None
    items: list[Any] = []
    spans: list[tuple[int, int]] = []
    pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    if not text.startswith("]", pos):
        while True:
            item, end = _DECODER.raw_decode(text, pos)
            items.append(item)
            spans.append((pos, end))
            pos = _WS.match(text, end).end()  # type: ignore[union-attr]
            if text.startswith(",", pos):
                pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
                continue
            if text.startswith("]", pos):
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    end = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return items, spans


def _load_json(data: bytes | str, source: str) -> tuple[Any, list[tuple[int, int]] | None, str]:
    """The document (items one by one when it is a list), the items' character spans, and
    the decoded text."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{source}: {len(data)} bytes is over the {MAX_MANIFEST_BYTES} byte limit; {_FIX}"
        )
    try:
        if isinstance(data, str):
            if data.startswith("\ufeff"):
                raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
            text = data
        else:
            text = data.decode(json.detect_encoding(data), "surrogatepass")
        found = _split_list(text)
        if found is None:
            return _DECODER.decode(text), None, text
        return found[0], found[1], text
    except ManifestError as exc:
        raise ManifestError(f"{source}: {exc}; {_FIX}") from None
    except RecursionError:
        raise ManifestError(f"{source}: JSON nesting too deep; {_FIX}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, huge integers
        raise ManifestError(f"{source}: not valid JSON ({str(exc)[:200]}); {_FIX}") from None


def _entries(document: Any, source: str) -> list[ModelInfo]:
    if not isinstance(document, list):
        raise ManifestError(
            f"{source}: must be a JSON list of model entries, not {type(document).__name__}; {_FIX}"
        )
    return [
        ModelInfo._from_entry(raw, f"{source}: entry {index}") for index, raw in enumerate(document)
    ]


def parse_manifest(data: bytes | str | list[Any], *, source: str = "manifest") -> list[ModelInfo]:
    """Parse and validate a whole manifest; ``source`` (a URL or file name) prefixes errors.

    ``data`` is the JSON document (``bytes`` in any encoding JSON allows, or ``str``) or an
    already-parsed list. Returns the entries in manifest order.
    """
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        document: Any = _load_json(data if isinstance(data, str) else bytes(data), source)[0]
    else:
        document = data
    return _entries(document, source)


def parse_manifest_spans(
    data: bytes, *, source: str = "manifest"
) -> tuple[list[ModelInfo], list[tuple[int, int]] | None]:
    """:func:`parse_manifest` of a document in ``bytes``, plus each entry's byte span in
    ``data`` (``None`` unless the document is UTF-8): ``data[start:end]`` is the entry's JSON
    text, which :func:`parse_entry` reads back on its own."""
    document, spans, text = _load_json(data, source)
    entries = _entries(document, source)
    if spans is None or json.detect_encoding(data) not in ("utf-8", "utf-8-sig"):
        return entries, None
    if data.isascii():
        return entries, spans
    byte_spans: list[tuple[int, int]] = []
    offset = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    last = 0
    for start, end in spans:
        offset += len(text[last:start].encode("utf-8", "surrogatepass"))
        length = len(text[start:end].encode("utf-8", "surrogatepass"))
        byte_spans.append((offset, offset + length))
        offset, last = offset + length, end
    return entries, byte_spans


def parse_entry(data: bytes, index: int, *, source: str = "manifest") -> ModelInfo:
    """One entry read back from its span (see :func:`parse_manifest_spans`), validated."""
    try:
        raw = _DECODER.decode(data.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError) as exc:
        reason = str(exc)[:200]
        raise ManifestError(f"{source}: entry {index} cannot be read back ({reason})") from None
    return ModelInfo._from_entry(raw, f"{source}: entry {index}")


# --- selection -----------------------------------------------------------------------------


def filter_models(
    entries: Sequence[ModelInfo], model: str | None = None, tags: list[str] | None = None
) -> list[ModelInfo]:
    """onnx.hub's ``list_models`` filter, in manifest order.

    ``model`` matches names exactly, ignoring case. ``tags`` ignores case; an entry matches if
    ANY of its tags is requested; ``tags=[]`` matches nothing and ``None`` means no tag filter.
    A bare string for ``tags`` is refused (``ConfigError``): it would be read letter by letter.
    """
    matching = list(entries)
    if model is not None:
        wanted = model.lower()
        matching = [m for m in matching if m.model.lower() == wanted]
    if tags is None:
        return matching
    if isinstance(tags, str):
        raise ConfigError(f"tags must be a list of strings, e.g. [{tags!r}], not a string")
    requested = {tag.lower() for tag in tags}
    return [m for m in matching if any(tag.lower() in requested for tag in m.tags)]


def select(entries: Sequence[ModelInfo], model: str, opset: int | None = None) -> ModelInfo:
    """onnx.hub's ``get_model_info``: the entry named ``model`` (ignoring case).

    Without ``opset`` the largest ``opset_version`` wins, the first in manifest order on ties.
    Raises ``ModelNotFoundError`` / ``OpsetNotFoundError`` (both ``AssertionError``) with
    onnx.hub's wording followed by what to do.
    """
    matching = filter_models(entries, model)
    if not matching:
        raise model_not_found(model, [m.model for m in entries])
    if opset is None:
        return max(matching, key=lambda m: m.opset)  # max() keeps the first of equal keys
    for info in matching:
        if info.opset == opset:
            return info
    valid_opsets = [m.opset for m in matching]
    raise OpsetNotFoundError(
        f"{model[:200]} has no version with opset {opset}. Valid opsets: {valid_opsets}. "
        "Pass one of them as opset=, or leave opset unset for the newest."
    )


def model_not_found(model: str, names: Sequence[str]) -> ModelNotFoundError:
    """onnx.hub's "No models found" error for ``model``, with up to three close ``names``.

    Choice (bounded cost): difflib compares the name with at most
    :data:`MAX_SUGGESTION_CANDIDATES` names: all of them in manifests up to that size (the real
    one has 116 names), else the ones nearest to the name in sorted order, which share its
    longest prefix. Over 260,000 names difflib took 37 s and 1.2 GB; now a misspelling of the
    first letters in such a huge manifest may get no suggestion, and the error still says
    where to look.
    """
    by_lower = {name.lower(): name for name in names}
    wanted = model.lower()
    candidates = list(by_lower)
    if len(candidates) > MAX_SUGGESTION_CANDIDATES:
        candidates.sort()
        half = MAX_SUGGESTION_CANDIDATES // 2
        at = bisect.bisect_left(candidates, wanted)
        candidates = candidates[max(0, at - half) : at + half]
    import difflib  # only for a name that is not found

    close = difflib.get_close_matches(wanted[:200], candidates, n=3)
    hint = f" (did you mean {', '.join(by_lower[c] for c in close)}?)" if close else ""
    return ModelNotFoundError(
        f"No models found with name {model[:200]}{hint}. "
        "Call list_models() to see the models this repo offers."
    )
