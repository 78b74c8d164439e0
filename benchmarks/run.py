"""Benchmarks of asynchub against the tools users would pick instead, on the same mirror.

Local mode (default) builds a zoo of real ONNX models, serves it from nginx on 127.0.0.1 and
runs scenarios A-E plus the machine's limits::

    python benchmarks/run.py                # quick: 256 MiB models, < 5 minutes
    python benchmarks/run.py --full         # 1 GiB models, the numbers the README quotes
    python benchmarks/run.py --scenarios A,E

Operator mode measures any mirror or CDN that serves the hub layout (no local server)::

    python benchmarks/run.py \\
        --manifest-url 'https://host/{owner}/{repo}/{ref}/ONNX_HUB_MANIFEST.json' \\
        --file-urls 'https://host/{path}' --repo onnx/models:main --tag vision --models resnet50

Results go to ``benchmarks/results/`` (Markdown, JSON, PNG). Run ``benchmarks/setup.sh`` first
on a fresh machine (nginx, aria2, hf_transfer, the onnx==1.20.1 environment).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _bench  # noqa: E402
import _machine  # noqa: E402
import _peers  # noqa: E402
import _report  # noqa: E402
import _scenarios  # noqa: E402
from _bench import FULL, QUICK, Profile, log  # noqa: E402
from _mirror import MirrorSet  # noqa: E402

WORK = HERE / "work"
MiB = 1024 * 1024
LIMIT_SAMPLE = 256 * MiB  # operator mode: bytes hashed and written for the machine's limits


def _meta(args: argparse.Namespace, profile: Profile, mirror: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    return {"profile": profile.name, "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
                       f"{args.machine_state}",
            "mirror": mirror, "command": "python benchmarks/run.py " + " ".join(
                shlex.quote(a) for a in sys.argv[1:]), "profile_settings": asdict(profile)}


def _ttfb(url: str, n: int = 5) -> list[float]:
    return [_peers.curl_ttfb(url)[0] for _ in range(n)]


# ---------------------------------------------------------------------- local mode
def run_local(args: argparse.Namespace, profile: Profile) -> Path:
    wanted = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    WORK.mkdir(parents=True, exist_ok=True)
    zoo = WORK / f"zoo-{profile.name}"
    t0 = time.perf_counter()
    manifest = _bench.build_zoo(zoo, _bench.zoo_spec(profile))
    log(f"zoo read into the page cache in {_bench.warm(zoo, manifest):.1f} s")
    results: dict[str, Any] = {"scenarios": {}}
    with MirrorSet(zoo, WORK / "mirror", profile.rate_limit, profile.latency,
                   prefer=args.server) as mirror:
        log(f"mirror: {mirror.describe()}")
        ctx = _scenarios.Ctx(profile, WORK / "run", zoo, manifest, mirror)
        ctx.work.mkdir(parents=True, exist_ok=True)
        big = zoo / ctx.entry("BenchBig")["model_path"]
        log("limits: SHA-256, disk, loopback")
        ctx.limits = _bench.measure_limits(big, ctx.work, mirror.plain.url_for(
            ctx.entry("BenchBig")["model_path"]), profile.repeats)
        results["limits"] = {k: asdict(v) for k, v in ctx.limits.items()}
        results["ttfb"] = {f"{ep.name} ({ep.base_url})": _ttfb(ep.manifest_url)
                           for ep in mirror.endpoints.values()}
        results["meta"] = _meta(args, profile, mirror.describe())
        steps = {
            "A": lambda: _scenarios.single_file(ctx, "A", mirror.plain, capped=False),
            "B": lambda: _scenarios.single_file(ctx, "B", mirror.capped, capped=True),
            "C": lambda: _scenarios.bulk(ctx),
            "D": lambda: _scenarios.small(ctx),
            "F": lambda: _scenarios.single_file(ctx, "F", mirror.capped, capped=True,
                                                model="BenchMid", cli=True),
        }
        complete = set("ABCDEF") <= set(wanted)  # the README shows complete runs only
        # a subset writes its own files, so it never replaces the last complete run's
        prefix = f"{profile.name}-" if complete else f"{profile.name}-{''.join(sorted(wanted))}-"
        for sid in "ABCDF":
            if sid in wanted:
                results["scenarios"][sid] = steps[sid]()
                # partial results survive a crash
                _report.write(results, prefix=prefix, update_readme=False)
        if "E" in wanted:
            results["sweep"] = _scenarios.sweep(ctx)
    results["meta"]["seconds"] = time.perf_counter() - t0
    out = _report.write(results, prefix=prefix, update_readme=complete and not args.no_readme)
    log(f"done in {results['meta']['seconds']:.0f} s: {out}")
    return out


# ---------------------------------------------------------------------- operator mode
@dataclass
class RemoteEndpoint:
    """A mirror given by URL templates; requests cannot be counted there."""

    manifest_template: str
    file_urls: list[str]
    repo: str
    name: str = "remote"
    counts: bool = False

    def _fill(self, template: str, path: str = "") -> str:
        owner_name, _, ref = self.repo.partition(":")
        owner, _, name = owner_name.partition("/")
        return template.format(owner=owner, repo=name, ref=ref or "main",
                               path="/".join(quote(p, safe="") for p in path.split("/")))

    @property
    def manifest_url(self) -> str:
        return self.manifest_template

    @property
    def file_url(self) -> str:
        return self.file_urls[0]

    @property
    def base_url(self) -> str:
        parts = urlsplit(self.file_urls[0])
        return f"{parts.scheme}://{parts.netloc}"

    def url_for(self, path: str) -> str:
        return self._fill(self.file_urls[0], path)

    def requests(self) -> int:
        return 0


@dataclass
class RemoteMirror:
    endpoint: RemoteEndpoint
    rate_limit: int = 0
    latency: float = 0.0
    endpoints: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return f"remote mirror {self.endpoint.base_url}"

    def describe(self) -> str:
        return self.kind


def run_operator(args: argparse.Namespace, profile: Profile) -> Path:
    profile = replace(profile, name="operator")
    endpoint = RemoteEndpoint(args.manifest_url,
                              [u.strip() for u in args.file_urls.split(",") if u.strip()],
                              args.repo)
    manifest_url = endpoint._fill(args.manifest_url)
    log(f"manifest: {manifest_url}")
    with urllib.request.urlopen(manifest_url, timeout=60) as response:
        manifest = json.load(response)
    tags = [t.strip() for t in (args.tag or "").split(",") if t.strip()]
    models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    if not tags and not models:
        raise SystemExit("operator mode needs --tag and/or --models to choose what to fetch")
    work = WORK / "operator"
    work.mkdir(parents=True, exist_ok=True)
    ctx = _scenarios.Ctx(profile, work, work, manifest, RemoteMirror(endpoint),  # type: ignore[arg-type]
                         repo=args.repo)
    entries = ctx.select(tags, models)
    if not entries:
        raise SystemExit(f"nothing in the manifest matches tags={tags} models={models}")
    probe = max(entries, key=lambda e: e["metadata"].get("model_bytes", 0))
    probe_url = endpoint.url_for(probe["model_path"])
    t0 = time.perf_counter()
    log(f"{len(entries)} selected, probe {probe['model']} "
        f"({probe['metadata'].get('model_bytes', 0) / MiB:.1f} MiB)")
    results: dict[str, Any] = {"scenarios": {}, "meta": _meta(args, profile, endpoint.base_url)}
    results["ttfb"] = {"manifest": _ttfb(manifest_url), "probe file": _ttfb(probe_url)}
    sample = work / "limits-sample.bin"  # local bytes for the SHA-256 and disk limits
    if not sample.exists() or sample.stat().st_size != LIMIT_SAMPLE:
        with sample.open("wb") as stream:
            for _ in range(LIMIT_SAMPLE // (16 * MiB)):
                stream.write(os.urandom(16 * MiB))
    ctx.limits = _bench.measure_limits(
        sample, work, probe_url, profile.repeats, stream_name="one curl stream from the mirror",
        stream_bytes=probe["metadata"].get("model_bytes"))
    results["limits"] = {k: asdict(v) for k, v in ctx.limits.items()}
    results["scenarios"]["P"] = _scenarios.single_file(ctx, "P", endpoint, capped=False,  # type: ignore[arg-type]
                                                       model=probe["model"])
    results["scenarios"]["P"]["title"] = f"One model from the mirror: {probe['model']}"
    if len(entries) > 1:
        results["scenarios"]["S"] = _scenarios.bulk(ctx, endpoint=endpoint,  # type: ignore[arg-type]
                                                    tags=tags or None, models=models or None)
        results["scenarios"]["S"]["title"] = "The selection, all at once"
    if not args.no_sweep:
        results["sweep"] = _scenarios.sweep(ctx, endpoint=endpoint, model=probe["model"])  # type: ignore[arg-type]
    results["meta"]["seconds"] = time.perf_counter() - t0
    out = _report.write(results, prefix="operator-", update_readme=False)
    log(f"done: {out}")
    return out


# ---------------------------------------------------------------------- CLI
def _sizes(text: str) -> tuple[int, ...]:
    from asynchub._config import parse_size

    return tuple(parse_size(part, name="--chunks") for part in text.split(",") if part.strip())


def _compile_package() -> None:
    """Byte-compile asynchub as ``pip install`` does for an installed package. Otherwise an
    editable install whose sources changed after their ``.pyc`` was written (or a shell with
    ``PYTHONDONTWRITEBYTECODE`` set) compiles those modules again in every measured process:
    4 ms for one large module, measured."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("asynchub")
    for root in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(root, quiet=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark asynchub against onnx.hub, curl, aria2c and hf_transfer.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, < 5 min (default)")
    mode.add_argument("--full", action="store_true", help="1 GiB models, 3 runs of everything")
    parser.add_argument("--scenarios", default="A,B,C,D,E,F", help="subset of A,B,C,D,E,F")
    parser.add_argument("--repeats", type=int, help="runs per tool (default: profile's)")
    parser.add_argument("--connections", help="sweep connection counts, e.g. 1,4,16")
    parser.add_argument("--chunks", help="sweep chunk sizes, e.g. 4Mi,16Mi (M is 10^6 "
                        "bytes, Mi 2^20, as everywhere in asynchub)")
    parser.add_argument("--server", choices=("auto", "nginx", "python"), default="auto",
                        help="local mirror server (auto: nginx when installed)")
    parser.add_argument("--machine-as-is", action="store_true",
                        help="do not pause free page reporting and DAMON reclaim for the run "
                             "(see benchmarks/_machine.py)")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not refresh the table in benchmarks/README.md")
    op = parser.add_argument_group("operator mode (measure your own mirror)")
    op.add_argument("--manifest-url", help="manifest URL template ({owner}, {repo}, {ref})")
    op.add_argument("--file-urls", help="comma-separated file URL templates ({path}, ...)")
    op.add_argument("--repo", default="onnx/models:main", help="owner/name[:ref]")
    op.add_argument("--tag", help="comma-separated tags to select")
    op.add_argument("--models", help="comma-separated model names to select")
    op.add_argument("--no-sweep", action="store_true", help="skip the connections x chunk sweep")
    args = parser.parse_args(argv)

    _compile_package()
    profile = FULL if args.full else QUICK
    if args.repeats:
        profile = replace(profile, repeats=args.repeats, sweep_repeats=args.repeats)
    if args.connections:
        profile = replace(profile, sweep_connections=tuple(
            int(c) for c in args.connections.split(",") if c.strip()))
    if args.chunks:
        profile = replace(profile, sweep_chunks=_sizes(args.chunks))
    if args.manifest_url or args.file_urls:
        if not (args.manifest_url and args.file_urls):
            parser.error("operator mode needs both --manifest-url and --file-urls")
    elif args.repo != "onnx/models:main":
        parser.error("--repo is for operator mode")
    with _machine.steady(not args.machine_as_is) as args.machine_state:
        log(f"machine: {args.machine_state}")
        if args.manifest_url:
            run_operator(args, profile)
        else:
            run_local(args, profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
