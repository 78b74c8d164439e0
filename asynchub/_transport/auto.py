"""The default transport: the buffered receive path (:mod:`.stream`) for direct connections,
aiohttp (:mod:`.aiohttp_transport`) where a proxy applies.

Why two: the buffered path reads bodies straight into reusable buffers (one copy per byte,
the kernel's), which is what makes a verified download cost little CPU; aiohttp stays for
proxies (HTTP CONNECT, proxy authentication, ``NO_PROXY`` rules) because that is a solved
problem there and not worth a second implementation. ``HubConfig.transport`` chooses:
``"auto"`` (this dispatch), ``"stream"`` or ``"aiohttp"`` (one of them for everything).
Both keep the same contract (:mod:`.base`); both modules are imported with this one (off the
event loop, with the async core), aiohttp itself only when a proxied request needs it.
``"stream"`` ignores proxy settings (for measurements); ``"auto"`` is the default.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager

from .._config import HubConfig
from .aiohttp_transport import AiohttpTransport  # cheap: aiohttp itself loads on first use
from .base import Response, Transport
from .proxy import proxy_for
from .stream import NeedsProxy, StreamTransport

__all__ = ["AutoTransport", "default_transport"]


class AutoTransport:
    """Routes each request: through aiohttp when a proxy applies to its URL
    (:func:`.proxy.proxy_for`), else through the buffered stream transport. A direct request
    redirected to a URL that needs a proxy is asked again through aiohttp from the start."""

    def __init__(self, config: HubConfig) -> None:
        self._config = config
        self._stream: StreamTransport | None = None
        self._aiohttp: AiohttpTransport | None = None

    def _proxied(self, url: str) -> bool:
        return proxy_for(url, self._config) is not None

    def _via_aiohttp(self) -> Transport:
        if self._aiohttp is None:
            self._aiohttp = AiohttpTransport(self._config)
        return self._aiohttp

    def _direct(self) -> StreamTransport:
        if self._stream is None:
            self._stream = StreamTransport(self._config, needs_proxy=self._proxied)
        return self._stream

    def request(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[Response]:
        return self._request(url, headers)

    @contextlib.asynccontextmanager
    async def _request(
        self, url: str, headers: Mapping[str, str] | None
    ) -> AsyncIterator[Response]:
        if not self._proxied(url):
            try:
                async with self._direct().request(url, headers=headers) as response:
                    yield response
                return
            except NeedsProxy:
                pass  # a redirect led to a proxied URL: the whole request through aiohttp
        async with self._via_aiohttp().request(url, headers=headers) as response:
            yield response

    async def aclose(self) -> None:
        for transport in (self._stream, self._aiohttp):
            if transport is not None:
                await transport.aclose()


def default_transport(config: HubConfig) -> Transport:
    """The transport ``config.transport`` names (see the module docstring)."""
    if config.transport == "aiohttp":
        return AiohttpTransport(config)
    if config.transport == "stream":
        return StreamTransport(config)
    return AutoTransport(config)
