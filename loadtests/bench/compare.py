"""`make bench`: this service against the alternatives, side by side, in one run, on 127.0.0.1.

Each system is started in turn over the same bundle and model, warmed with every benchmark query once, then driven
by wrk at each concurrency for a fixed time with each traffic mix (`Traffic`: the 100 benchmark queries cycled, all
never-seen, or Zipf-drawn with a never-seen tail of 10% or 30%; 100 candidates; top 10), then by the open-loop
generator (loadtests/openloop.py) at increasing constant rates to find its capacity. Prints one table (client-side
p50/p99 and requests/s from wrk), the capacity table, the service's per-stage server times from its own Prometheus
histograms, and rewrites the marked section of BENCHMARKS.md.

Systems: `naive` (PyTorch in a plain FastAPI handler: loadtests/bench/peers/naive_app.py), `ray-serve` (Ray Serve with
@serve.batch over the same engine: loadtests/bench/peers/ray_app.py, in .venv-bench), `service` (this project).

    .venv/bin/python -m loadtests.bench --bundle artifacts/bundle-100k --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtests.bench.systems import start, wait_serving
from loadtests.bench.traffic import TRAFFIC, Bodies, benchmark_bodies, post, run_wrk, wrk_script
from loadtests.openloop import OpenLoopResult, capacity, capacity_under, open_loop
from loadtests.process import free_port, stop_group
from service.metrics import STAGES
from training.release.promstats import delta, histogram_buckets, histogram_quantile, scrape

MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"


@dataclass
class Run:
    system: str
    traffic: str
    concurrency: int
    p50_ms: float
    p99_ms: float
    rps: float
    errors: int
    stages: dict[str, tuple[float, float]]  # stage -> (p50 ms, p99 ms), service only


def stage_times(url: str, before: str) -> dict[str, tuple[float, float]]:
    after = scrape(url)
    out = {}
    for stage in STAGES:
        buckets = delta(
            histogram_buckets(after, "rank_stage_seconds", route="/rank", stage=stage),
            histogram_buckets(before, "rank_stage_seconds", route="/rank", stage=stage),
        )
        out[stage] = (histogram_quantile(0.5, buckets) * 1e3, histogram_quantile(0.99, buckets) * 1e3)
    return out


def bench_system(system: str, args: argparse.Namespace, bodies: list[dict]) -> tuple[list[Run], list[OpenLoopResult]]:
    """Start `system`, run every traffic mix at every concurrency with wrk, then its open-loop capacity ladder."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start(system, port, args)
    runs: list[Run] = []
    ladder: list[OpenLoopResult] = []
    try:
        wait_serving(url, system, bodies[0], process)
        for body in bodies:  # warm: every query once, so caches that exist are warm
            post(f"{url}/rank", body)
        for name in args.traffic:
            script = Path(tempfile.gettempdir()) / f"bench-{name.replace(' ', '').replace('%', 'pct')}.lua"
            wrk_script(bodies, script, TRAFFIC[name])
            for concurrency in args.concurrency:
                before = scrape(url) if system == "service" else ""
                p50, p99, rps, errors = run_wrk(url, script, concurrency, args.duration)
                stages = stage_times(url, before) if system == "service" else {}
                runs.append(Run(system, name, concurrency, p50, p99, rps, errors, stages))
                print(
                    f"  {system:<10} {name:<10} c={concurrency:<3} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"
                    f"  {rps:8.0f} req/s  errors {errors}",
                    flush=True,
                )
        if args.capacity_rates:
            mix = TRAFFIC[args.capacity_traffic]

            def at(rate: float) -> OpenLoopResult:
                result = open_loop(url, "/rank", Bodies(bodies, mix, seed=int(rate)), rate, args.capacity_seconds)
                print(
                    f"  {system:<10} open loop {rate:6.0f}/s ({mix.name}): p50 {result.p50_ms:7.2f} ms"
                    f"  p99 {result.p99_ms:8.2f} ms  answered {result.achieved:6.1f}/s  errors {result.errors}"
                    f"  generator lag p99 {result.lag_p99_ms:.2f} ms",
                    flush=True,
                )
                return result

            # One ladder, climbed until the loosest threshold is missed; the tighter ones are read off it.
            _, ladder = capacity(at, args.capacity_rates, max(args.capacity_p99_ms))
    finally:
        stop_group(process, 30)
    return runs, ladder


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, no GPU, Python {platform.python_version()}"


