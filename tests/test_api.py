"""The onnx.hub contract (DESIGN §2) through the public API, against a local mirror."""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import asynchub
from asynchub import AsyncHub, Hub, HubConfig
from asynchub._cache.layout import cache_path
from asynchub._config import default_cache_dir
from tests.conftest import REPO_PREFIX, mirror_config
from tests.mirror import MirrorServer

pytestmark = pytest.mark.timeout(60)

ONNX_HUB_SIGNATURES = {
    "load": ["model", "repo", "opset", "force_reload", "silent"],
    "download_model_with_test_data": ["model", "repo", "opset", "force_reload", "silent"],
    "list_models": ["repo", "model", "tags"],
    "get_model_info": ["model", "repo", "opset"],
    "load_composite_model": [
        "network_model",
        "preprocessing_model",
        "network_repo",
        "preprocessing_repo",
        "opset",
        "force_reload",
        "silent",
    ],
    "set_dir": ["new_dir"],
    "get_dir": [],
}
DEFAULTS = {
    "repo": "onnx/models:main",
    "network_repo": "onnx/models:main",
    "preprocessing_repo": "onnx/models:main",
    "opset": None,
    "force_reload": False,
    "silent": False,
    "model": None,
    "tags": None,
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(manifest: list[dict[str, Any]], name: str, opset: int) -> dict[str, Any]:
    return next(e for e in manifest if e["model"] == name and e["opset_version"] == opset)


# -- names and signatures ----------------------------------------------------------------
@pytest.mark.parametrize("module", [asynchub, asynchub.hub], ids=["asynchub", "asynchub.hub"])
def test_onnx_hub_names_parameters_and_defaults(module: Any) -> None:
    for name, params in ONNX_HUB_SIGNATURES.items():
        for fn_name in (name, "a" + name) if name not in {"set_dir", "get_dir"} else (name,):
            sig = inspect.signature(getattr(module, fn_name))
            positional = [p.name for p in sig.parameters.values() if p.kind is not p.KEYWORD_ONLY]
            assert positional == params, fn_name
            for p in sig.parameters.values():
                if p.name in DEFAULTS and p.kind is not p.KEYWORD_ONLY and p.name != "model":
                    assert p.default == DEFAULTS[p.name], (fn_name, p.name)
            if fn_name.startswith("a"):
                assert inspect.iscoroutinefunction(getattr(module, fn_name)), fn_name
    for extra in ("download", "adownload", "Hub", "AsyncHub", "HubConfig", "ModelInfo"):
        assert hasattr(module, extra)
    assert sorted(asynchub.__all__) == list(asynchub.__all__)


def test_model_info_prints_like_onnx_hub(zoo_manifest: list[dict[str, Any]]) -> None:
    raw = _entry(zoo_manifest, "TinyNet", 13)
    info = asynchub.ModelInfo(raw)
    assert str(info) == (
        f"ModelInfo(model=TinyNet, opset=13, path={raw['model_path']}, metadata={raw['metadata']})"
    )
    assert info.tags == set(raw["metadata"]["tags"])
    assert info.model_sha == raw["metadata"]["model_sha"]
    assert info.raw_model_info is raw or info.raw_model_info == raw


# -- cache directory rules ---------------------------------------------------------------
def test_cache_dir_rules(tmp_path: Path) -> None:
    home = Path("~").expanduser()
    assert default_cache_dir({}) == home / ".cache" / "onnx" / "hub"
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "onnx" / "hub"
    env = {"XDG_CACHE_HOME": "/elsewhere", "ONNX_HOME": str(tmp_path / "o")}
    assert default_cache_dir(env) == tmp_path / "o" / "hub"


def test_set_dir_and_get_dir(tmp_path: Path) -> None:
    assert asynchub.get_dir() == str(tmp_path / "onnx_home" / "hub")  # from ONNX_HOME
    asynchub.set_dir(tmp_path / "elsewhere")
    assert asynchub.get_dir() == str(tmp_path / "elsewhere")


# -- list / info / selection rules through a served manifest -----------------------------
async def test_list_models_and_selection(ahub: AsyncHub) -> None:
    everything = await ahub.list_models()
    assert [m.model for m in everything][:3] == ["TinyNet", "TinyNet", "TinyNet"]
    assert {m.opset for m in await ahub.list_models(model="tinynet")} == {7, 12, 13}
    assert await ahub.list_models(model="TinyNet-preproc", tags=["text"]) == []
    assert await ahub.list_models(tags=[]) == []
    assert {m.model for m in await ahub.list_models(tags=["TEXT"])} == {"NanoText"}
    assert (await ahub.get_model_info("tinynet")).opset == 13
    assert (await ahub.get_model_info("TinyNet", opset=7)).opset == 7
    with pytest.raises(asynchub.ModelNotFoundError, match="No models found with name Nope"):
        await ahub.get_model_info("Nope")
    with pytest.raises(AssertionError, match=r"Valid opsets: \[7, 12, 13\]"):
        await ahub.get_model_info("TinyNet", opset=99)


# -- load / download / cache layout ------------------------------------------------------
async def test_load_verifies_and_uses_onnx_hub_cache_layout(
    ahub: AsyncHub, zoo_manifest: list[dict[str, Any]], zoo_dir: Path
) -> None:
    raw = _entry(zoo_manifest, "TinyNet", 13)
    model = await ahub.load("TinyNet")
    assert isinstance(model, onnx.ModelProto)
    path = Path(ahub.get_dir()) / Path(raw["model_path"]).parent
    expected = path / f"{raw['metadata']['model_sha']}_{Path(raw['model_path']).name}"
    assert expected.read_bytes() == (zoo_dir / raw["model_path"]).read_bytes()
    assert model == onnx.load(str(expected))
    assert await ahub.download("TinyNet") == expected


async def test_warm_load_makes_no_request_and_force_reload_fetches(
    ahub: AsyncHub, mirror: MirrorServer
) -> None:
    await ahub.load("NanoText")
    before = len(mirror.requests_for("*nanotext*"))
    await ahub.load("NanoText")
    assert len(mirror.requests_for("*nanotext*")) == before
    await ahub.load("NanoText", force_reload=True)
    assert len(mirror.requests_for("*nanotext*")) > before


async def test_corrupted_cache_file_is_fetched_again(ahub: AsyncHub) -> None:
    path = await ahub.download("MicroNet")
    good = path.read_bytes()
    path.write_bytes(b"X" + good[1:])
    assert _sha(path) != path.name.split("_")[0]
    model = await ahub.load("MicroNet")
    assert path.read_bytes() == good
    assert model.graph.node


async def test_hash_mismatch_on_every_mirror_raises_and_caches_nothing(
    ahub: AsyncHub, mirror: MirrorServer, zoo_manifest: list[dict[str, Any]]
) -> None:
    raw = _entry(zoo_manifest, "MicroNet", 11)
    original = (mirror.root / REPO_PREFIX / raw["model_path"]).read_bytes()
    mirror.set_file(f"{REPO_PREFIX}/{raw['model_path']}", original[:-1] + b"\x00")
    with pytest.raises(AssertionError) as caught:
        await ahub.load("MicroNet")
    assert isinstance(caught.value, asynchub.HubError)
    final = cache_path(Path(ahub.get_dir()), raw["model_path"], raw["metadata"]["model_sha"])
    assert not final.exists()


async def test_mirror_failover(mirror: MirrorServer, tmp_path: Path) -> None:
    config = mirror_config(mirror.url, tmp_path / "cache").replace(
        file_urls=(
            mirror.url + "/missing/{owner}/{repo}/{ref}/{path}",
            mirror.url + "/{owner}/{repo}/{ref}/{path}",
        )
    )
    async with AsyncHub(config) as hub:
        model = await hub.load("LegacyNet")
    assert model.opset_import[0].version == 6
    assert mirror.requests_for("/missing/*")
    assert any(r.path.startswith(f"/{REPO_PREFIX}/validated") for r in mirror.requests)


# -- manifest caching, revalidation, offline ---------------------------------------------
async def test_manifest_revalidated_with_etag_then_offline(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    config = mirror_config(mirror.url, tmp_path / "cache")
    async with AsyncHub(config) as hub:
        await hub.load("TinyNet")
    async with AsyncHub(config) as hub:
        await hub.list_models()
    manifest_requests = mirror.requests_for("*/ONNX_HUB_MANIFEST.json")
    assert len(manifest_requests) == 2
    assert "If-None-Match" in manifest_requests[1].headers
    await mirror.stop()
    async with AsyncHub(config.replace(offline=True)) as hub:
        assert (await hub.load("TinyNet")).graph.node
    # network down but online mode: the cached manifest is used with a warning
    async with AsyncHub(config) as hub:
        assert len(await hub.list_models()) == 7


async def test_offline_without_cache_is_a_clear_error(tmp_path: Path) -> None:
    config = mirror_config("http://127.0.0.1:9", tmp_path / "cache", offline=True)
    async with AsyncHub(config) as hub:
        with pytest.raises(asynchub.ManifestNotFoundError, match="offline"):
            await hub.list_models()


async def test_commit_ref_manifest_is_never_revalidated(
    mirror: MirrorServer, mirror_root: Path, tmp_path: Path
) -> None:
    commit = "a" * 40
    (mirror_root / "onnx" / "models" / commit).symlink_to(mirror_root / REPO_PREFIX)
    config = mirror_config(mirror.url, tmp_path / "cache")
    for _ in range(2):
        async with AsyncHub(config) as hub:
            assert await hub.list_models(repo=f"onnx/models:{commit}")
    assert len(mirror.requests_for(f"*/{commit}/ONNX_HUB_MANIFEST.json")) == 1


async def test_missing_manifest_is_assertion_error(ahub: AsyncHub) -> None:
    with pytest.raises(AssertionError, match="Could not find manifest at "):
        await ahub.list_models(repo="nobody/nothing:main")


async def test_hostile_manifest_entry_is_refused(
    mirror: MirrorServer, zoo_manifest: list[dict[str, Any]], ahub: AsyncHub
) -> None:
    import json

    bad = [dict(zoo_manifest[0], model_path="../../etc/passwd")]
    mirror.set_file(f"{REPO_PREFIX}/ONNX_HUB_MANIFEST.json", json.dumps(bad).encode())
    with pytest.raises(asynchub.ManifestError, match="model_path"):
        await ahub.list_models()


# -- trust -------------------------------------------------------------------------------
async def test_untrusted_repo_without_tty_raises_and_says_how(
    mirror: MirrorServer, mirror_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (mirror_root / "someone" / "zoo").mkdir(parents=True)
    (mirror_root / "someone" / "zoo" / "main").symlink_to(mirror_root / REPO_PREFIX)
    config = mirror_config(mirror.url, tmp_path / "cache")
    async with AsyncHub(config) as hub:
        with pytest.raises(asynchub.UntrustedRepoError, match="ASYNCHUB_TRUSTED_REPOS"):
            await hub.load("TinyNet", repo="someone/zoo")
        assert not mirror.requests_for("*.onnx")
        assert (await hub.load("TinyNet", repo="someone/zoo", trust_repo=True)).graph.node
        with caplog.at_level(logging.WARNING, logger="asynchub"):
            await hub.load("TinyNet", repo="someone/zoo", opset=7, silent=True)
        assert "untrusted" in caplog.text
    trusted = config.replace(trusted_repos=frozenset({"someone/zoo"}))
    async with AsyncHub(trusted) as hub:
        assert (await hub.load("TinyNet", repo="someone/zoo", opset=12)).graph.node


# -- sync façade -------------------------------------------------------------------------
def _env_for(mirror: MirrorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ASYNCHUB_MANIFEST_URL", mirror.url + "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json"
    )
    monkeypatch.setenv("ASYNCHUB_FILE_URLS", mirror.url + "/{owner}/{repo}/{ref}/{path}")


def test_sync_api_from_env_and_threads(
    mirror_root: Path, monkeypatch: pytest.MonkeyPatch, zoo_dir: Path
) -> None:
    with MirrorServer(mirror_root).running() as server:
        _env_for(server, monkeypatch)
        assert len(asynchub.list_models()) == 7
        results: list[Any] = []
        errors: list[BaseException] = []

        def worker(name: str) -> None:
            try:
                results.append(asynchub.load(name))
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [
            threading.Thread(target=worker, args=(n,))
            for n in ("TinyNet", "NanoText", "TinyNet", "LegacyNet")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert len(results) == 4
        assert len(server.requests_for("*tinynet-13.onnx")) >= 1


async def test_sync_load_inside_a_running_event_loop(mirror_root: Path, tmp_path: Path) -> None:
    with (
        MirrorServer(mirror_root).running() as server,
        Hub(mirror_config(server.url, tmp_path / "cache")) as hub,
    ):
        model = hub.load("TinyNet", opset=12)  # called while this test's loop runs
    assert model.opset_import[0].version == 12


# -- test data and composite models ------------------------------------------------------
async def test_download_model_with_test_data_runs(ahub: AsyncHub) -> None:
    folder = Path(await ahub.download_model_with_test_data("TinyNet"))
    assert (folder / "model.onnx").is_file()
    data_dirs = sorted(folder.glob("test_data_set_*"))
    assert data_dirs
    inputs = onnx.load_tensor(str(data_dirs[0] / "input_0.pb"))
    expected = onnx.load_tensor(str(data_dirs[0] / "output_0.pb"))
    session = ReferenceEvaluator(onnx.load(str(folder / "model.onnx")))
    (got,) = session.run(None, {session.input_names[0]: numpy_helper.to_array(inputs)})
    np.testing.assert_allclose(got, numpy_helper.to_array(expected), rtol=1e-5)
    marker_mtime = folder.stat().st_mtime_ns
    assert Path(await ahub.download_model_with_test_data("TinyNet")) == folder
    assert folder.stat().st_mtime_ns == marker_mtime
    with pytest.raises(AssertionError, match="no test data"):
        await ahub.download_model_with_test_data("MicroNet")


async def test_load_composite_model_converts_and_merges(ahub: AsyncHub) -> None:
    merged = await ahub.load_composite_model("TinyNet", "TinyNet-preproc")
    onnx.checker.check_model(merged)
    versions = {o.domain or "ai.onnx": o.version for o in merged.opset_import}
    assert versions["ai.onnx"] == 13
    session = ReferenceEvaluator(merged)
    assert len(session.input_names) == 1


def test_composite_domain_conflict_is_detected() -> None:
    from onnx import TensorProto, helper

    from asynchub._onnx.composite import merge_preprocessing

    def model(custom_version: int) -> onnx.ModelProto:
        node = helper.make_node("Identity", ["x"], ["y"])
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        return helper.make_model(
            graph,
            opset_imports=[
                helper.make_opsetid("", 13),
                helper.make_opsetid("com.x", custom_version),
            ],
        )

    with pytest.raises(asynchub.CompositeModelError, match=r"com\.x"):
        merge_preprocessing(model(1), model(2))
    import onnx.compose

    assert merge_preprocessing(model(1), onnx.compose.add_prefix(model(1), "p_")).graph.node


# -- parity with the real manifest served by the fixture ---------------------------------
async def test_real_manifest_parity(
    real_manifest_bytes: bytes, mirror: MirrorServer, ahub: AsyncHub
) -> None:
    mirror.set_file(f"{REPO_PREFIX}/ONNX_HUB_MANIFEST.json", real_manifest_bytes)
    everything = await ahub.list_models()
    assert len(everything) == 184
    assert len({m.model for m in everything}) == 116
    assert len(await ahub.list_models(model="mnist", tags=["vision"])) == 3
    assert len(await ahub.list_models(tags=["vision"])) == 172
    assert (await ahub.get_model_info("mnist")).opset == 8
    with pytest.raises(AssertionError, match=r"\[1, 7, 8\]"):
        await ahub.get_model_info("MNIST", opset=9)


def test_hub_config_is_frozen_and_validated(tmp_path: Path) -> None:
    config = HubConfig(cache_dir=tmp_path)
    with pytest.raises(AttributeError):
        config.offline = True  # type: ignore[misc]
    with pytest.raises(asynchub.ConfigError):
        HubConfig(cache_dir=tmp_path, max_connections=0)
    with pytest.raises(asynchub.ConfigError, match="ASYNCHUB_CHUNK_SIZE"):
        HubConfig.from_env({"ASYNCHUB_CHUNK_SIZE": "lots"})
    env = {"ASYNCHUB_CHUNK_SIZE": "8Mi", "ASYNCHUB_OFFLINE": "1", "ONNX_HOME": str(tmp_path)}
    cfg = HubConfig.from_env(env, offline=False)
    assert (cfg.chunk_size, cfg.offline, cfg.cache_dir) == (8 << 20, False, tmp_path / "hub")
    decimal = HubConfig.from_env({"ASYNCHUB_CHUNK_SIZE": "8M", "ASYNCHUB_LIMIT_RATE": "2.5MB/s"})
    assert (decimal.chunk_size, decimal.limit_rate) == (8_000_000, 2_500_000)
    with pytest.raises(asynchub.ConfigError, match="ASYNCHUB_MAX_CONNECTIONS=0 must be at least"):
        HubConfig.from_env({"ASYNCHUB_MAX_CONNECTIONS": "0"})


async def test_warm_load_in_a_new_hub_sends_no_request_at_all(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    config = mirror_config(mirror.url, tmp_path / "cache")
    async with AsyncHub(config) as hub:
        await hub.load("TinyNet")
        await hub.download_model_with_test_data("NanoText")
    before = len(mirror.requests)
    async with AsyncHub(config) as hub:
        assert (await hub.load("TinyNet")).graph.node
        assert Path(await hub.download_model_with_test_data("NanoText")).is_dir()
    assert len(mirror.requests) == before
    # something not cached yet: the manifest is revalidated before the download
    async with AsyncHub(config) as hub:
        await hub.load("LegacyNet")
    manifest_requests = mirror.requests_for("*/ONNX_HUB_MANIFEST.json")
    assert len(manifest_requests) == 2
    assert "If-None-Match" in manifest_requests[-1].headers


async def test_failover_on_sha_mismatch_logs_the_serving_mirror(
    mirror: MirrorServer,
    mirror_root: Path,
    zoo_manifest: list[dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = _entry(zoo_manifest, "NanoText", 10)
    bad = mirror_root / "bad" / REPO_PREFIX / raw["model_path"]
    bad.parent.mkdir(parents=True)
    good_bytes = (mirror_root / REPO_PREFIX / raw["model_path"]).read_bytes()
    bad.write_bytes(good_bytes[:-1] + bytes([good_bytes[-1] ^ 1]))
    good_template = mirror.url + "/{owner}/{repo}/{ref}/{path}"
    config = mirror_config(mirror.url, tmp_path / "cache").replace(
        file_urls=(mirror.url + "/bad/{owner}/{repo}/{ref}/{path}", good_template)
    )
    with caplog.at_level(logging.INFO, logger="asynchub"):
        async with AsyncHub(config) as hub:
            path = await hub.download("NanoText")
    assert path.read_bytes() == good_bytes
    assert mirror.requests_for("/bad/*")
    served = [r for r in mirror.requests_for(f"/{REPO_PREFIX}/*") if r.path.endswith(".onnx")]
    assert served
    assert all(r.headers.get("Accept-Encoding") == "identity" for r in served)
    assert f"{mirror.url}/{REPO_PREFIX}/{raw['model_path']}" in caplog.text


def _child_env(server: MirrorServer, home: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCHUB_", "ONNX_"))}
    env["ONNX_HOME"] = str(home)
    env["ASYNCHUB_MANIFEST_URL"] = server.url + "/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json"
    env["ASYNCHUB_FILE_URLS"] = server.url + "/{owner}/{repo}/{ref}/{path}"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def test_process_exits_cleanly_without_closing_the_hub(mirror_root: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import asyncio, asynchub as hub\n"
        "m = hub.load('TinyNet')\n"
        "async def main():\n"
        "    return await hub.aload('NanoText')\n"
        "m2 = asyncio.run(main())\n"
        "print(len(m.graph.node), len(m2.graph.node))\n"
    )
    with MirrorServer(mirror_root).running() as server:
        done = subprocess.run(
            [sys.executable, "-W", "error::ResourceWarning", "-c", code],
            env=_child_env(server, tmp_path / "home"),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "3"]
    assert "Unclosed" not in done.stderr
    assert "Exception ignored" not in done.stderr


@pytest.mark.parametrize("answer", ["y", "n"])
def test_untrusted_repo_on_a_terminal_asks_like_onnx_hub(
    mirror_root: Path, tmp_path: Path, answer: str
) -> None:
    import os
    import subprocess
    import sys

    (mirror_root / "someone" / "zoo").mkdir(parents=True)
    (mirror_root / "someone" / "zoo" / "main").symlink_to(mirror_root / REPO_PREFIX)
    code = (
        "import sys, asynchub as hub\n"
        "assert sys.stdin.isatty()\n"
        "try:\n"
        "    print('LOADED', len(hub.load('TinyNet', repo='someone/zoo').graph.node))\n"
        "except hub.UntrustedRepoError as e:\n"
        "    print('REFUSED', e)\n"
    )
    master, slave = os.openpty()
    with MirrorServer(mirror_root).running() as server:
        child = subprocess.Popen(
            [sys.executable, "-c", code],
            env=_child_env(server, tmp_path / "home"),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(slave)
        os.write(master, f"{answer}\n".encode())
        try:
            out, err = child.communicate(timeout=60)
        finally:
            os.close(master)
    assert "is not trusted" in err and "Continue?[y/n]" in err
    if answer == "y":
        assert out.startswith("LOADED 3"), (out, err)
    else:
        assert out.startswith("REFUSED"), (out, err)
        assert "ASYNCHUB_TRUSTED_REPOS" in out
