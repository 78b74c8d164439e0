"""Scenarios A-E on the local mirror. Each returns a plain dict that ``_report`` renders.

* A -- one big model, no cap: ``download`` vs onnx.hub, curl, aria2c, hf_transfer and a bare
  client that only moves the bytes (``_bare_client.py``).
* B -- the same with every connection capped (a CDN edge).
* C -- bulk prefetch of a tag (cap + per-request latency) vs onnx.hub one by one and aria2c -j.
* D -- cold load of a small model (manifest included) and warm load from cache vs onnx.hub and a
  bare ``onnx.load`` of the same file.
* E -- sweep of connections x chunk size on B's mirror (and aria2c -xN -sN).
"""

from __future__ import annotations

import functools
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _peers
from _bench import (
    REPO,
    Limit,
    Profile,
    Row,
    Series,
    clean,
    fresh,
    log,
    run_rounds,
    run_series,
    sizes_match,
)
from _mirror import Endpoint, MirrorSet
from _peers import Run
from _report import chunk_label

MiB = 1024 * 1024
ARIA2C_MAX_SPLIT = 16  # aria2c refuses -x above 16
#: hf_transfer with huggingface_hub's 100 parallel requests ("hf_transfer" is the 16 the
#: targets name); compared for information, not as a target
HF_HUB = f"hf_transfer, {_peers.HF_MAX_FILES_HUB} files"
#: ``_bare_client.py``: a thread per connection (the hub's maximum), no verification.
BARE = "bare Python client (no verify)"
#: ``_bare_verified.py``: in-order pieces, SHA-256 following the prefix, nothing else.
BARE_VERIFIED = "bare Python client (verifies)"
#: Its connections without a cap: asynchub's starting width, where it stays on a loopback
#: mirror (the hash, not the link, is the limit); with a cap, the hub's maximum.
BARE_VERIFIED_UNCAPPED = 8


@dataclass
class Ctx:
    profile: Profile
    work: Path
    zoo: Path
    manifest: list[dict[str, Any]]
    mirror: MirrorSet
    limits: dict[str, Limit] = field(default_factory=dict)
    repo: str = REPO

    def entry(self, name: str) -> dict[str, Any]:
        return next(e for e in self.manifest if e["model"] == name)

    def select(self, tags: list[str] | None, models: list[str] | None) -> list[dict[str, Any]]:
        """Entries matching any tag (ignoring case), plus each named model at its largest
        opset -- the selection rules of onnx.hub."""
        wanted = {t.lower() for t in tags or []}
        chosen = [e for e in self.manifest
                  if wanted & {t.lower() for t in e["metadata"].get("tags", [])}]
        for name in models or []:
            same = [e for e in self.manifest if e["model"].lower() == name.lower()]
            if not same:
                raise SystemExit(f"no model named {name!r} in the manifest")
            best = max(same, key=lambda e: e["opset_version"])
            if best not in chosen:
                chosen.append(best)
        return chosen

    def cached_path(self, cache: Path, entry: dict[str, Any]) -> Path:
        """The onnx.hub cache layout: ``<dir of model_path>/<sha>_<basename>``."""
        rel = Path(entry["model_path"])
        return cache / rel.parent / f"{entry['metadata']['model_sha']}_{rel.name}"


def _url(endpoint: Endpoint, entry: dict[str, Any]) -> str:
    return endpoint.url_for(entry["model_path"])


def _conditions(ctx: Ctx, endpoint: Endpoint) -> str:
    """What the mirror port imposes, for table headers."""
    p = ctx.profile
    cap = f"{p.rate_limit / 1e6:g} MB/s per connection"
    return {"plain": "no cap", "capped": cap,
            "slow": f"{cap}, {p.latency * 1000:g} ms per request"}.get(
        endpoint.name, "as the mirror serves it")


def _counter(endpoint: Endpoint) -> Callable[[], int] | None:
    return endpoint.requests if endpoint.counts else None


def _hub_params(ctx: Ctx, endpoint: Endpoint, cache: Path, **more: Any) -> dict[str, Any]:
    return {"manifest_url": endpoint.manifest_url,
            "file_urls": list(getattr(endpoint, "file_urls", [endpoint.file_url])),
            "file_url": endpoint.file_url, "cache_dir": str(cache), "repo": ctx.repo, **more}


