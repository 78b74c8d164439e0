"""Which proxy a URL goes through: :func:`proxy_for` (pure: no I/O, no environment).

Every transport asks :func:`proxy_for` before it connects; the environment is read once, in
``HubConfig.from_env`` (``_config.py``), never here. The rules follow curl and pip (requests):

* ``HubConfig.proxy`` (``ASYNCHUB_PROXY``, ``--proxy``) is used for every URL when set;
  otherwise ``https_proxy`` for ``https://`` URLs and ``http_proxy`` for ``http://`` ones, each
  falling back to ``all_proxy`` (``from_env`` does that fallback).
* ``no_proxy`` (``NO_PROXY``) lists hosts reached directly, also when ``proxy`` is set (as curl
  does with ``-x``): entries are separated by commas or spaces and compared without case;
  ``*`` alone matches every host; ``example.com``, ``.example.com`` and ``*.example.com`` all
  match ``example.com`` and every name under it (never ``badexample.com``); ``host:port``
  matches that port only (the URL's default port counts); an IP address matches itself and a
  CIDR block (``10.0.0.0/8``, ``fd00::/8``) every address in it. Names are not resolved to
  match an address entry (neither does curl).
* A proxy URL without a scheme is ``http://``; ``http://`` and ``https://`` proxies work (a
  ``CONNECT`` tunnel carries ``https://`` URLs); ``socks*://`` is refused by
  :func:`check_proxy_url` with a :class:`ConfigError`, instead of silently going direct.
* Credentials in a proxy URL (``http://user:password@host:port``) are sent as
  ``Proxy-Authorization: Basic`` and never shown: every message uses :func:`redact_url`.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .._exceptions import ConfigError

if TYPE_CHECKING:
    from .._config import HubConfig

__all__ = ["bypasses_proxy", "check_proxy_url", "proxy_for", "redact_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def redact_url(url: str) -> str:
    """``url`` with the password replaced by ``***`` (the user name is kept: it helps to see
    which account is used, and is not a secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<an unparseable URL>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    return parts._replace(netloc=netloc).geturl()


def check_proxy_url(value: str, *, name: str) -> str:
    """The proxy URL ``value`` of setting ``name``, normalised (``host:port`` gets ``http://``);
    :class:`ConfigError` when asynchub cannot use it."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(
            f"{name}={redact_url(value)} is not a proxy URL; use http://host:port"
        ) from None
    scheme = parts.scheme.lower()
    if scheme.startswith("socks"):
        raise ConfigError(
            f"{name}={redact_url(value)}: {scheme} proxies are not supported; use an http:// "
            "proxy, or list the hosts to reach directly in NO_PROXY"
        )
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={redact_url(value)} is not a proxy URL; use http://host:port")
    return text


def _entries(no_proxy: str) -> list[str]:
    return [e.strip().lower() for e in no_proxy.replace(" ", ",").split(",") if e.strip()]


def _split_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, ``v6``, ``cidr`` → (host, port or None)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


def _host_matches(pattern: str, host: str) -> bool:
    if "/" in pattern:
        try:
            return ipaddress.ip_address(host) in ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            return False
    try:
        return ipaddress.ip_address(pattern) == ipaddress.ip_address(host)
    except ValueError:
        pass
    domain = pattern.removeprefix("*").lstrip(".")
    return bool(domain) and (host == domain or host.endswith("." + domain))


def bypasses_proxy(url: str, no_proxy: str | None) -> bool:
    """Whether ``no_proxy`` says ``url`` is reached directly (rules in the module docstring)."""
    if not no_proxy:
        return False
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        port = None
    for entry in _entries(no_proxy):
        if entry == "*":
            return True
        pattern, entry_port = _split_entry(entry)
        if entry_port is not None and entry_port != port:
            continue
        if _host_matches(pattern.rstrip("."), host):
            return True
    return False


def proxy_for(url: str, config: HubConfig) -> str | None:
    """The proxy URL to reach ``url`` through (credentials included), or ``None`` to connect
    directly. Pure: decided from ``config`` alone."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "https":
        chosen = config.proxy or config.https_proxy
    elif scheme == "http":
        chosen = config.proxy or config.http_proxy
    else:
        return None
    if chosen is None or bypasses_proxy(url, config.no_proxy):
        return None
    return chosen
