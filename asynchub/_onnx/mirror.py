"""``asynchub mirror``: write a selection of a repo as a static mirror.

``write_mirror`` writes ``<out>/<owner>/<repo>/<ref>/ONNX_HUB_MANIFEST.json`` (the selected
entries, merged with entries already there) and each verified file at
``<out>/<owner>/<repo>/<ref>/<model_path>`` (copied, atomically; not hard-linked, so an edit of
a cache file in place can never alter what the mirror serves). Any static HTTP server can then
serve ``<out>`` with the templates ``{base}/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json`` and
``{base}/{owner}/{repo}/{ref}/{path}``. Entries whose model failed are left out; the test-data
fields of an entry are dropped when its archive is not in the mirror, so clients get a clear
"no test data" error instead of a 404.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._cache.layout import sha256_file, translate_oserror
from .._exceptions import ManifestError
from .manifest import ModelInfo, parse_manifest
from .urls import DEFAULT_REPO, RepoSpec
from .warm import MANIFEST_NAME

if TYPE_CHECKING:
    from .._hub.client import AsyncHub
    from .prefetch import PrefetchResult

__all__ = ["MirrorReport", "write_mirror"]

log = logging.getLogger("asynchub")


@dataclass(frozen=True)
class MirrorReport:
    out_dir: Path
    repo_dir: Path
    manifest: Path
    files: tuple[Path, ...]
    entries: int
    prefetch: PrefetchResult
    bytes_written: int = 0
    notes: tuple[str, ...] = field(default=())


def _publish_copy(source: Path, target: Path, sha256: str | None) -> bool:
    """Place ``source`` (verified, of SHA-256 ``sha256``) at ``target`` atomically; False when
    the same bytes were already there."""
    if sha256 and target.is_file() and not target.is_symlink():
        st = target.stat()
        if st.st_size == source.stat().st_size and sha256_file(target) == sha256:
            return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


def _write_manifest(path: Path, entries: list[dict[str, Any]]) -> None:
    existing: list[dict[str, Any]] = []
    if path.is_file():
        try:
            existing = [
                e.raw_model_info for e in parse_manifest(path.read_bytes(), source=str(path))
            ]
        except ManifestError as exc:
            log.warning("replacing the unreadable mirror manifest %s: %s", path, exc)
    new_paths = {e["model_path"] for e in entries}
    merged = [e for e in existing if e.get("model_path") not in new_paths] + entries
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _mirror_files(
    repo_dir: Path, result: PrefetchResult, entries: list[ModelInfo]
) -> tuple[list[Path], int, list[dict[str, Any]]]:
    written: list[Path] = []
    nbytes = 0
    by_name = {(i.model, i.opset, i.kind): i for i in result.items}
    manifest: list[dict[str, Any]] = []
    for info in entries:
        model_item = by_name.get((info.model, info.opset, "model"))
        if model_item is None or model_item.path is None:
            continue
        raw = json.loads(json.dumps(info.raw_model_info))
        data_item = by_name.get((info.model, info.opset, "test_data"))
        pairs = [(model_item.path, info.model_path, model_item.sha256)]
        if data_item is not None and data_item.path is not None and info.model_with_data_path:
            pairs.append((data_item.path, info.model_with_data_path, data_item.sha256))
        else:
            for key in ("model_with_data_path", "model_with_data_sha", "model_with_data_bytes"):
                raw.get("metadata", {}).pop(key, None)
        for source, rel, sha in pairs:
            target = repo_dir.joinpath(*rel.split("/"))
            try:
                if _publish_copy(source, target, sha):
                    nbytes += source.stat().st_size
            except OSError as exc:
                raise translate_oserror(exc, f"writing {target}") from exc
            written.append(target)
        manifest.append(raw)
    return written, nbytes, manifest


async def write_mirror(
    hub: AsyncHub, out_dir: Path, *, repo: str = DEFAULT_REPO, **selection: Any
) -> MirrorReport:
    """Prefetch ``selection`` (as :func:`~asynchub._onnx.prefetch.prefetch`; archives are kept
    packed) and write it in the mirror layout under ``out_dir`` (see the module docstring)."""
    from .prefetch import prefetch, select_entries

    spec = RepoSpec.parse(repo)
    selection["extract"] = False
    result = await prefetch(hub, repo=repo, **selection)
    entries = select_entries(
        await hub.manifest(repo),
        tags=selection.get("tags"),
        models=selection.get("models"),
        all=bool(selection.get("all")),
        all_opsets=bool(selection.get("all_opsets")),
    )
    repo_dir = Path(out_dir).joinpath(spec.owner, spec.name, *spec.ref.split("/"))
    files, nbytes, manifest = await hub.run_blocking(_mirror_files, repo_dir, result, entries)
    manifest_path = repo_dir / MANIFEST_NAME
    try:
        await hub.run_blocking(_write_manifest, manifest_path, manifest)
    except OSError as exc:
        raise translate_oserror(exc, f"writing {manifest_path}") from exc
    return MirrorReport(
        out_dir=Path(out_dir),
        repo_dir=repo_dir,
        manifest=manifest_path,
        files=tuple(files),
        entries=len(manifest),
        prefetch=result,
        bytes_written=nbytes,
    )