def _check_cached(ctx: Ctx, cache: Path,
                  entries: list[dict[str, Any]]) -> Callable[[Run], str | None]:
    files = [(ctx.cached_path(cache, e), e["metadata"]["model_bytes"]) for e in entries]
    return lambda _run: sizes_match(files)


def _missing(tool: str) -> Row:
    return Row(tool, error=f"{tool} is not installed (run benchmarks/setup.sh)")


def _scenario(sid: str, title: str, header: str, nbytes: int, rows: list[Row],
              limit: Limit | None, targets: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": sid, "title": title, "header": header, "bytes": nbytes,
            "limit_name": limit.name if limit else None,
            "limit_seconds": (limit.median * nbytes / limit.nbytes) if limit else None,
            "rows": [r.to_dict() for r in rows], "targets": targets}


def _target(text: str, ok: bool | None, detail: str) -> dict[str, Any]:
    return {"text": text, "ok": ok, "detail": detail}


def _find(rows: list[Row], tool: str) -> Row | None:
    row = next((r for r in rows if r.tool == tool), None)
    return row if row and row.n and not row.error else None


# ---------------------------------------------------------------------- A and B
def single_file(ctx: Ctx, sid: str, endpoint: Endpoint, capped: bool,
                model: str = "BenchBig", cli: bool = False) -> dict[str, Any]:
    p = ctx.profile
    entry = ctx.entry(model)
    size, sha = entry["metadata"]["model_bytes"], entry["metadata"]["model_sha"]
    url = _url(endpoint, entry)
    out = ctx.work / "out"
    kw: dict[str, Any] = {"profile": p, "counter": _counter(endpoint),
                          "server_cpu": ctx.mirror.server_cpu}

    cache = ctx.work / "cache-asynchub"
    hub_cache = ctx.work / "cache-onnxhub"
    target = out / "model.onnx"

    def reset() -> None:  # every run starts without any tool's output
        clean(cache, hub_cache)
        fresh(out)

    series = [Series("asynchub download", lambda _i: _peers.asynchub_cmd(
        "download", model=model, **_hub_params(ctx, endpoint, cache)),
        before=reset, after=_check_cached(ctx, cache, [entry]))]
    if cli:
        series.append(Series("`asynchub download` command", lambda _i: _peers.asynchub_cli_cmd(
            model, **_hub_params(ctx, endpoint, cache)),
            before=reset, after=_check_cached(ctx, cache, [entry])))
    missing: list[Row] = []
    if _peers.have("onnxhub"):
        series.append(Series("onnx.hub 1.20.1 (download + SHA-256, no parse)",
                             lambda _i: _peers.onnxhub_cmd(
                                 "download", model=model,
                                 **_hub_params(ctx, endpoint, hub_cache)), before=reset))
    else:
        missing.append(_missing("onnx.hub 1.20.1"))
    peers: list[tuple[str, Callable[[int], list[str]]]] = [
        ("curl", lambda _i: _peers.curl_cmd(url, target)),
        ("aria2c -x16 -s16", lambda _i: _peers.aria2c_cmd([(url, target)])),
        ("hf_transfer", lambda _i: _peers.hf_transfer_cmd(url, target)),
        (HF_HUB, lambda _i: _peers.hf_transfer_cmd(url, target, _peers.HF_MAX_FILES_HUB)),
        (BARE, lambda _i: _peers.bare_client_cmd(url, target, p.max_connections)),
    ]
    for tool, make in peers:
        if tool != BARE and not _peers.have(tool.split()[0].rstrip(",")):
            missing.append(_missing(tool))
            continue
        series.append(Series(tool, make, before=reset,
                             after=lambda _r: sizes_match([(target, size)]),
                             sha_pass=lambda: [(target, sha)]))
    width = p.max_connections if capped else BARE_VERIFIED_UNCAPPED
    series.append(Series(BARE_VERIFIED, lambda _i: _peers.bare_verified_cmd(
        url, target, width, sha), before=reset, after=lambda _r: sizes_match([(target, size)])))
    log(f"{sid}: {', '.join(one.tool for one in series)}, in rounds")
    rows = run_rounds(series, **kw) + missing
    clean(out, cache, hub_cache)

    limit = ctx.limits.get("sha1")
    net = _network_floor(ctx, size, capped)
    targets = _single_targets(rows, limit, size, capped, net)
    header = (f"{model}: {size / MiB:.0f} MiB, {_conditions(ctx, endpoint)}, {ctx.mirror.kind}; "
              f"{p.describe()}")
    if net is not None:
        header += f"; network floor {net:.2f} s"
    title = {"A": "A: one big model, no cap", "B": "B: one big model, capped connections",
             "F": f"F: {size / MiB:.0f} MiB model, capped connections, the command"}[sid]
    return _scenario(sid, title, header, size, rows, limit, targets)


