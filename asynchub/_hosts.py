"""Which hosts are local, and the rule "a public server may not send us to a local one".

A mirror's redirect, or a link in a document a public server sent (a MindSpore card's asset
link), could make the client call services on the user's machine or network (an admin page on
``127.0.0.1:<port>``, a cloud metadata service on ``169.254.169.254``) and echo their answer in
an error. So a redirect or a link *from* a host that is not local *to* one that is, is refused
with a :class:`~asynchub.RedirectError` before any request is sent. Between local hosts (a
mirror on the LAN redirecting to another, the test mirrors on 127.0.0.x) everything stays
allowed: the rule is "not from public to private", not "never private".

:func:`is_private_host` is the default classifier (``HubConfig.private_host``; inject another
one there, e.g. to call a test host "public"): a host is local when it is ``localhost`` (or a
``*.localhost`` name) or an address (an IP literal, or any address a name resolves to) that is
loopback, link-local, private (RFC 1918, unique-local ``fc00::/7``), unspecified, reserved,
multicast or shared (CGNAT, ``100.64.0.0/10``); IPv4-mapped IPv6 addresses count as their IPv4
address. A name that does not resolve is not known to be local (the request then fails on its
own). The check resolves names once with the system resolver, in a worker thread; a name that
resolves differently at connect time (DNS rebinding) is outside what this rule covers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit

from ._exceptions import RedirectError

__all__ = ["is_private_host", "refuse_public_to_private"]

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _local_address(address: _Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return True
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_reserved
        or address.is_multicast
    )


def is_private_host(host: str) -> bool:
    """Whether ``host`` (a name or an IP literal, brackets allowed) is local (see the module
    docstring). Blocking when ``host`` is a name: it is resolved."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if not name or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return _local_address(ipaddress.ip_address(name.partition("%")[0]))
    except ValueError:
        pass
    import socket  # here: the configuration (read by ``asynchub --help``) imports this module

    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    for info in infos:
        try:
            if _local_address(ipaddress.ip_address(str(info[4][0]).partition("%")[0])):
                return True
        except ValueError:
            continue
    return False


async def refuse_public_to_private(
    private_host: Callable[[str], bool], source: str, target: str, *, how: str = "redirected"
) -> None:
    """Raise :class:`RedirectError` when ``target``'s host is local and ``source``'s is not.
    The message names the local host, never anything it would have answered."""
    import anyio.to_thread  # the async core: imported when a redirect is followed

    source_host = (urlsplit(source).hostname or "").lower()
    target_host = (urlsplit(target).hostname or "").lower()
    if source_host == target_host:
        return
    if not await anyio.to_thread.run_sync(private_host, target_host):
        return
    if await anyio.to_thread.run_sync(private_host, source_host):
        return
    raise RedirectError(
        f"{source[:200]} {how} to {target_host[:100]}, a local or private address; refused "
        "(a public server may not send asynchub to services on this machine or network). "
        "If this is intended, serve the file from a mirror on that network instead",
        url=source,
    )
