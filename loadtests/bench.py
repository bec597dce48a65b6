"""`make bench`: this service against the alternatives, side by side, in one run, on 127.0.0.1.

Each system is started in turn over the same bundle and model, warmed with every benchmark query once, then driven
by wrk at each concurrency for a fixed time with each traffic mix (`Traffic`: the 100 benchmark queries cycled, all
never-seen, or Zipf-drawn with a never-seen tail of 10% or 30%; 100 candidates; top 10), then by the open-loop
generator (loadtests/openloop.py) at increasing constant rates to find its capacity. Prints one table (client-side
p50/p99 and requests/s from wrk), the capacity table, the service's per-stage server times from its own Prometheus
histograms, and rewrites the marked section of BENCHMARKS.md.

Systems: `naive` (PyTorch in a plain FastAPI handler: loadtests/peers/naive_app.py), `ray-serve` (Ray Serve with
@serve.batch over the same engine: loadtests/peers/ray_app.py, in .venv-bench), `service` (this project).

    .venv/bin/python -m loadtests.bench --bundle artifacts/bundle-100k --duration 10
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from loadtests.openloop import OpenLoopResult, capacity, capacity_under, open_loop
from loadtests.process import free_port, stop_group, wait_ready
from service.metrics import STAGES
from training.release.promstats import delta, histogram_buckets, histogram_quantile, scrape

ROOT = Path(__file__).resolve().parents[1]
MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"


@dataclass(frozen=True)
class Traffic:
    """A request mix: `tail` of the requests carry a never-seen query (a test query with a unique suffix: a cache
    miss that pays for MiniLM); the rest are the benchmark's queries, cycled in order, or drawn Zipf-like (s = 1.1,
    the load test's head) when `zipf`."""

    name: str
    tail: float
    zipf: bool


TRAFFIC = {
    t.name: t
    for t in (
        Traffic("cached", 0.0, False),
        Traffic("never-seen", 1.0, False),
        Traffic("mix 10%", 0.1, True),
        Traffic("mix 30%", 0.3, True),
    )
}
ZIPF_S = 1.1


def zipf_cumulative(n: int, s: float = ZIPF_S) -> list[float]:
    weights = [1.0 / rank**s for rank in range(1, n + 1)]
    total = sum(weights)
    out, running = [], 0.0
    for w in weights:
        running += w / total
        out.append(running)
    out[-1] = 1.0
    return out


def benchmark_bodies(queries: Path) -> list[dict]:
    """The /rank bodies of the benchmark's 100 queries: the last 100 of a queries.jsonl (the SYNTHETIC test split's
    tail), top 10 of 100 candidates."""
    texts = [json.loads(line)["text"] for line in queries.read_text().splitlines()]
    return [{"query": t, "top_k": 10, "num_candidates": 100} for t in texts[-100:]]


class Bodies:
    """The /rank bodies of a traffic mix, for the open-loop generator (the wrk script draws the same way)."""

    def __init__(self, bodies: list[dict], traffic: Traffic, seed: int = 0) -> None:
        self.bodies, self.traffic = bodies, traffic
        self.cumulative = zipf_cumulative(len(bodies))
        self.rng = random.Random(seed)

    def __call__(self, i: int) -> dict:
        if self.rng.random() < self.traffic.tail:
            base = self.rng.choice(self.bodies)
            return {**base, "query": f"{base['query']} {i} {self.rng.randrange(10**9)}"}
        if self.traffic.zipf:
            return self.bodies[bisect.bisect_left(self.cumulative, self.rng.random())]
        return self.bodies[i % len(self.bodies)]


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


def post(url: str, body: dict, timeout: float = 30.0) -> int:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
        return int(response.status)


def log_path(system: str) -> Path:
    """Where a started system's stdout and stderr go."""
    return Path(tempfile.gettempdir()) / f"bench-{system}.log"


def command(system: str, port: int, args: argparse.Namespace) -> list[str]:
    """The command line that serves `system` on `port` over args.model and args.bundle (args.encoder for the two
    that encode with ONNX; args.bench_python for Ray Serve)."""
    paths = ["--port", str(port), "--model-dir", str(args.model), "--bundle-dir", str(args.bundle)]
    if system == "naive":
        return [sys.executable, "loadtests/peers/naive_app.py", *paths]
    if system == "ray-serve":
        return [str(args.bench_python), "loadtests/peers/ray_app.py", *paths, "--encoder-dir", str(args.encoder)]
    if system == "service":
        return [sys.executable, "-m", "service", *paths, "--encoder-dir", str(args.encoder), "--log-level", "warning"]
    raise ValueError(f"unknown system {system!r}; choose naive, ray-serve or service")


def start(system: str, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """Start `system` in its own process group (stop it with loadtests.process.stop_group), logging to
    log_path(system)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with log_path(system).open("wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command(system, port, args), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_serving(url: str, system: str, body: dict, process: subprocess.Popen[bytes], seconds: float = 240.0) -> None:
    """Wait until a real /rank request answers 200 (the peers have no readiness route); NotReady otherwise."""
    wait_ready(url, process, timeout=seconds, path="/rank", body=body, interval=1.0, log=log_path(system), name=system)


def wrk_script(bodies: list[dict], path: Path, traffic: Traffic) -> None:
    """A wrk Lua script for `traffic` over `bodies` (see Traffic). Each wrk thread seeds its own generator and
    numbers its never-seen queries with its id, so no two threads send the same one."""
    quoted = ",\n".join(f"  [[{json.dumps(b)}]]" for b in bodies)
    texts = ",\n".join("  [[" + b["query"].replace('"', "").replace("\\", "").replace("]", "") + "]]" for b in bodies)
    cumulative = ", ".join(f"{c:.8f}" for c in zipf_cumulative(len(bodies))) if traffic.zipf else ""
    template = json.dumps({**bodies[0], "query": "QUERY"}).replace('"QUERY"', '"%s %d %d"')
    path.write_text(
        f"local bodies = {{\n{quoted}\n}}\nlocal texts = {{\n{texts}\n}}\n"
        f"local cumulative = {{{cumulative}}}\nlocal tail = {traffic.tail}\nlocal i = 0\nlocal threads = 0\n"
        "function setup(thread)\n  threads = threads + 1\n  thread:set('id', threads)\nend\n"
        "function init(args)\n  math.randomseed(id * 7919 + os.time())\nend\n"
        "request = function()\n  i = i + 1\n  local body\n"
        "  if math.random() < tail then\n"
        f"    body = string.format('{template}', texts[math.random(#texts)], id, i)\n"
        "  elseif #cumulative > 0 then\n"
        "    local r, k = math.random(), 1\n    while cumulative[k] < r do k = k + 1 end\n    body = bodies[k]\n"
        "  else\n    body = bodies[(i % #bodies) + 1]\n  end\n"
        '  return wrk.format("POST", "/rank", {["Content-Type"] = "application/json"}, body)\nend\n'
    )


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(url: str, script: Path, concurrency: int, duration: int) -> tuple[float, float, float, int]:
    threads = min(concurrency, 2)
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{duration}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"{url}/rank",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += (
        sum(int(n) for n in re.findall(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)[0])
        if "Socket errors" in out
        else 0
    )
    return _ms(latency["50"]), _ms(latency["99"]), rps, errors


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
