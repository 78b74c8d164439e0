"""Drive the original ``onnx.hub`` (onnx 1.20.1, its own virtual environment) against a mirror.

Usage: ``.venv-onnx120/bin/python _drive_onnxhub.py '<json>'`` with keys ``op``
(``download`` | ``load`` | ``load_many``), ``manifest_url``, ``file_url`` (templates as for
asynchub), ``cache_dir``, ``repo``, ``model`` or ``tags``/``models``.

onnx.hub builds GitHub URLs in ``_get_base_url``; here that function returns a marker and the
module's ``urlopen`` maps marked URLs onto the mirror's templates. Nothing else of onnx.hub is
changed, so its one-stream download, its manifest fetch on every call and its whole-file read
for hashing are measured as they are.

* ``download`` -- what ``hub.load`` does before parsing: ``get_model_info`` (fetches the
  manifest), ``_download_file`` to the cache path, read the file and check its SHA-256. onnx.hub
  has no public download-only call; this spares it the parse so it is compared with
  ``asynchub.download`` like for like.
* ``load`` -- ``hub.load(model, repo, silent=True)`` (cold or warm, as the cache is).
* ``load_many`` -- ``hub.load`` of each selected model, one by one, as a user of onnx.hub would
  fetch a tag.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Any
from urllib.parse import quote

MANIFEST_MARK = "bench-manifest:"
FILE_MARK = "bench-file:"


def _patch(hub: Any, manifest_tpl: str, file_tpl: str) -> None:
    real_urlopen = hub.urlopen

    def fill(template: str, repo: str, path: str = "") -> str:
        owner, name, ref = hub._parse_repo_info(repo)
        return template.format(owner=owner, repo=name, ref=ref,
                               path="/".join(quote(p, safe="") for p in path.split("/")))

    def get_base_url(repo: str, lfs: bool = False) -> str:
        return f"{FILE_MARK if lfs else MANIFEST_MARK}{repo}|"

    def urlopen(url: str, *args: Any, **kwargs: Any) -> Any:
        for mark, template in ((MANIFEST_MARK, manifest_tpl), (FILE_MARK, file_tpl)):
            if isinstance(url, str) and url.startswith(mark):
                repo, _, rest = url[len(mark):].partition("|")
                url = fill(template, repo, rest)
                break
        return real_urlopen(url, *args, **kwargs)

    hub._get_base_url = get_base_url
    hub.urlopen = urlopen


def _download(hub: Any, model: str, repo: str) -> int:
    info = hub.get_model_info(model, repo)
    parts = info.model_path.split("/")
    parts[-1] = f"{info.model_sha}_{parts[-1]}"
    local = os.path.join(hub.get_dir(), *parts)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    hub._download_file(hub._get_base_url(repo, True) + info.model_path, local)
    with open(local, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != info.model_sha:
        raise AssertionError(f"SHA-256 mismatch for {local}")
    return len(data)


def _run(params: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    from onnx import hub  # type: ignore[attr-defined]  # onnx 1.20 (its own venv)

    t1 = time.perf_counter()
    _patch(hub, params["manifest_url"], params["file_url"])
    hub.set_dir(params["cache_dir"])
    repo, op = params["repo"], params["op"]
    result: dict[str, Any] = {"import_seconds": t1 - t0}
    start = time.perf_counter()
    if op == "download":
        result["bytes"] = _download(hub, params["model"], repo)
    elif op == "load":
        proto = hub.load(params["model"], repo, silent=True)
        result["bytes"] = proto.ByteSize()
    elif op == "load_many":
        names = list(params.get("models") or [])
        if params.get("tags"):
            names += [m.model for m in hub.list_models(repo, tags=list(params["tags"]))]
        total = 0
        for name in names:
            total += hub.load(name, repo, silent=True).ByteSize()
        result["bytes"], result["models"] = total, len(names)
    else:
        raise SystemExit(f"unknown op {op!r}")
    result["seconds"] = time.perf_counter() - start
    return result


if __name__ == "__main__":
    from _driver import run_driver

    sys.exit(run_driver(_run))
