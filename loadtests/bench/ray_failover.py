"""What a client sees when a Ray Serve replica dies, and during a hot swap by config redeploy, under Locust load.

    python -m loadtests.bench.ray_failover [--duration 90 --kill-at 15 --swap-at 35]

Starts deploy/ray/serve.yaml's application with 2 replicas on a local Ray (loadtests/bench/ray_cluster.py), drives it
with the load test's Locust mix (loadtests/locustfile.py, 10 users at 10 requests/s by default), and during the run:

1. kills one replica's actor at `--kill-at` seconds (`ray.kill`, no graceful shutdown: a crashed process), then
   waits for Serve to start its replacement;
2. at `--swap-at` seconds redeploys with a new `user_config` naming other model and bundle directories (by default
   copies of the serving ones, so the swap is a real load, check and warm-up of the same model), which every
   replica's `reconfigure` loads and swaps in place.

Every request is sorted by when it started: before the kill, in flight at the kill (started before, answered
after), after it; and around the swap. It prints the table and writes reports/ray-failover-<time>/summary.json
beside Locust's files. Needs the `ray` extra.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from loadtests.bench.ray_cluster import RayServe, replica_id
from loadtests.process import free_port
from loadtests.run import run_locust
from training.paths import ROOT

OK = {"/rank": range(200, 300), "/rerank": range(200, 300)}  # the invalid-by-design requests are judged apart


@dataclass
class Sample:
    start: float
    end: float
    name: str
    status: int
    replica: str
    error: str

    @property
    def failed(self) -> bool:
        expected = OK.get(self.name)
        if expected is None:  # "/rank [invalid]": fine when answered 4xx
            return not 400 <= self.status < 500
        return self.status not in expected


@dataclass
class Window:
    """Requests of one period of the run, and how many of them failed."""

    requests: int = 0
    failed: int = 0
    p50_ms: float | None = None  # client time of the answered /rank requests
    p99_ms: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)


def load_samples(path: Path) -> list[Sample]:
    with path.open() as rows:
        return [
            Sample(
                start=float(r["start"]),
                end=float(r["start"]) + float(r["client_ms"]) / 1000.0,
                name=r["name"],
                status=int(r["status"]),
                replica=r.get("replica", ""),
                error=r["error"],
            )
            for r in csv.DictReader(rows)
        ]


def window(samples: list[Sample]) -> Window:
    w = Window(requests=len(samples), failed=sum(s.failed for s in samples))
    w.statuses = dict(Counter(str(s.status) for s in samples if s.failed))
    times = sorted(s.end - s.start for s in samples if s.name == "/rank" and not s.failed)
    if times:
        w.p50_ms = round(1000 * times[len(times) // 2], 1)
        w.p99_ms = round(1000 * times[min(len(times) - 1, int(0.99 * len(times)))], 1)
    w.replicas = dict(Counter(s.replica or "-" for s in samples))
    return w


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.ray_failover", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=90, help="seconds of Locust load (default 90)")
    parser.add_argument("--kill-at", type=float, default=15.0, help="kill a replica this many seconds in")
    parser.add_argument("--swap-at", type=float, default=35.0, help="redeploy with a new user_config at this time")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--user-rps", type=float, default=10.0)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--bundle-dir", type=Path, default=ROOT / "artifacts/bundle")
    parser.add_argument("--swap-model", type=Path, default=None, help="model to swap in (default: a copy)")
    parser.add_argument("--swap-bundle", type=Path, default=None, help="bundle to swap in (default: a copy)")
    parser.add_argument("--queries", type=Path, default=ROOT / "data/synthetic/queries.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < args.swap_at < args.duration:
        parser.error("need 0 < --kill-at < --swap-at < --duration")
    return args


def copy_artifacts(model: Path, bundle: Path, into: Path) -> tuple[Path, Path]:
    """A copy of the model (its files, not its sub-directories) and of the bundle: other paths, same bytes."""
    model_copy = into / "swap-model"
    model_copy.mkdir(parents=True)
    for f in model.iterdir():
        if f.is_file():
            shutil.copy2(f, model_copy / f.name)
    bundle_copy = into / "swap-bundle"
    shutil.copytree(bundle, bundle_copy)
    return model_copy, bundle_copy


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = args.out / f"ray-failover-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True)
    swap_model, swap_bundle = (
        (args.swap_model, args.swap_bundle)
        if args.swap_model and args.swap_bundle
        else copy_artifacts(args.model_dir, args.bundle_dir, run_dir)
    )
    env = {
        "RANK_MODEL_DIR": str(args.model_dir.resolve()),
        "RANK_BUNDLE_DIR": str(args.bundle_dir.resolve()),
        "RANK_RAY_TARGETS_DIR": str((run_dir / "targets").resolve()),
        "OMP_NUM_THREADS": "1",
    }
    events: dict[str, object] = {}
    with RayServe.start(port=free_port(), replicas=2, env=env) as ray_serve:
        before = ray_serve.replicas()
        print(f"Ray Serve at {ray_serve.url}: replicas {', '.join(replica_id(n) for n in before)}", flush=True)
        locust_args = argparse.Namespace(
            users=args.users,
            spawn_rate=args.users,
            duration=args.duration,
            queries=args.queries,
            user_rps=args.user_rps,
            mix_seed=0,
            items=None,
        )
        load = threading.Thread(target=run_locust, args=(locust_args, ray_serve.url, run_dir), daemon=True)
        started = time.time()
        load.start()
        time.sleep(args.kill_at)
        victim = before[0]
        killed_at = time.time()
        ray_serve.kill(victim)
        print(f"killed replica {replica_id(victim)} at {killed_at - started:.1f}s", flush=True)
        after = ray_serve.wait_replicas(2, without=victim)
        replaced_at = time.time()
        print(f"replacement running after {replaced_at - killed_at:.1f}s: {', '.join(map(replica_id, after))}")
        time.sleep(max(0.0, started + args.swap_at - time.time()))
        swap_started = time.time()
        ray_serve.deploy(user_config={"model_dir": str(swap_model.resolve()), "bundle_dir": str(swap_bundle.resolve())})
        swap_done = time.time()
        print(f"redeploy with a new user_config took {swap_done - swap_started:.1f}s", flush=True)
        load.join(args.duration + 120)
        events = {
            "victim": replica_id(victim),
            "kill_s": round(killed_at - started, 3),
            "replacement_running_s": round(replaced_at - killed_at, 3),
            "swap_s": round(swap_started - started, 3),
            "swap_took_s": round(swap_done - swap_started, 3),
            "replicas_after": [replica_id(n) for n in ray_serve.replicas()],
        }
    samples = load_samples(run_dir / "samples.csv")
    victim_id = str(events["victim"])
    original = {replica_id(n) for n in before}
    periods = {
        "before the kill": [s for s in samples if s.end < killed_at],
        "in flight at the kill": [s for s in samples if s.start < killed_at <= s.end],
        "sent after the kill": [s for s in samples if killed_at <= s.start < swap_started],
        "sent during the redeploy": [s for s in samples if swap_started <= s.start < swap_done],
        "sent after the redeploy": [s for s in samples if s.start >= swap_done],
    }
    summary = {
        "events": events,
        "periods": {name: asdict(window(rows)) for name, rows in periods.items()},
        "sent_to_dead_replica_after_kill": sum(1 for s in samples if s.start >= killed_at and s.replica == victim_id),
        "replacement_first_answer_s": min(
            (round(s.end - killed_at, 3) for s in samples if s.replica and s.replica not in original), default=None
        ),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n| period | requests | failed | failures by status | /rank p50 ms | /rank p99 ms |")
    print("|---|---:|---:|---|---:|---:|")
    for name, rows in periods.items():
        w = window(rows)
        print(f"| {name} | {w.requests} | {w.failed} | {w.statuses or '-'} | {w.p50_ms} | {w.p99_ms} |")
    print(f"\nrequests sent to the dead replica after the kill: {summary['sent_to_dead_replica_after_kill']}")
    print(f"replacement first answered {summary['replacement_first_answer_s']}s after the kill")
    print(f"report: {run_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
