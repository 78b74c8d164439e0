"""A public server cannot send the client to a loopback, link-local or private address.

The rule is "not from public to private": a redirect (or a card's asset link) from a host that
is not local to one that is (loopback, link-local, RFC 1918 / unique-local, unspecified,
CGNAT) is refused with a :class:`RedirectError` before any request reaches it, so the other
service's answer (its status, its body) never shows in an error. Redirects between local hosts
(the test mirrors on 127.0.0.x) stay allowed.

Which hosts are local is decided by ``HubConfig.private_host`` (``host -> bool``): the default
classifies IP literals with :mod:`ipaddress` and resolves names. Every test server here listens
on 127.0.0.x, so the end-to-end tests inject a classifier that calls 127.0.0.2 "public".
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asynchub import AsyncHub, HubConfig, HubError, MirrorsExhaustedError, ProtocolError
from asynchub import mindspore as ms
from tests.conftest import REPO_PREFIX, mirror_config
from tests.hostile.helpers import leftovers, write_manifest
from tests.hostile.netfaults import RawServer, blob_entry, card_text, fixed
from tests.mirror import Fault, MirrorServer, can_bind

pytestmark = pytest.mark.timeout(60)

REL = "validated/blob/blob.bin"
PUBLIC = "127.0.0.2"
SECRET = "internal-admin-status-418"
#: The private service's status as a number of its own (a random port such as 41809 in a URL
#: of the message contains the digits too).
STATUS = re.compile(r"(?<!\d)418(?!\d)")


def _pretend_public(host: str) -> bool:
    return host != PUBLIC and HubConfig().private_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST.", "api.localhost",
        "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "fe80::1", "fc00::1",
        "fd12:3456::1", "0.0.0.0", "::", "100.64.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    ],
)  # fmt: skip
def test_local_addresses_are_private(host: str) -> None:
    assert HubConfig().private_host(host) is True


@pytest.mark.parametrize("host", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "93.184.216.34"])
def test_public_addresses_are_not_private(host: str) -> None:
    assert HubConfig().private_host(host) is False


@pytest.fixture
async def admin() -> AsyncIterator[RawServer]:
    """Another service on a local port, which must never be reached."""
    async with RawServer(fixed("418 I'm a teapot", {}, SECRET.encode())) as server:
        yield server


@pytest.fixture
async def public_mirror(mirror_root: Path) -> AsyncIterator[MirrorServer]:
    if not can_bind(PUBLIC):
        pytest.skip(f"{PUBLIC} cannot be bound on this machine")
    async with MirrorServer(mirror_root, hosts=(PUBLIC,)) as server:
        yield server


async def test_redirect_from_public_to_private_is_refused(
    public_mirror: MirrorServer, admin: RawServer, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    (public_mirror.root / REPO_PREFIX / REL).parent.mkdir(parents=True, exist_ok=True)
    (public_mirror.root / REPO_PREFIX / REL).write_bytes(data)
    write_manifest(public_mirror, [blob_entry("Blob", REL, data)])
    public_mirror.add_fault(
        Fault("redirect", path="*blob.bin", location=f"{admin.url}/admin/status", times=None)
    )
    cache = tmp_path / "cache"
    config = mirror_config(public_mirror.url, cache, private_host=_pretend_public)
    async with AsyncHub(config) as hub:
        with pytest.raises(HubError) as caught:
            await hub.download("Blob")
    error = caught.value
    assert isinstance(error, MirrorsExhaustedError), error
    assert all(isinstance(e, ProtocolError) for _, e in error.errors), error.errors
    assert admin.requests == [], "the private service was reached"
    assert SECRET not in str(error) and not STATUS.search(str(error))
    assert "private" in str(error) or "local" in str(error)
    assert len(str(error)) <= 2000
    assert leftovers(cache) == []


async def test_redirect_within_loopback_is_allowed(
    public_mirror: MirrorServer, mirror: MirrorServer, tmp_path: Path
) -> None:
    """Default classifier: 127.0.0.2 and 127.0.0.1 are both local, so the redirect is fine."""
    data = os.urandom(100_000)
    (mirror.root / REPO_PREFIX / REL).parent.mkdir(parents=True, exist_ok=True)
    (mirror.root / REPO_PREFIX / REL).write_bytes(data)
    write_manifest(public_mirror, [blob_entry("Blob", REL, data)])
    target = f"{mirror.url}/{REPO_PREFIX}/{REL}"
    public_mirror.add_fault(Fault("redirect", path="*blob.bin", location=target, times=1))
    config = mirror_config(public_mirror.url, tmp_path / "cache")
    async with AsyncHub(config) as hub:
        path = await hub.download("Blob")
    assert path.read_bytes() == data
    assert mirror.requests_for("*blob.bin")


async def test_card_link_from_public_to_private_is_refused(
    tmp_path: Path, admin: RawServer
) -> None:
    if not can_bind(PUBLIC):
        pytest.skip(f"{PUBLIC} cannot be bound on this machine")
    root = tmp_path / "mirror"
    root.mkdir()
    data = os.urandom(2000)
    link = f"{admin.url}/admin/weights.ckpt"
    async with MirrorServer(root, hosts=(PUBLIC,)) as server:
        server.set_file(
            "cards/test/private.md", card_text(link, hashlib.sha256(data).hexdigest()).encode()
        )
        config = mirror_config(
            server.url,
            tmp_path / "cache",
            mindspore_card_url=server.url + "/cards/{uid}.md",
            private_host=_pretend_public,
        )
        async with AsyncHub(config) as hub:
            with pytest.raises(HubError) as caught:
                await ms.adownload_weights("test/private", hub=hub)
    assert admin.requests == [], "the private service was reached"
    assert SECRET not in str(caught.value) and not STATUS.search(str(caught.value))
    assert len(str(caught.value)) <= 2000
