"""Repo specs → manifest URL and ordered mirror URLs. Pure: no I/O.

A manifest path is inserted into a URL template one quoted segment at a time, and the result
must keep the template's scheme, host and port; a path can therefore never redirect a request to
another host (``//evil/x``, ``https://evil/x``, ``?``, ``#`` are all quoted or refused).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from .._config import GITHUB_MEDIA_URL, HF_ZOO_MIRROR_URL, HubConfig
from .._exceptions import ConfigError
from . import DEFAULT_REPO

__all__ = [
    "DEFAULT_REPO",
    "RepoSpec",
    "file_urls",
    "is_commit_ref",
    "manifest_url",
    "same_origin",
]

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_REF = re.compile(r"^[A-Za-z0-9_./-]+$")
_COMMIT = re.compile(r"^[0-9a-fA-F]{40}$")


@dataclass(frozen=True)
class RepoSpec:
    """``owner/name[:ref]`` (ref defaults to ``main``), as onnx.hub's ``repo`` argument."""

    owner: str
    name: str
    ref: str = "main"

    @classmethod
    def parse(cls, repo: str) -> RepoSpec:
        text = repo.strip()
        owner_name, _, ref = text.partition(":")
        owner, _, name = owner_name.partition("/")
        ref = ref or "main"
        if (
            not (_NAME.match(owner) and _NAME.match(name))
            or owner in {".", ".."}
            or name
            in {
                ".",
                "..",
            }
        ):
            raise ConfigError(
                f"repo {repo!r} is not of the form 'owner/name[:ref]' (e.g. 'onnx/models:main')"
            )
        if not _REF.match(ref) or ".." in ref.split("/"):
            raise ConfigError(f"repo {repo!r} has an invalid ref {ref!r}")
        return cls(owner, name, ref)

    @property
    def key(self) -> str:
        """``owner/name`` in lower case, the form trust lists use."""
        return f"{self.owner}/{self.name}".lower()

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}:{self.ref}"


def is_commit_ref(ref: str) -> bool:
    """A 40-hex ref names an immutable commit: its manifest never needs revalidation."""
    return bool(_COMMIT.match(ref))


def _check_template(template: str, *, what: str) -> None:
    try:
        parts = urlsplit(template.replace("{", "").replace("}", ""))
    except ValueError as exc:  # "Invalid IPv6 URL"
        raise ConfigError(f"{what} {template!r} is not a valid URL ({exc})") from None
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"{what} {template!r} must be an http(s) URL template")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def same_origin(a: str, b: str) -> bool:
    """Same scheme, host and port."""
    return _origin(a) == _origin(b)


def _fill(template: str, *, what: str, **values: str) -> str:
    _check_template(template, what=what)
    try:
        url = template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{what} {template!r} has an unknown placeholder: {exc}") from None
    empty = template.format(**{k: "" for k in values})
    if not same_origin(url, empty):
        raise ConfigError(f"{what}: filling {template!r} changed the URL's origin ({url!r})")
    return url


def manifest_url(config: HubConfig, spec: RepoSpec) -> str:
    """The manifest URL of ``spec`` under ``config.manifest_url``."""
    return _fill(
        config.manifest_url,
        what="manifest URL",
        owner=quote(spec.owner, safe=""),
        repo=quote(spec.name, safe=""),
        ref=quote(spec.ref, safe="/"),
    )


def default_file_templates(spec: RepoSpec) -> tuple[str, ...]:
    """Hugging Face's mirror of the zoo first for onnx/models, then GitHub's LFS media host."""
    if spec.key == "onnx/models":
        return (HF_ZOO_MIRROR_URL, GITHUB_MEDIA_URL)
    return (GITHUB_MEDIA_URL,)


def quote_path(path: str) -> str:
    """Quote each ``/``-separated segment so none can change the URL's structure."""
    return "/".join(quote(segment, safe="") for segment in path.split("/"))


def file_urls(config: HubConfig, spec: RepoSpec, path: str) -> list[str]:
    """The ordered mirror URLs for a manifest ``path`` (already validated by the manifest)."""
    templates = config.file_urls or default_file_templates(spec)
    return [
        _fill(
            template,
            what="file URL",
            owner=quote(spec.owner, safe=""),
            repo=quote(spec.name, safe=""),
            ref=quote(spec.ref, safe="/"),
            path=quote_path(path),
        )
        for template in templates
    ]
