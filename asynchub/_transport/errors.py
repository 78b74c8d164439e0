"""Socket, DNS, TLS and timeout failures in words a person understands (any transport).

:func:`translate_os_error` turns the standard library's exceptions (``OSError`` and its
``ConnectionRefusedError``, ``socket.gaierror``, ``ssl.SSLError``, ``TimeoutError``) met while
connecting to a URL into the asynchub error tree, each class with its own words and a hint of
what to do. A transport unwraps its library's wrapper first (aiohttp's
``ClientConnectorError.os_error``, ...) and passes the standard exception here, so every
transport reports the same failure the same way. Messages never contain library reprs
(``ConnectionKey(...)``, ``[Errno 111]``); a proxy is named with its password redacted.

=========================  ==================================================================
failure                    message (then a hint)
=========================  ==================================================================
connection refused         ``could not connect to HOST:PORT (connection refused)``
unreachable / reset        ``could not connect to HOST:PORT (network is unreachable)``
name not found             ``HOST does not exist (DNS lookup failed)``
name not valid             ``HOST is not a valid host name (...)``
DNS not answering          ``could not look up HOST (the DNS server did not answer)``
connect timeout            ``connecting to HOST:PORT timed out after N s``
certificate                ``the TLS certificate of HOST:PORT could not be verified (...)``
other TLS                  ``TLS with HOST:PORT failed (...)``
any of these, via proxy    ``could not connect to the proxy URL (...) to reach HOST:PORT``
=========================  ==================================================================
"""

from __future__ import annotations

import errno
import socket
import ssl
from urllib.parse import urlsplit

from .._exceptions import (
    ConnectError,
    ConnectTimeoutError,
    HostNotFoundError,
    NetworkError,
    ProxyError,
    TLSError,
)
from .proxy import redact_url

__all__ = [
    "NETWORK_HINT",
    "PROXY_HINT",
    "TLS_HINT",
    "describe_os_error",
    "host_port",
    "translate_os_error",
]

NETWORK_HINT = (
    "check the network connection and the proxy settings (HTTPS_PROXY, HTTP_PROXY, NO_PROXY, "
    "ASYNCHUB_PROXY or --proxy)"
)
PROXY_HINT = (
    "check the proxy URL (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, ASYNCHUB_PROXY or --proxy), or "
    "list the host in NO_PROXY to reach it directly"
)
TLS_HINT = (
    "if a proxy or firewall inspects TLS, point ca_bundle (ASYNCHUB_CA_BUNDLE) at its CA "
    "certificate (a PEM file); certificates are always verified"
)

_DNS_MISSING = {
    getattr(socket, name)
    for name in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY", "EAI_FAIL")
    if hasattr(socket, name)
}
_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ENETUNREACH: "network is unreachable",
    errno.EHOSTUNREACH: "host is unreachable",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed",
    errno.EADDRNOTAVAIL: "address not available",
    errno.ETIMEDOUT: "timed out",
}


def host_port(url: str) -> tuple[str, str]:
    """(host, ``host:port``) of ``url``, the port made explicit (``[v6]:port`` for IPv6)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        port = None
    shown = f"[{host}]" if ":" in host else host
    return host, f"{shown}:{port}" if port else shown


def describe_os_error(exc: BaseException) -> str:
    """A few words for ``exc`` (``connection refused``), never its repr."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message or exc.reason or "certificate verify failed")
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or "handshake failed").replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.errno in _WORDS:
        return _WORDS[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__


def translate_os_error(
    exc: BaseException,
    *,
    url: str,
    proxy: str | None = None,
    connect_timeout: float | None = None,
) -> NetworkError:
    """The asynchub error for ``exc``, met while connecting to ``url`` (through ``proxy`` when
    given: then the failure is the proxy's)."""
    host, where = host_port(url)
    if isinstance(exc, UnicodeError):  # IDNA refused the name before any lookup
        return HostNotFoundError(
            f"{host} is not a valid host name (a label is empty or longer than 63 characters); "
            "check the host in the URL",
            url=url,
        )
    if proxy is not None:
        shown = redact_url(proxy)
        words = describe_os_error(exc)
        if isinstance(exc, socket.gaierror):
            words = f"{host_port(proxy)[0]} does not exist"
        elif isinstance(exc, TimeoutError) and connect_timeout is not None:
            words = f"timed out after {connect_timeout:g} s"
        return ProxyError(
            f"could not connect to the proxy {shown} ({words}) to reach {where}; {PROXY_HINT}",
            url=url,
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(
            f"the TLS certificate of {where} could not be verified ({describe_os_error(exc)}); "
            + TLS_HINT,
            url=url,
        )
    if isinstance(exc, ssl.SSLError):
        return TLSError(f"TLS with {where} failed ({describe_os_error(exc)}); {TLS_HINT}", url=url)
    if isinstance(exc, socket.gaierror):
        if exc.errno in _DNS_MISSING:
            return HostNotFoundError(
                f"{host} does not exist (DNS lookup failed); check the spelling of the host in "
                f"the URL, then {NETWORK_HINT}",
                url=url,
            )
        return HostNotFoundError(
            f"could not look up {host} (the DNS server did not answer); {NETWORK_HINT}", url=url
        )
    if isinstance(exc, TimeoutError) or (isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT):
        after = f" after {connect_timeout:g} s" if connect_timeout is not None else ""
        return ConnectTimeoutError(
            f"connecting to {where} timed out{after}; {NETWORK_HINT}", url=url
        )
    return ConnectError(
        f"could not connect to {where} ({describe_os_error(exc)}); {NETWORK_HINT}", url=url
    )