def _network_floor(ctx: Ctx, size: int, capped: bool) -> float | None:
    """The fastest the network allows: ``size / (cap x connections)`` on a capped mirror, the
    single-stream loopback limit (curl to /dev/null, measured in the run) without a cap."""
    if capped:
        return size / (ctx.profile.rate_limit * ctx.profile.max_connections)
    loop = ctx.limits.get("loopback")
    return None if loop is None else loop.median * size / loop.nbytes


PEERS_FOR_FLOOR = ("curl", "aria2c -x16 -s16", "hf_transfer", HF_HUB, BARE)


def _machine_floor(rows: list[Row], limit: Limit | None,
                   size: int) -> tuple[float, str] | None:
    """The least CPU this machine was seen to spend moving these bytes (the cheapest peer's
    client CPU plus the mirror's CPU during that peer's runs, medians) plus SHA-256 of them
    on one core, spread perfectly over every core: no verified download on this machine can
    be faster while client and mirror share its cores."""
    if limit is None:
        return None
    spent = [((r.med("cpu") or 0.0) + (r.med("server_cpu") or 0.0), r.tool)
             for tool in PEERS_FOR_FLOOR if (r := _find(rows, tool)) and r.server_cpu]
    if not spent:
        return None
    work, tool = min(spent)
    sha = limit.median * size / limit.nbytes
    cores = os.cpu_count() or 1
    floor = (work + sha) / cores
    return floor, (f"({tool}: {work:.2f} CPU-s client and mirror, + SHA-256 {sha:.2f} "
                   f"CPU-s) / {cores} cores")


