"""Row 5: TLS fails closed. A mirror whose certificate comes from an unknown CA (a throw-away
``trustme`` CA) is refused, whatever is asked of it; only an explicit ``ca_bundle`` (or
``ASYNCHUB_CA_BUNDLE``) naming that CA makes it usable, and even then the host name must match.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from asynchub import AsyncHub, HubConfig, HubError, MirrorsExhaustedError
from asynchub._exceptions import TLSError
from tests.conftest import mirror_config
from tests.hostile.helpers import entry, final_model, leftovers
from tests.mirror import MirrorServer

trustme = pytest.importorskip("trustme")

pytestmark = pytest.mark.timeout(60)


@dataclass
class Secure:
    server: MirrorServer
    bundle: Path  # the PEM of the CA that signed the server's certificate
    other_bundle: Path  # a PEM of an unrelated CA


def _server_context(ca: Any, *hosts: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(context)
    return context


async def _secure(mirror_root: Path, tmp_path: Path, *hosts: str) -> AsyncIterator[Secure]:
    ca, other = trustme.CA(), trustme.CA()
    bundle, other_bundle = tmp_path / "ca.pem", tmp_path / "other-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    other.cert_pem.write_to_path(str(other_bundle))
    async with MirrorServer(mirror_root, ssl_context=_server_context(ca, *hosts)) as server:
        yield Secure(server, bundle, other_bundle)


@pytest.fixture
async def secure(mirror_root: Path, tmp_path: Path) -> AsyncIterator[Secure]:
    async for value in _secure(mirror_root, tmp_path, "127.0.0.1"):
        yield value


@pytest.fixture
async def wrong_name(mirror_root: Path, tmp_path: Path) -> AsyncIterator[Secure]:
    async for value in _secure(mirror_root, tmp_path, "localhost", "mirror.example"):
        yield value


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _has_tls_error(exc: BaseException) -> bool:
    if isinstance(exc, MirrorsExhaustedError):
        return any(_has_tls_error(err) for _, err in exc.errors)
    return any(isinstance(e, TLSError) for e in _chain(exc))


async def _load(config: HubConfig) -> Any:
    async with AsyncHub(config) as hub:
        try:
            return await hub.load("TinyNet", opset=13)
        except HubError as exc:
            return exc


def _assert_nothing_cached(config: HubConfig) -> None:
    files = [p for p in config.cache_dir.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert files == [], f"TLS failed but files were cached: {files}"


@pytest.mark.parametrize("bundle", ["none", "unrelated-ca"])
async def test_unknown_ca_fails_closed_for_the_manifest(
    bundle: str, secure: Secure, tmp_path: Path
) -> None:
    extra = {"ca_bundle": secure.other_bundle} if bundle == "unrelated-ca" else {}
    config = mirror_config(secure.server.url, tmp_path / "cache", **extra)
    assert config.manifest_url.startswith("https://")
    outcome = await _load(config)
    assert isinstance(outcome, TLSError), outcome
    assert _has_tls_error(outcome), _chain(outcome)
    assert "TLS" in str(outcome) and "ca_bundle" in str(outcome)
    assert secure.server.requests == [], "an HTTP request went through an unverified channel"
    _assert_nothing_cached(config)


async def test_unknown_ca_fails_closed_for_model_files(
    secure: Secure, mirror: MirrorServer, tmp_path: Path, zoo_manifest: list[dict[str, Any]]
) -> None:
    """Manifest over plain http (trusted config), files from the https mirror: refused, not
    retried (a certificate does not get better), nothing cached."""
    config = mirror_config(
        mirror.url,
        tmp_path / "cache",
        file_urls=(secure.server.url + "/{owner}/{repo}/{ref}/{path}",),
    )
    outcome = await _load(config)
    assert isinstance(outcome, MirrorsExhaustedError), outcome
    assert _has_tls_error(outcome)
    assert secure.server.requests == []
    assert not final_model(config.cache_dir, entry(zoo_manifest, "TinyNet", 13)).exists()
    assert leftovers(config.cache_dir) == []


async def test_explicit_ca_bundle_is_accepted(
    secure: Secure, tmp_path: Path, zoo_manifest: list[dict[str, Any]]
) -> None:
    config = mirror_config(secure.server.url, tmp_path / "cache", ca_bundle=secure.bundle)
    model = await _load(config)
    assert not isinstance(model, HubError), model
    assert model.graph.node
    assert final_model(config.cache_dir, entry(zoo_manifest, "TinyNet", 13)).is_file()
    assert secure.server.requests


async def test_ca_bundle_from_the_environment_is_an_explicit_setting(
    secure: Secure, tmp_path: Path
) -> None:
    base = mirror_config(secure.server.url, tmp_path / "cache")
    env = {
        "ASYNCHUB_CACHE_DIR": str(tmp_path / "cache"),
        "ASYNCHUB_MANIFEST_URL": base.manifest_url,
        "ASYNCHUB_FILE_URLS": ",".join(base.file_urls or ()),
        "ASYNCHUB_CA_BUNDLE": str(secure.bundle),
    }
    config = HubConfig.from_env(env, retry=base.retry, chunk_size=base.chunk_size)
    assert config.ca_bundle == secure.bundle
    model = await _load(config)
    assert not isinstance(model, HubError), model
    without = HubConfig.from_env({k: v for k, v in env.items() if k != "ASYNCHUB_CA_BUNDLE"})
    assert without.ca_bundle is None


async def test_right_ca_but_wrong_host_name_fails_closed(
    wrong_name: Secure, tmp_path: Path
) -> None:
    config = mirror_config(wrong_name.server.url, tmp_path / "cache", ca_bundle=wrong_name.bundle)
    outcome = await _load(config)
    assert isinstance(outcome, TLSError), outcome
    assert _has_tls_error(outcome)
    assert wrong_name.server.requests == []
    _assert_nothing_cached(config)


async def test_unreadable_ca_bundle_is_a_clear_error(secure: Secure, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-pem.pem"
    bogus.write_text("this is not a certificate\n")
    config = mirror_config(secure.server.url, tmp_path / "cache", ca_bundle=bogus)
    outcome = await _load(config)
    assert isinstance(outcome, HubError), outcome
    assert _has_tls_error(outcome)
    assert "not-a-pem.pem" in str(outcome) or any(
        "not-a-pem.pem" in str(e) for e in _chain(outcome)
    )
    assert secure.server.requests == []
