"""Which repos are trusted, and what happens when one is not.

onnx.hub trusted only ``onnx/models`` at ``main`` and otherwise asked on stdin (and
``silent=True`` skipped the question without a trace, CVE-2026-28500). asynchub keeps that
default but never hangs and never trusts silently:

* trusted: ``onnx/models:main``; any repo named in ``HubConfig.trusted_repos`` /
  ``ASYNCHUB_TRUSTED_REPOS`` (``owner/name`` trusts every ref, ``owner/name:ref`` one ref);
  or ``trust_repo=True`` in the call;
* ``silent=True``: proceeds as onnx.hub did, but logs a warning naming the repo;
* stdin is a terminal: asks like onnx.hub (``[y/n]``); anything but ``y`` raises;
* otherwise (services, CI, notebooks without a TTY): :class:`UntrustedRepoError` at once,
  saying how to trust the repo.

Mirrors configured by the user never change whether a repo is trusted: trust is about whose
manifest names the files, not where the bytes come from (they are SHA-verified anyway).
"""

from __future__ import annotations

import logging
import sys

from .._config import HubConfig
from .._exceptions import UntrustedRepoError
from .urls import RepoSpec

__all__ = ["check", "is_trusted"]

log = logging.getLogger("asynchub")

DEFAULT_TRUSTED = RepoSpec("onnx", "models", "main")


def is_trusted(spec: RepoSpec, config: HubConfig) -> bool:
    if spec.key == DEFAULT_TRUSTED.key and spec.ref == DEFAULT_TRUSTED.ref:
        return True
    for entry in config.trusted_repos:
        name, _, ref = entry.partition(":")
        if name == spec.key and (not ref or ref == spec.ref.lower()):
            return True
    return False


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _ask(question: str) -> str:
    sys.stderr.write(question)
    sys.stderr.flush()
    try:
        return input().strip().lower()
    except EOFError:
        return ""


async def check(spec: RepoSpec, config: HubConfig, *, silent: bool, trust_repo: bool) -> None:
    """Return if files of ``spec`` may be fetched; raise :class:`UntrustedRepoError` if not."""
    if trust_repo or is_trusted(spec, config):
        return
    how = (
        f"pass trust_repo=True, or set ASYNCHUB_TRUSTED_REPOS={spec.owner}/{spec.name} "
        "(comma-separated owner/name list)"
    )
    if silent:
        log.warning("loading from untrusted repo %s because silent=True", spec)
        return
    message = (
        f"The model repo specification {spec} is not trusted and may contain security "
        "vulnerabilities. Only continue if you trust this repo."
    )
    if not _stdin_is_tty():
        raise UntrustedRepoError(f"{message} No terminal to ask on: to trust it, {how}.")
    import anyio.to_thread

    answer = await anyio.to_thread.run_sync(
        _ask, f"{message}\nContinue?[y/n] ", abandon_on_cancel=True
    )
    if answer != "y":
        raise UntrustedRepoError(
            f"Model loading cancelled: {spec} is not trusted. To trust it, {how}."
        )
