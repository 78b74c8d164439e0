"""The one TLS context rule of every transport: verify always, trust the system store, and add
``config.ca_bundle`` when set (a proxy or firewall that inspects TLS). Blocking: loading the
trust store reads files, so transports build the context in a worker thread, once."""

from __future__ import annotations

import ssl
from pathlib import Path

from .._exceptions import TLSError

__all__ = ["verifying_context"]


def verifying_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """A verifying client context: the system trust store plus ``ca_bundle`` (a PEM file)."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(
                f"cannot load the CA bundle {ca_bundle}: {exc}; "
                "point ca_bundle (ASYNCHUB_CA_BUNDLE) at a PEM file"
            ) from exc
    return context