def _single_targets(rows: list[Row], limit: Limit | None, size: int,
                    capped: bool, net: float | None) -> list[dict[str, Any]]:
    ours = _find(rows, "asynchub download")
    if ours is None:
        return [_target("asynchub download measured", False, "no successful asynchub run")]
    targets = []
    floor = max(limit.median * size / limit.nbytes if limit else 0.0, net or 0.0)
    if floor:
        bound = 1.15 * floor
        t = ours.med("seconds") or ours.med("wall") or 0.0
        targets.append(_target(
            "verified download (in-process) <= 1.15 x max(network floor, SHA-256 floor)",
            t <= bound, f"{t:.2f} s vs {bound:.2f} s"))
        machine = _machine_floor(rows, limit, size)
        if machine is not None:
            floor_s, detail = machine
            targets.append(_target("machine floor (not a target): " + detail, None,
                                   f"{t:.2f} s vs {floor_s:.2f} s ({t / floor_s:.2f} x)"))
        bare = _find(rows, BARE)
        moved = bare.med("seconds") if bare else None
        if moved:
            targets.append(_target(
                f"in-process vs the {BARE}, which only moves the bytes (not a target)", None,
                f"{t:.2f} s vs {moved:.2f} s ({t / moved:.2f} x)"))
        verified = _find(rows, BARE_VERIFIED)
        least = verified.med("seconds") if verified else None
        if least:
            targets.append(_target(
                f"in-process vs the {BARE_VERIFIED}, which does nothing else (not a target)",
                None, f"{t:.2f} s vs {least:.2f} s ({t / least:.2f} x)"))
    cpu = (ours.med("cpu") or 0.0) / (size / 2**30)
    targets.append(_target("client CPU <= 2.0 CPU-s per verified GiB", cpu <= 2.0,
                           f"{cpu:.2f} CPU-s/GiB"))
    rss = max(ours.rss)
    targets.append(_target("peak RSS <= 200 MB", rss <= 200, f"{rss:.0f} MB"))
    whole = _find(rows, "`asynchub download` command") or ours
    peers = ((("aria2c -x16 -s16", 0.8), ("hf_transfer", 1.0)) if capped
             else (("aria2c -x16 -s16", 1.0),))
    for tool, ratio in peers:
        peer = _find(rows, tool)
        if peer:
            a, b = whole.med() or 0.0, peer.med() or 0.0
            name = f"{tool} ({_peers.HF_MAX_FILES} files)" if tool == "hf_transfer" else tool
            targets.append(_target(f"{whole.tool} (wall) <= {ratio:g} x {name}",
                                   a <= ratio * b, f"{a:.2f} s vs {b:.2f} s ({a / b:.2f} x)"))
    hub_hf = _find(rows, HF_HUB)
    if hub_hf:  # information: more connections than asynchub's budget
        a, b = whole.med() or 0.0, hub_hf.med() or 0.0
        targets.append(_target(f"{whole.tool} (wall) vs {HF_HUB} (not a target)", None,
                               f"{a:.2f} s vs {b:.2f} s ({a / b:.2f} x)"))
    if capped:
        hub = next((r for r in rows if r.tool.startswith("onnx.hub") and r.n), None)
        if hub:
            ratio = (hub.med() or 0.0) / (ours.med() or 1.0)
            targets.append(_target(">= 15 x faster than onnx.hub (wall)", ratio >= 15,
                                   f"{ratio:.1f} x"))
    return targets


# ---------------------------------------------------------------------- C
def bulk(ctx: Ctx, *, endpoint: Endpoint | None = None, tags: list[str] | None = None,
         models: list[str] | None = None) -> dict[str, Any]:
    p, endpoint = ctx.profile, endpoint or ctx.mirror.slow
    if tags is None and models is None:
        tags = ["bench-bulk"]
    selection: dict[str, Any] = {k: v for k, v in (("tags", tags), ("models", models)) if v}
    entries = ctx.select(tags, models)
    total = sum(e["metadata"]["model_bytes"] for e in entries)
    kw: dict[str, Any] = {"profile": p, "counter": _counter(endpoint)}
    cache = ctx.work / "cache-asynchub"
    hub_cache = ctx.work / "cache-onnxhub"
    out = ctx.work / "out"

    def reset() -> None:  # every run starts without any tool's output
        clean(cache, hub_cache)
        fresh(out)

    series = [Series("asynchub prefetch", lambda _i: _peers.asynchub_cmd(
        "prefetch", **selection, **_hub_params(ctx, endpoint, cache)),
        before=reset, after=_check_cached(ctx, cache, entries))]
    missing: list[Row] = []
    if _peers.have("onnxhub"):
        series.append(Series("onnx.hub 1.20.1 load, one by one", lambda _i: _peers.onnxhub_cmd(
            "load_many", **selection, **_hub_params(ctx, endpoint, hub_cache)),
            before=reset, after=_check_cached(ctx, hub_cache, entries)))
    else:
        missing.append(_missing("onnx.hub 1.20.1"))
    if _peers.have("aria2c"):
        files = [(_url(endpoint, e), out / Path(e["model_path"]).name) for e in entries]
        series.append(Series(
            f"aria2c -j{p.bulk_jobs} -x16 -s16",
            lambda _i: _peers.aria2c_cmd(files, jobs=p.bulk_jobs,
                                         list_file=ctx.work / "aria2c-list.txt"),
            before=reset,
            after=lambda _r: sizes_match([(f, e["metadata"]["model_bytes"])
                                          for (_, f), e in zip(files, entries, strict=True)]),
            sha_pass=lambda: [(f, e["metadata"]["model_sha"])
                              for (_, f), e in zip(files, entries, strict=True)]))
    else:
        missing.append(_missing("aria2c"))
    log(f"C: {len(entries)} models; {', '.join(one.tool for one in series)}, in rounds")
    rows = run_rounds(series, **kw) + missing
    clean(cache, hub_cache, out)
    ours = _find(rows, "asynchub prefetch")
    targets = []
    if ours is None:
        targets.append(_target("asynchub prefetch measured", False, "no successful run"))
    else:
        for prefix, factor in (("aria2c", 2.0), ("onnx.hub", 20.0)):
            peer = next((r for r in rows if r.tool.startswith(prefix) and r.n and not r.error
                         and "sha256sum" not in r.tool), None)
            if peer:
                ratio = (peer.med() or 0.0) / (ours.med() or 1.0)
                targets.append(_target(f">= {factor:g} x faster than {peer.tool} (wall)",
                                       ratio >= factor, f"{ratio:.1f} x"))
        cpu = (ours.med("cpu") or 0.0) / (total / 2**30)
        targets.append(_target("client CPU <= 2.0 CPU-s per verified GiB", cpu <= 2.0,
                               f"{cpu:.2f} CPU-s/GiB"))
        rss = max(ours.rss)
        targets.append(_target("peak RSS <= 200 MB", rss <= 200, f"{rss:.0f} MB"))
    header = (f"{len(entries)} models, {total / MiB:.0f} MiB, {_conditions(ctx, endpoint)}, "
              f"{ctx.mirror.kind}; {p.describe()}")
    return _scenario("C", "C: bulk prefetch of a tag", header, total, rows,
                     ctx.limits.get("sha1"), targets)