def report(runs: list[Run], ladders: dict[str, list[OpenLoopResult]], args: argparse.Namespace, manifest: dict) -> str:
    index = manifest["index"]
    lines = [
        f"Machine: {machine()}. Catalog: {manifest['items']:,} SYNTHETIC items, "
        f"{index['params']['kind']} index (M={index['params']['hnsw_m']}, efSearch={index['params']['ef_search']}), "
        f"recall@100 vs exact {index['recall@100']}. 100 candidates, top 10, after one warm-up pass over the 100 "
        f"benchmark queries; wrk (closed loop) for {args.duration}s per cell, load generator on the same 2 cores. "
        "Traffic: `cached` cycles the 100 queries (every one a cache hit); `never-seen` sends only queries no "
        "system has seen (a benchmark query with a unique suffix: MiniLM runs for each); `mix N%` draws the 100 "
        "queries Zipf-like (s = 1.1) with N% never-seen.",
        "",
        "| system | traffic | concurrency | p50 ms | p99 ms | requests/s | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.system} | {r.traffic} | {r.concurrency} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.rps:.0f} | {r.errors} |"
        for r in runs
    ]
    by = {(r.system, r.traffic, r.concurrency): r for r in runs}
    top = max(args.concurrency)
    for traffic in args.traffic:
        mine = by.get(("service", traffic, top))
        for peer in ("naive", "ray-serve"):
            theirs = by.get((peer, traffic, top))
            if mine and theirs:
                lines.append(
                    f"\nThroughput, {traffic}, concurrency {top}: service / {peer} = {mine.rps / theirs.rps:.1f}x "
                    f"(p99 {mine.p99_ms:.1f} vs {theirs.p99_ms:.1f} ms)."
                )
    thresholds = sorted(args.capacity_p99_ms)
    if ladders:
        lines += [
            "",
            f"**Capacity** (open loop, `loadtests/openloop.py`: constant arrival rate, latency from each request's "
            f"issue on the schedule, the generator's own timer lag not counted; {args.capacity_traffic} traffic, "
            f"{args.capacity_seconds:g} s per rate, rates tried in increasing order until the first miss of the "
            f"loosest threshold): the highest rate at which /rank client p99 stays under each threshold with no error.",
            "",
            "| system | "
            + " | ".join(f"capacity at p99 < {t:g} ms, requests/s" for t in thresholds)
            + " | rates tried: p99 ms (answered/s) |",
            "| --- |" + " --- |" * (len(thresholds) + 1),
        ]
        best: dict[tuple[str, float], float] = {}
        for system, ladder in ladders.items():
            for t in thresholds:
                best[system, t] = capacity_under(ladder, t)
            # A system that met a threshold at the highest rate tried may carry more: say so, not a number.
            highest_rate = max(args.capacity_rates)
            cells = [
                f">= {best[system, t]:g}" if best[system, t] == highest_rate else f"{best[system, t]:g}"
                for t in thresholds
            ]
            tried = ", ".join(f"{r.rate:g}: {r.p99_ms:.1f} ({r.achieved:.0f})" for r in ladder)
            lines.append(f"| {system} | " + " | ".join(cells) + f" | {tried} |")
        for t in thresholds:
            for peer in ("naive", "ray-serve"):
                ours, other = best.get(("service", t)), best.get((peer, t))
                if ours and other:
                    bound = "at least " if ours == max(args.capacity_rates) else ""
                    lines.append(f"\nCapacity at p99 < {t:g} ms, service / {peer} = {bound}{ours / other:.1f}x.")
                elif ours and other == 0.0:
                    lowest = min(r.rate for r in ladders[peer])
                    lines.append(
                        f"\nCapacity at p99 < {t:g} ms: service {ours:g} requests/s, {peer} under {lowest:g} "
                        f"(the lowest rate tried): more than {ours / lowest:.1f}x."
                    )
        lag = max(r.lag_p99_ms for ladder in ladders.values() for r in ladder)
        lines.append(f"\nThe generator's own lag behind its schedule (not in the latencies): p99 at most {lag:.2f} ms.")
    service_runs = [r for r in runs if r.system == "service"]
    if service_runs:
        lines += [
            "",
            "Service-side stage times from `rank_stage_seconds` (histogram quantiles, ms; p50 / p99):",
            "",
            "| traffic | concurrency | " + " | ".join(STAGES) + " |",
            "| --- | --- |" + " --- |" * len(STAGES),
        ]
        for r in service_runs:
            stage_cells = " | ".join(f"{r.stages[s][0]:.3f} / {r.stages[s][1]:.3f}" for s in STAGES)
            lines.append(f"| {r.traffic} | {r.concurrency} | {stage_cells} |")
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    content = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{MARK_START}\n{text}\n{MARK_END}"
    if MARK_START in content:
        content = re.sub(f"{re.escape(MARK_START)}.*?{re.escape(MARK_END)}", lambda _: block, content, flags=re.S)
    else:
        content += f"\n## make bench: service vs naive vs Ray Serve\n\n{block}\n"
    path.write_text(content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/bundle-100k"))
    parser.add_argument("--model", type=Path, default=Path("artifacts"))
    parser.add_argument("--encoder", type=Path, default=Path("artifacts/encoders/minilm"))
    parser.add_argument("--queries", type=Path, default=Path("data/synthetic/queries.jsonl"))
    parser.add_argument("--systems", nargs="+", default=["naive", "ray-serve", "service"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--traffic", nargs="+", default=list(TRAFFIC), choices=list(TRAFFIC))
    parser.add_argument(
        "--capacity-rates", type=float, nargs="*", default=[10, 25, 50, 100, 150, 200, 300], help="open-loop rates"
    )
    parser.add_argument("--capacity-traffic", default="mix 10%", choices=list(TRAFFIC))
    parser.add_argument(
        "--capacity-p99-ms", type=float, nargs="+", default=[10.0, 50.0], help="client p99 thresholds (ms)"
    )
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--bench-python", type=Path, default=Path(".venv-bench/bin/python"))
    parser.add_argument("--write", default="BENCHMARKS.md", help="file whose bench section is rewritten; '' for none")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    manifest_path = args.bundle / "manifest.json"
    if not manifest_path.exists():
        print(f"error: no bundle at {args.bundle}; run `make bench-data`", file=sys.stderr)
        return 2
    if "ray-serve" in args.systems and not args.bench_python.exists():
        print(f"error: {args.bench_python} is missing; `make bench` creates it", file=sys.stderr)
        return 2
    bodies = benchmark_bodies(args.queries)
    runs: list[Run] = []
    ladders: dict[str, list[OpenLoopResult]] = {}
    for system in args.systems:
        print(f"== {system}", flush=True)
        system_runs, ladder = bench_system(system, args, bodies)
        runs += system_runs
        if ladder:
            ladders[system] = ladder
    text = report(runs, ladders, args, json.loads(manifest_path.read_text()))
    print("\n" + text)
    if args.write:
        write_section(text, Path(args.write))
    return 0


if __name__ == "__main__":
    sys.exit(main())
