"""The registry of sources (see :mod:`.source`).

The built-in sources are named here as the modules that hold their :class:`SourceSpec`
(``SPEC``); they are imported the first time the list is needed, so ``import asynchub`` stays
cheap. A source outside asynchub (a plugin, a test) calls :func:`register_source` and needs no
edit anywhere else: the hub can open it, prefetch and the CLI see it, and the cache
administration lists, verifies and prunes its namespace.
"""

from __future__ import annotations

import importlib
import threading

from .._exceptions import ConfigError
from .source import SourceSpec

__all__ = [
    "BUILTIN_SOURCES",
    "all_sources",
    "get_source",
    "register_source",
    "unregister_source",
]

#: Modules defining ``SPEC`` for the sources shipped with asynchub.
BUILTIN_SOURCES = ("asynchub._onnx.spec", "asynchub.mindspore._spec")

_lock = threading.Lock()
_registered: dict[str, SourceSpec] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    with _lock:
        if _builtins_loaded:
            return
        for module_name in BUILTIN_SOURCES:
            spec: SourceSpec = importlib.import_module(module_name).SPEC
            _registered.setdefault(spec.name, spec)
        _builtins_loaded = True


def register_source(spec: SourceSpec, *, replace: bool = False) -> None:
    """Add a source. Its name and cache namespace must be new (``replace=True`` swaps a
    source of the same name, e.g. in tests)."""
    _load_builtins()
    with _lock:
        if spec.name in _registered and not replace:
            raise ConfigError(f"a source named {spec.name!r} is already registered")
        for other in _registered.values():
            if other.name != spec.name and other.cache_namespace == spec.cache_namespace:
                raise ConfigError(
                    f"the source {spec.name!r} wants the cache folder "
                    f"{spec.cache_namespace or '(root)'!r}, which {other.name!r} owns"
                )
        _registered[spec.name] = spec


def unregister_source(name: str) -> None:
    """Remove a registered source (tests)."""
    with _lock:
        _registered.pop(name, None)


def all_sources() -> list[SourceSpec]:
    """Every registered source, built-ins first."""
    _load_builtins()
    return list(_registered.values())


def get_source(name: str) -> SourceSpec:
    """The source called ``name``; :class:`~asynchub.ConfigError` naming the known ones."""
    _load_builtins()
    try:
        return _registered[name]
    except KeyError:
        known = ", ".join(sorted(_registered)) or "none"
        raise ConfigError(f"no source named {name!r} (known: {known})") from None