# ---------------------------------------------------------------------- D
def small(ctx: Ctx) -> dict[str, Any]:
    endpoint = ctx.mirror.slow
    entry = ctx.entry("BenchSmall")
    size = entry["metadata"]["model_bytes"]
    repeats = max(ctx.profile.repeats, 5)
    cache, hub_cache = ctx.work / "cache-asynchub", ctx.work / "cache-onnxhub"
    clean(cache, hub_cache)
    ours = _peers.asynchub_cmd("load", model="BenchSmall", api="module",
                               **_hub_params(ctx, endpoint, cache))
    warm = _peers.asynchub_cmd("load", model="BenchSmall", repeat=20, api="module",
                               cached=True, **_hub_params(ctx, endpoint, cache))
    cached = ctx.cached_path(cache, entry)

    def bare_cmd(_i: int) -> list[str]:
        local = cached if cached.exists() else ctx.zoo / entry["model_path"]
        return _peers.bare_onnx_load_cmd(local)

    # In rounds, as A-C and F: each round starts one tool further along, and a cold run comes
    # first in round one, so a warm run always finds its cache filled (a cold run empties it
    # only before its own run, and fills it again).
    series = [Series("asynchub load, cold", lambda _i: ours, before=lambda: clean(cache),
                     repeats=repeats),
              Series("asynchub load, warm", lambda _i: warm, repeats=repeats)]
    missing: list[Row] = []
    if _peers.have("onnxhub"):
        theirs = _peers.onnxhub_cmd("load", model="BenchSmall",
                                    **_hub_params(ctx, endpoint, hub_cache))
        series += [Series("onnx.hub 1.20.1 load, cold", lambda _i: theirs,
                          before=lambda: clean(hub_cache), repeats=repeats),
                   Series("onnx.hub 1.20.1 load, warm", lambda _i: theirs, repeats=repeats)]
    else:
        missing.append(_missing("onnx.hub 1.20.1"))
    series.append(Series("bare onnx.load of the cached file", bare_cmd, repeats=repeats))
    log(f"D: {', '.join(one.tool for one in series)}, in rounds")
    rows = run_rounds(series, profile=ctx.profile, counter=_counter(endpoint)) + missing
    clean(cache, hub_cache)

    def get(tool: str) -> Row | None:
        return _find(rows, tool)

    targets = []
    warm_row, bare, cold = get("asynchub load, warm"), get("bare onnx.load of the cached file"), \
        get("asynchub load, cold")
    hub_cold = get("onnx.hub 1.20.1 load, cold")
    if warm_row:
        sent = max(warm_row.requests) if warm_row.requests else 0
        targets.append(_target("warm load sends no request", sent == 0, f"{sent} request(s)"))
        if bare:
            a, b = warm_row.med() or 0.0, bare.med() or 0.0
            targets.append(_target("warm load <= 1.1 x bare onnx.load (wall of the script)",
                                   a <= 1.1 * b, f"{a * 1000:.0f} ms vs {b * 1000:.0f} ms"))
            a, b = warm_row.med("seconds") or 0.0, bare.med("seconds") or 0.0
            targets.append(_target("warm load vs bare onnx.load, in-process first call",
                                   None, f"{a * 1000:.2f} ms vs {b * 1000:.2f} ms"))
    if cold and hub_cold:
        # Whole processes: what a user waits for. The in-process times (both drivers import
        # onnx, and asynchub's driver its engine, before the timer) are shown for information.
        a, b = cold.med() or 0.0, hub_cold.med() or 0.0
        targets.append(_target("cold load <= onnx.hub cold load (wall of the script)", a <= b,
                               f"{a * 1000:.0f} ms vs {b * 1000:.0f} ms"))
        a, b = cold.med("seconds") or 0.0, hub_cold.med("seconds") or 0.0
        targets.append(_target("cold load in-process, after the imports (not a target)", None,
                               f"{a * 1000:.1f} ms vs {b * 1000:.1f} ms"))
    if not targets:
        targets.append(_target("asynchub load measured", False, "no successful asynchub run"))
    header = (f"{size / 1000:.0f} KB model, manifest of {len(ctx.manifest)} entries, "
              f"{ctx.profile.latency * 1000:g} ms per request, {ctx.mirror.kind}; "
              f"module-level `asynchub.load` configured by ASYNCHUB_* variables; in-process = the "
              f"first call in a fresh process (after the imports it makes), repeat calls = "
              f"median of 20 more")
    return _scenario("D", "D: small model, cold and warm load", header, size, rows, None,
                     targets)


