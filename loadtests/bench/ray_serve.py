"""The service itself against the same app on Ray Serve with 1 and 2 replicas, side by side in one run.

    .venv/bin/python -m loadtests.bench.ray_serve [--bundle artifacts/bundle --duration 10]

For each system, wrk at c=1 and c=32 with the cached mix and the load test's 10% never-seen mix (the same Lua
scripts as `make bench`), after every benchmark query once. The Ray systems are service/ray_deployment.py deployed
from deploy/ray/serve.yaml (loadtests/bench/ray_cluster.py): the same FastAPI app per replica, behind Ray's HTTP proxy.
Then c=1 through a DeploymentHandle (`handle.rank.remote(body)` from the driver: no proxy, no HTTP), which is how a
latency-critical Python caller inside the cluster skips the proxy. Prints one table; needs the `ray` extra and wrk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from loadtests.bench.compare import Run
from loadtests.bench.ray_cluster import RayServe
from loadtests.bench.systems import start, wait_serving
from loadtests.bench.traffic import TRAFFIC, post, run_wrk, wrk_script
from loadtests.process import free_port, stop_group
from training.paths import ROOT


def drive(system: str, url: str, args: argparse.Namespace, bodies: list[dict], warm_passes: int = 1) -> list[Run]:
    # Warm: every query once, as make bench does; with several replicas, each keeps its own query cache and the
    # proxy picks one at random, so more passes are needed before (nearly) every replica has seen every query.
    for _ in range(warm_passes):
        for body in bodies:
            post(f"{url}/rank", body)
    rows = []
    for name in args.traffic:
        script = Path(tempfile.gettempdir()) / f"bench-ray-{name.replace(' ', '').replace('%', 'pct')}.lua"
        wrk_script(bodies, script, TRAFFIC[name])
        for concurrency in args.concurrency:
            p50, p99, rps, errors = run_wrk(url, script, concurrency, args.duration)
            rows.append(Run(system, name, concurrency, p50, p99, rps, errors, stages={}))
            print(f"  {system:<22} {name:<9} c={concurrency:<3} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  {rps:7.0f}/s")
    return rows


def handle_c1(ray_serve: RayServe, bodies: list[dict], seconds: float) -> Run:
    """Sequential `handle.rank.remote(body).result()` calls over the cached queries for `seconds`."""
    handle = ray_serve.handle()
    for body in bodies:
        handle.rank.remote(body).result()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        handle.rank.remote(bodies[i % len(bodies)]).result()
        times.append((time.perf_counter() - started) * 1000.0)
        i += 1
    times.sort()
    p50, p99 = times[len(times) // 2], times[int(0.99 * (len(times) - 1))]
    row = Run("ray-serve 1, handle", "cached", 1, p50, p99, len(times) / seconds, 0, stages={})
    print(f"  {row.system:<22} cached    c=1   p50 {row.p50_ms:7.2f} ms  p99 {row.p99_ms:7.2f} ms  {row.rps:7.0f}/s")
    return row


def table(rows: list[Run]) -> str:
    lines = ["| system | traffic | c | p50 ms | p99 ms | requests/s | errors |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [
        f"| {r.system} | {r.traffic} | {r.concurrency} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.rps:.0f} | {r.errors} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.ray_serve", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "artifacts/bundle")
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--encoder", type=Path, default=ROOT / "artifacts/encoders/minilm")
    parser.add_argument("--queries", type=Path, default=ROOT / "data/synthetic/queries.jsonl")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--traffic", nargs="+", default=["cached", "mix 10%"], choices=list(TRAFFIC))
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    texts = [json.loads(line)["text"] for line in args.queries.read_text().splitlines()]
    bodies = [{"query": t, "top_k": 10, "num_candidates": 100} for t in texts[-100:]]
    rows: list[Run] = []

    print("== service", flush=True)
    port = free_port()
    process = start("service", port, argparse.Namespace(model=args.model, bundle=args.bundle, encoder=args.encoder))
    try:
        wait_serving(f"http://127.0.0.1:{port}", "service", bodies[0], process)
        rows += drive("service", f"http://127.0.0.1:{port}", args, bodies)
    finally:
        stop_group(process, 30)

    env = {
        "RANK_MODEL_DIR": str(args.model.resolve()),
        "RANK_BUNDLE_DIR": str(args.bundle.resolve()),
        "RANK_ENCODER_DIR": str(args.encoder.resolve()),
        "OMP_NUM_THREADS": "1",
    }
    print("== ray-serve, 1 replica", flush=True)
    with RayServe.start(port=free_port(), replicas=1, env=env) as ray_serve:
        rows += drive("ray-serve 1 replica", ray_serve.url, args, bodies)
        rows.append(handle_c1(ray_serve, bodies, args.duration))
        print("== ray-serve, 2 replicas", flush=True)
        ray_serve.replica_count = 2
        ray_serve.deploy()
        ray_serve.wait_replicas(2)
        rows += drive("ray-serve 2 replicas", ray_serve.url, args, bodies, warm_passes=6)
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
