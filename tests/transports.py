"""Which transport the engine tests run on: the default buffered receive path, or aiohttp with
``ASYNCHUB_TEST_TRANSPORT=aiohttp`` (both keep the same contract, so the same tests hold)."""

from __future__ import annotations

import os

from asynchub._config import HubConfig
from asynchub._transport.aiohttp_transport import AiohttpTransport
from asynchub._transport.base import Transport as TransportProtocol
from asynchub._transport.stream import StreamTransport

__all__ = ["NAME", "Transport"]

NAME = os.environ.get("ASYNCHUB_TEST_TRANSPORT", "stream")


def Transport(config: HubConfig) -> TransportProtocol:
    """A transport for ``config`` (see the module docstring)."""
    if NAME == "aiohttp":
        return AiohttpTransport(config)
    return StreamTransport(config)