# ---------------------------------------------------------------------- E
def sweep(ctx: Ctx, *, endpoint: Endpoint | None = None, model: str = "BenchBig",
          with_aria2c: bool = True) -> dict[str, Any]:
    """Fixed widths (the adaptive width off: always N connections) x chunk sizes, aria2c
    -xN -sN beside them; then the adaptive width against the best fixed point, in rounds."""
    p = ctx.profile
    endpoint = endpoint or ctx.mirror.capped
    entry = ctx.entry(model)
    size = entry["metadata"]["model_bytes"]
    cache = ctx.work / "cache-asynchub"
    points: list[dict[str, Any]] = []
    for chunk in p.sweep_chunks:
        for conns in p.sweep_connections:
            log(f"E: asynchub {conns} connections (fixed), chunk {chunk_label(chunk)}")
            params = _hub_params(ctx, endpoint, cache, max_connections=conns, chunk_size=chunk,
                                 adaptive=False)
            (row,) = run_series(f"asynchub c={conns} k={chunk_label(chunk)}",
                                functools.partial(_asynchub_download, model, params),
                                profile=p, repeats=p.sweep_repeats, before=lambda: clean(cache),
                                after=_check_cached(ctx, cache, [entry]),
                                counter=_counter(endpoint))
            points.append(_point("asynchub", conns, chunk, row, size))
    if with_aria2c and _peers.have("aria2c"):
        out = ctx.work / "out"
        target = out / "model.onnx"
        url = _url(endpoint, entry)
        for conns in [c for c in p.sweep_connections if c <= ARIA2C_MAX_SPLIT]:
            log(f"E: aria2c -x{conns} -s{conns}")
            (row,) = run_series(f"aria2c -x{conns}",
                                functools.partial(_aria2c_split, url, target, conns),
                                profile=p, repeats=p.sweep_repeats, before=lambda: fresh(out),
                                after=lambda _r: sizes_match([(target, size)]))
            points.append(_point("aria2c", conns, None, row, size))
        clean(out)
    good = [pt for pt in points if pt["tool"] == "asynchub" and pt["wall"]]
    best = min(good, key=lambda pt: statistics.median(pt["wall"])) if good else None
    knee = None
    if best:
        limit = statistics.median(best["wall"]) * 1.05
        knee = min((pt for pt in good if statistics.median(pt["wall"]) <= limit),
                   key=lambda pt: (pt["connections"], -pt["chunk"]))
    versus = _adaptive_vs(ctx, endpoint, model, entry, cache, best) if best else None
    clean(cache)
    return {"bytes": size, "rate_limit": p.rate_limit if endpoint.name in ("capped", "slow")
            else None, "points": points, "best": best,
            "knee": knee, "sha_rate": ctx.limits["sha1"].rate if "sha1" in ctx.limits else None,
            "versus": versus,
            "header": (f"{model}: {size / MiB:.0f} MiB, {_conditions(ctx, endpoint)}, "
                       f"{ctx.mirror.kind}; asynchub with fixed widths (the adaptive width off); "
                       f"{p.sweep_repeats} run(s) per point")}


