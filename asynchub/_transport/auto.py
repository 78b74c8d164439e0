"""The default transport: the buffered receive path (:mod:`.stream`) for direct connections,
aiohttp (:mod:`.aiohttp_transport`) where a proxy applies.

Why two: the buffered path reads bodies straight into reusable buffers (one copy per byte,
the kernel's), which is what makes a verified download cost little CPU; aiohttp stays for
proxies (HTTP CONNECT, proxy authentication, ``NO_PROXY`` rules) because that is a solved
problem there and not worth a second implementation. ``HubConfig.transport`` chooses:
``"auto"`` (this dispatch), ``"stream"`` or ``"aiohttp"`` (one of them for everything).
Both keep the same contract (:mod:`.base`), and the aiohttp one is only imported when used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from .._config import HubConfig
from .base import Response, Transport

if TYPE_CHECKING:
    from .aiohttp_transport import AiohttpTransport
    from .stream import StreamTransport

__all__ = ["AutoTransport", "default_transport"]


class AutoTransport:
    """Routes each request: through aiohttp when ``proxied(url)`` says a proxy applies, else
    through the buffered stream transport."""

    def __init__(self, config: HubConfig, *, proxied: Callable[[str], bool] | None = None) -> None:
        self._config = config
        self._proxied = proxied or (lambda url: False)
        self._stream: StreamTransport | None = None
        self._aiohttp: AiohttpTransport | None = None

    def _pick(self, url: str) -> Transport:
        if self._proxied(url):
            if self._aiohttp is None:
                from .aiohttp_transport import AiohttpTransport

                self._aiohttp = AiohttpTransport(self._config)
            return self._aiohttp
        if self._stream is None:
            from .stream import StreamTransport

            self._stream = StreamTransport(self._config)
        return self._stream

    def request(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[Response]:
        return self._pick(url).request(url, headers=headers)

    async def aclose(self) -> None:
        for transport in (self._stream, self._aiohttp):
            if transport is not None:
                await transport.aclose()


def default_transport(config: HubConfig) -> Transport:
    """The transport ``config.transport`` names (see the module docstring)."""
    if config.transport == "aiohttp":
        from .aiohttp_transport import AiohttpTransport

        return AiohttpTransport(config)
    if config.transport == "stream":
        from .stream import StreamTransport

        return StreamTransport(config)
    return AutoTransport(config)
