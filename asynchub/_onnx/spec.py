"""The ONNX Model Hub as a registered source (see :mod:`asynchub._hub.source`).

Its files live at the root of the cache (the onnx.hub layout), its manifests under
``_manifests/``. Importing this module is cheap: the source object and the manifest reader are
imported when first used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .._hub.source import SourceSpec

if TYPE_CHECKING:
    from .._cache.admin import FileRef
    from .._hub.source import Source, SourceHost

__all__ = ["SPEC"]


def _open(host: SourceHost) -> Source:
    from .source import OnnxSource

    return OnnxSource(host)


def _references(root: Path) -> Mapping[Path, FileRef] | None:
    from .cached import references

    return references(root)


SPEC = SourceSpec(
    name="onnx",
    cache_namespace="",
    documents="_manifests",
    open=_open,
    references=_references,
)