VERSUS_REPEATS = 5


def _adaptive_vs(ctx: Ctx, endpoint: Endpoint, model: str, entry: dict[str, Any], cache: Path,
                 best: dict[str, Any]) -> dict[str, Any]:
    """The adaptive width (up to the largest width of the sweep, the default chunk size)
    against the sweep's best fixed point, the two in rounds (:func:`run_rounds`): the sweep
    measures each point minutes apart, and a slow spell of the machine would decide a
    comparison of numbers taken that far apart. :data:`VERSUS_REPEATS` runs each, not the
    profile's three: single runs of either wander by a tenth here, as much as the bound."""
    p = ctx.profile
    size = entry["metadata"]["model_bytes"]
    widest = max(p.sweep_connections)
    fixed_tool = f"asynchub fixed {best['connections']} x {chunk_label(best['chunk'])}"
    adaptive_tool = f"asynchub adaptive (up to {widest})"
    series = [
        Series(adaptive_tool, lambda _i: _peers.asynchub_cmd(
            "download", model=model, **_hub_params(ctx, endpoint, cache, max_connections=widest)),
            before=lambda: clean(cache), after=_check_cached(ctx, cache, [entry]),
            repeats=max(VERSUS_REPEATS, p.repeats)),
        Series(fixed_tool, lambda _i: _peers.asynchub_cmd(
            "download", model=model, **_hub_params(
                ctx, endpoint, cache, max_connections=best["connections"],
                chunk_size=best["chunk"], adaptive=False)),
            before=lambda: clean(cache), after=_check_cached(ctx, cache, [entry]),
            repeats=max(VERSUS_REPEATS, p.repeats)),
    ]
    log(f"E: {adaptive_tool} vs {fixed_tool}, in rounds")
    adaptive, fixed = run_rounds(series, profile=p, counter=_counter(endpoint))
    ratio = None
    if adaptive.wall and fixed.wall and not adaptive.error and not fixed.error:
        ratio = statistics.median(fixed.wall) / statistics.median(adaptive.wall)
    detail = "-" if ratio is None else (
        f"{size / statistics.median(adaptive.wall) / 1e6:.0f} vs "
        f"{size / statistics.median(fixed.wall) / 1e6:.0f} MB/s ({ratio:.2f} x)")
    return {"rows": [adaptive.to_dict(), fixed.to_dict()], "ratio": ratio,
            "targets": [_target("adaptive width >= 0.9 x the throughput of the best fixed "
                                "setting (the two in rounds)",
                                None if ratio is None else ratio >= 0.9, detail)]}


def _asynchub_download(model: str, params: dict[str, Any], _i: int) -> list[str]:
    return _peers.asynchub_cmd("download", model=model, **params)


def _aria2c_split(url: str, target: Path, split: int, _i: int) -> list[str]:
    return _peers.aria2c_cmd([(url, target)], split=split)


def _point(tool: str, conns: int, chunk: int | None, row: Row, size: int) -> dict[str, Any]:
    wall = statistics.median(row.wall) if row.wall else None
    return {"tool": tool, "connections": conns, "chunk": chunk, "wall": row.wall,
            "seconds": row.seconds, "rss": row.rss, "requests": row.requests,
            "mbps": (size / wall / 1e6) if wall else None, "error": row.error}
