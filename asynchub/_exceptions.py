"""The one error tree of asynchub.

Every error asynchub raises on purpose derives from :class:`HubError`. Lower-layer exceptions
(aiohttp, OSError, tarfile, json) are translated into this tree at the module that meets them
(``_transport/errors.py`` for sockets, DNS, TLS and timeouts, ``_transport/aiohttp_transport.py``
for aiohttp's own errors, ``_cache`` for the file system, ``_archive`` for tar files).

Network errors say what happened in words (``could not connect to HOST:PORT (connection
refused)``, ``HOST does not exist (DNS lookup failed)``, ``... does not exist (HTTP 404)``) and
what to do; a caller that knows more (the manifest fetch, a file's mirrors) adds its own context
and hints in front of and behind that message (:func:`amend`).

The errors onnx.hub raised as ``AssertionError`` (model not found, opset not found, manifest
not found, hash mismatch) are still ``AssertionError`` subclasses, so code written for
onnx.hub that catches ``AssertionError`` keeps working::

    HubError
    ├── ConfigError (ValueError)            a bad setting or argument
    ├── ManifestError (ValueError)          a manifest (or asset card) that fails validation
    ├── ManifestNotFoundError (AssertionError)
    ├── ModelNotFoundError (AssertionError, LookupError)
    ├── OpsetNotFoundError (AssertionError, LookupError)
    ├── UntrustedRepoError                  repo not trusted and no way to ask
    ├── OfflineError                        offline mode and nothing cached
    ├── HubClosedError                      the AsyncHub was closed before or during the call
    ├── TransferError                       the network failed us
    │   ├── NetworkError (OSError)          no conversation with the server at all
    │   │   ├── ConnectError                connection refused, network unreachable, reset
    │   │   ├── HostNotFoundError           the name does not resolve (DNS)
    │   │   ├── ConnectTimeoutError         no answer to the connection attempt in time
    │   │   ├── TLSError                    TLS handshake or certificate verification failed
    │   │   └── ProxyError                  the proxy could not be reached or refused
    │   ├── HTTPStatusError                 a non-retryable or exhausted HTTP status
    │   │   └── NotFoundError               404 / 410: the URL does not exist
    │   ├── ProtocolError                   a server broke the HTTP contract (range, encoding,
    │   │   │                               length)
    │   │   └── RedirectError               a redirect was refused (hops, target, downgrade)
    │   ├── StallError                      bytes stopped flowing
    │   └── MirrorsExhaustedError           every mirror failed (``errors`` lists why)
    ├── IntegrityError (AssertionError)     size or SHA-256 mismatch
    ├── ArchiveError                        unsafe or broken archive
    ├── CompositeModelError (ValueError)    two models cannot be merged
    └── CacheError (OSError)                the cache directory could not be used
        └── InsufficientSpaceError          not enough free disk space
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ArchiveError",
    "CacheError",
    "CompositeModelError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "HTTPStatusError",
    "HostNotFoundError",
    "HubClosedError",
    "HubError",
    "InsufficientSpaceError",
    "IntegrityError",
    "ManifestError",
    "ManifestNotFoundError",
    "MirrorsExhaustedError",
    "ModelNotFoundError",
    "NetworkError",
    "NotFoundError",
    "OfflineError",
    "OpsetNotFoundError",
    "ProtocolError",
    "ProxyError",
    "RedirectError",
    "StallError",
    "TLSError",
    "TransferError",
    "UntrustedRepoError",
    "amend",
]


class HubError(Exception):
    """Root of every error asynchub raises on purpose."""


class ConfigError(HubError, ValueError):
    """A setting or argument is invalid."""


class ManifestError(HubError, ValueError):
    """A manifest (or asset card) failed validation; the message names the entry and field."""


class ManifestNotFoundError(HubError, AssertionError):
    """The manifest could not be fetched and none is cached."""


class ModelNotFoundError(HubError, AssertionError, LookupError):
    """No manifest entry has the requested model name."""


class OpsetNotFoundError(HubError, AssertionError, LookupError):
    """The model exists but not at the requested opset."""


class UntrustedRepoError(HubError):
    """The repo is not trusted and the user could not be asked."""


class OfflineError(HubError):
    """Offline mode is on and what was asked for is not cached."""


class HubClosedError(HubError):
    """The hub was closed (``aclose``) before or while the operation ran; its downloads were
    cancelled and left resumable partial files."""


class TransferError(HubError):
    """A download failed."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class NetworkError(TransferError, OSError):
    """The server could not be reached at all (no HTTP answer). Also an ``OSError``, as the
    ``URLError`` that onnx.hub let through in this case was."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        TransferError.__init__(self, message, url=url)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConnectError(NetworkError):
    """The connection failed: refused, network or host unreachable, reset while connecting."""


class HostNotFoundError(NetworkError):
    """The host name does not resolve (or the DNS lookup itself failed)."""


class ConnectTimeoutError(NetworkError, TimeoutError):
    """Connecting took longer than ``connect_timeout``."""


class TLSError(NetworkError):
    """The TLS handshake or certificate verification failed (retrying will not help)."""


class ProxyError(NetworkError):
    """The proxy could not be reached, or refused to carry the request (``status``: its HTTP
    answer, e.g. 407); the message names the proxy with its password redacted."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message, url=url)
        self.status = status


class HTTPStatusError(TransferError):
    """The server answered with an HTTP status we cannot use."""

    def __init__(self, message: str, *, url: str | None = None, status: int = 0) -> None:
        super().__init__(message, url=url)
        self.status = status


class NotFoundError(HTTPStatusError):
    """The server says the URL does not exist (HTTP 404 or 410)."""


class ProtocolError(TransferError):
    """The server broke the HTTP contract (bad Content-Range, encoding, redirect, length)."""


class RedirectError(ProtocolError):
    """A redirect was refused (too many hops, bad target, or a downgrade to plain http)."""


class StallError(TransferError):
    """No (or too few) bytes arrived for too long."""


class MirrorsExhaustedError(TransferError):
    """Every mirror failed; ``errors`` holds (url, error) for each attempt."""

    def __init__(self, message: str, errors: Sequence[tuple[str, BaseException]]) -> None:
        super().__init__(message)
        self.errors = list(errors)


class IntegrityError(HubError, AssertionError):
    """Downloaded or cached bytes do not match the manifest's size or SHA-256."""


class ArchiveError(HubError):
    """An archive is broken or tries to write outside its target."""


class CompositeModelError(HubError, ValueError):
    """A preprocessing model and a network cannot be merged (conflicting domain versions)."""


class CacheError(HubError, OSError):
    """The cache directory could not be used (permissions, links, I/O errors)."""


class InsufficientSpaceError(CacheError):
    """Not enough free disk space for what was asked."""


def amend(exc: HubError, *, before: str = "", after: str = "") -> HubError:
    """Put context in front of ``exc``'s message and a hint behind it (in place: the type and
    attributes stay), and return it for ``raise``."""
    exc.args = (f"{before}{exc}{after}", *exc.args[1:])
    return exc
