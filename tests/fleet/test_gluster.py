"""One cache on GlusterFS shared by processes on two mounts ("two hosts"), with SIGKILLs.

Six node processes (three per mount of one volume, the same ``ONNX_HOME`` on it) each load two
of three ~3 MiB models from a mirror that paces every answer (so a download lasts long enough
to be killed in the middle); two downloading processes are SIGKILLed mid-transfer and started
again. A watcher thread hashes every version of a final file that appears through the *other*
mount during the run. Asserted: every process gets the manifest's bytes, nothing unverified
ever appears at a final name, each file is fetched about once with locks on (bounded by the
mirror's byte log), what is left beside the final files, and both mounts read the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from pathlib import Path
from typing import Any

import pytest

from asynchub._cache.admin import prune_cache
from asynchub._hub.registry import all_sources
from tests.fleet.fleetrun import HOSTS, FleetRun, final_name, leftovers, run_fleet
from tests.fleet.system import GlusterVolume
from tests.hostile.helpers import FinalWatcher
from tests.mirror import MirrorServer

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(900)]

log = logging.getLogger(__name__)

#: Bytes/s of every mirror answer: a 256 KiB chunk takes 0.5 s, a 3 MiB file over 4
#: connections ~1.5 s, so a kill after one chunk lands mid-transfer.
RATE = 512 * 1024


def _homes(gluster: GlusterVolume) -> tuple[Path, Path]:
    name = f"home-{secrets.token_hex(4)}"
    (gluster.mounts[0] / name).mkdir()
    return gluster.mounts[0] / name, gluster.mounts[1] / name


def _check_results(run: FleetRun, homes: tuple[Path, Path], entries: dict[str, Any]) -> None:
    assert len(run.results) == 6
    for result in run.results:
        assert result["errors"] == [], result
        assert sorted(result["results"]) == sorted(f"{m}:{o}" for m, o in result["jobs"])
        for key, (path, digest) in result["results"].items():
            entry = entries[key]
            assert digest == entry["metadata"]["model_sha"], (key, result)
            assert Path(path) == final_name(homes[result["mount"]] / "hub", entry)


def _only_partials_of_killed_writers_left(run: FleetRun, hub: Path, finals: set[Path]) -> None:
    """No lock or temporary file is left. A partial is left only by a killed process whose
    file was then finished by the other host (which cannot tell the writer is dead, and
    never continues another host's partial); its own host removes it at once (prune)."""
    left = leftovers(hub, finals)
    tags = {f".{HOSTS[mount].replace('-', '_')}-{pid}-": mount for mount, pid in run.killed_pids}
    assert all(n.endswith((".partial", ".partial.json")) for n in left), left
    assert all(any(tag in n for tag in tags) for n in left), (left, tags)
    for mount in set(tags.values()):
        prune_cache(hub, all_sources(), host=HOSTS[mount])
    assert leftovers(hub, finals) == []


def _same_bytes_through_both_mounts(homes: tuple[Path, Path], manifest: list[Any]) -> None:
    for entry in manifest:
        a = final_name(homes[0] / "hub", entry).read_bytes()
        b = final_name(homes[1] / "hub", entry).read_bytes()
        assert a == b
        assert hashlib.sha256(b).hexdigest() == entry["metadata"]["model_sha"]


def _report(label: str, run: FleetRun, manifest: list[Any]) -> str:
    parts = [
        f"{entry['model']}: {run.served[entry['model_path']]} B served "
        f"for {entry['metadata']['model_bytes']} B"
        for entry in manifest
    ]
    return (
        f"{label}: 6 processes x 2 mounts x 3 models, {run.kills} SIGKILLs, "
        f"{run.seconds:.1f} s; " + "; ".join(parts)
    )


def _fleet(
    gluster: GlusterVolume,
    mirror_root: Path,
    manifest: list[dict[str, Any]],
    config: dict[str, Any],
) -> tuple[FleetRun, tuple[Path, Path], list[tuple[Path, str]]]:
    homes = _homes(gluster)
    expected = {final_name(homes[1] / "hub", e): e["metadata"]["model_sha"] for e in manifest}
    mirror = MirrorServer(mirror_root, rate_limit=RATE)
    with mirror.running() as server, FinalWatcher(expected) as watcher:
        run = run_fleet(server, homes, manifest, per_mount=3, kills=2, config=config)
    assert not watcher.wrong(), f"unverified bytes under a final name: {watcher.wrong()}"
    assert run.kills == 2, "no download could be killed mid-transfer"
    return run, homes, watcher.seen


def test_shared_cache_with_locks_fetches_each_file_about_once(
    gluster: GlusterVolume,
    fleet_mirror_root: Path,
    fleet_manifest: list[dict[str, Any]],
    record_property: Any,
) -> None:
    run, homes, _seen = _fleet(gluster, fleet_mirror_root, fleet_manifest, {})
    entries = {f"{e['model']}:{e['opset_version']}": e for e in fleet_manifest}
    _check_results(run, homes, entries)
    for entry in fleet_manifest:
        size = entry["metadata"]["model_bytes"]
        served = run.served[entry["model_path"]]
        assert size <= served <= 1.5 * size + run.killed_bytes.get(entry["model_path"], 0), (
            entry["model"],
            served,
            size,
            run.killed_bytes,
        )
    finals = {final_name(homes[0] / "hub", e) for e in fleet_manifest}
    _only_partials_of_killed_writers_left(run, homes[0] / "hub", finals)
    _same_bytes_through_both_mounts(homes, fleet_manifest)
    summary = _report("locks on", run, fleet_manifest)
    record_property("fleet", summary)
    print(summary)


def test_shared_cache_without_locks_never_publishes_a_wrong_byte(
    gluster: GlusterVolume,
    fleet_mirror_root: Path,
    fleet_manifest: list[dict[str, Any]],
    record_property: Any,
) -> None:
    run, homes, _seen = _fleet(gluster, fleet_mirror_root, fleet_manifest, {"use_locks": False})
    entries = {f"{e['model']}:{e['opset_version']}": e for e in fleet_manifest}
    _check_results(run, homes, entries)
    wanted = {e["model_path"]: 0 for e in fleet_manifest}
    for result in run.results:
        for model, opset in result["jobs"]:
            wanted[entries[f"{model}:{opset}"]["model_path"]] += 1
    for entry in fleet_manifest:
        size = entry["metadata"]["model_bytes"]
        served = run.served[entry["model_path"]]
        # Only more bytes: at most every wanting process (and every killed run) got it whole.
        assert size <= served <= (wanted[entry["model_path"]] + 2) * size
    finals = {final_name(homes[0] / "hub", e) for e in fleet_manifest}
    _only_partials_of_killed_writers_left(run, homes[0] / "hub", finals)
    _same_bytes_through_both_mounts(homes, fleet_manifest)
    summary = _report("locks off", run, fleet_manifest)
    record_property("fleet", summary)
    print(summary)
