"""`make loadtest`: the pre-rollout load test. Drives the service with Locust, reads its Prometheus metrics, writes a
report and exits non-zero when an SLO of loadtests/slo.toml is missed.

    .venv/bin/python -m loadtests.run                       # start the service (default artifacts), 60 s, 10 users
    .venv/bin/python -m loadtests.run --host http://127.0.0.1:8000 --duration 30 --users 20

Without --host it starts `python -m service` on a free port on 127.0.0.1 and stops it afterwards. Before the
measured run it sends each query of the set once (`--warm-up head`, the default): the locustfile draws its Zipf head
from the whole set, so the query cache then holds the head, as it does in a service that has been up a while, and
the misses in the run are the mix's never-seen tail (10%). `--warm-up none` measures a cold cache instead, where
each head query's first request is a miss too (about 22% of /rank requests in a 60 s default run). It scrapes
/metrics before and after the run (and samples the queue-depth and in-flight gauges every second), runs Locust
headless as a subprocess for --duration seconds (loadtests/locustfile.py, with the repo root on PYTHONPATH so
that it can import loadtests.mix; never imported here: Locust monkey-patches the process with gevent), and writes
reports/loadtest-<UTC timestamp>/: summary.md, summary.json, latency.png, throughput.png, Locust's CSVs, every
request's times and both scrapes.

Exit codes: 0 every objective met, 1 an objective missed, 2 the test could not run (the message says why).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtests.mix import load_queries
from loadtests.process import NotReady, Service, request_json, spawn, start_service, stop_group, wait_ready
from loadtests.report.charts import write_charts
from loadtests.report.figures import RunInfo, Scrapes, build_report
from loadtests.report.markdown import write_report
from loadtests.slo import SloError, load_objectives
from training.paths import ROOT
from training.release.promstats import series

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


class RunError(RuntimeError):
    """The load test could not be run; the message is the one sentence the CLI prints."""


WARM_UP_WORKERS = 2  # concurrent warm-up requests: enough to overlap the round trips, few enough to be gentle


def scrape(url: str) -> str:
    status, body = request_json(f"{url}/metrics", None, 5.0)
    if status != 200:
        raise RunError(f"{url}/metrics answered HTTP {status}")
    return body.decode()


def warm_up(url: str, texts: list[str]) -> float:
    """Send each text once as a /rank query (top_k 1), WARM_UP_WORKERS at a time, so that the service's query cache
    holds them; returns the seconds it took. RunError names the first query not answered 200."""

    def send(text: str) -> None:
        try:
            status, content = request_json(f"{url}/rank", {"query": text, "top_k": 1}, 30.0)
        except OSError as exc:
            raise RunError(f"the warm-up query {text!r} failed: {exc}") from None
        if status != 200:
            detail = content.decode(errors="replace")[:200]
            raise RunError(f"the warm-up query {text!r} was answered HTTP {status}: {detail}")

    started = time.monotonic()
    with ThreadPoolExecutor(WARM_UP_WORKERS) as pool:
        list(pool.map(send, texts))
    return time.monotonic() - started


def wait_for_service(url: str, seconds: float, service: Service | None) -> dict[str, Any]:
    """The /health/ready body once it answers 200; RunError if the service exits or `seconds` pass."""
    try:
        body = wait_ready(
            url,
            service.process if service else None,
            timeout=seconds,
            request_timeout=2.0,
            log=service.log if service else None,
            name="the service",
        )
        return dict(json.loads(body))
    except NotReady as exc:
        raise RunError(str(exc)) from None
    except ValueError:
        raise RunError(f"{url}/health/ready answered 200 with a body that is not JSON") from None


@dataclass
class GaugeSampler:
    """Samples rank_queue_depth and rank_in_flight_requests once per `interval` while the load runs."""

    url: str
    interval: float
    t0: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                text = scrape(self.url)
            except (OSError, RunError):
                continue  # a missed sample under overload is itself informative; the run goes on
            queue = series(text, "rank_queue_depth")
            in_flight = series(text, "rank_in_flight_requests")
            self.samples.append(
                (
                    time.monotonic() - self.t0,
                    queue[0][1] if queue else None,
                    in_flight[0][1] if in_flight else None,
                )
            )

    def __enter__(self) -> GaugeSampler:
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def run_locust(args: argparse.Namespace, url: str, run_dir: Path) -> None:
    locust = Path(sys.executable).parent / "locust"
    if not locust.exists():
        raise RunError(f"{locust} not found; install the load-test tools with `make setup` (the loadtest extra)")
    command = [
        str(locust),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        url,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        f"{args.duration}s",
        "--stop-timeout",
        "5",
        "--csv",
        str(run_dir / "locust"),
        "--csv-full-history",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "0",  # failures are judged by the SLO file, not by Locust
        "--queries",
        str(args.queries),
        "--user-rps",
        str(args.user_rps),
        "--mix-seed",
        str(args.mix_seed),
        "--samples-csv",
        str(run_dir / "samples.csv"),
    ]
    if args.items:
        command += ["--items", str(args.items)]
    # Locust loads the locustfile as a file, not as loadtests.locustfile: the repo root on PYTHONPATH lets its
    # `from loadtests.mix import ...` resolve whatever the working directory.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = spawn(command, env, run_dir / "locust.log")
    try:
        code = process.wait(args.duration + 90)
    except subprocess.TimeoutExpired:
        raise RunError(f"Locust did not stop within {args.duration + 90}s of a {args.duration}s run") from None
    finally:
        stop_group(process, 10)
    if code != 0:
        raise RunError(f"Locust exited with code {code}; see {run_dir / 'locust.log'}")
    if not (run_dir / "samples.csv").exists():
        raise RunError(f"Locust wrote no samples; see {run_dir / 'locust.log'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="", help="URL of a running service (default: start one on 127.0.0.1)")
    parser.add_argument("--duration", type=int, default=60, help="seconds of load (default 60)")
    parser.add_argument("--users", type=int, default=10, help="Locust users (default 10)")
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second (default 10)")
    parser.add_argument("--user-rps", type=float, default=10.0, help="requests/s per user, Poisson (0: no wait)")
    parser.add_argument("--slo", type=Path, default=ROOT / "loadtests/slo.toml", help="SLO file")
    parser.add_argument("--queries", type=Path, default=ROOT / "data/synthetic/queries.jsonl", help="query set")
    parser.add_argument("--items", type=Path, default=None, help="items JSONL for /rerank (default: beside queries)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports", help="parent of the report directory")
    parser.add_argument(
        "--warm-up",
        choices=("head", "none"),
        default="head",
        help="head: send each query of the set once before the run, so only the never-seen tail misses the query "
        "cache (default); none: start the run on a cold cache",
    )
    parser.add_argument("--mix-seed", type=int, default=None, help="seed of the request mix (default: random)")
    parser.add_argument("--bundle-dir", type=Path, default=None, help="bundle for the started service")
    parser.add_argument("--model-dir", type=Path, default=None, help="model for the started service")
    parser.add_argument("--encoder-dir", type=Path, default=None, help="text encoder for the started service")
    parser.add_argument(
        "--ready-timeout", type=float, default=None, help="seconds to wait for readiness (180 started, 10 --host)"
    )
    args = parser.parse_args(argv)
    if args.duration < 1 or args.users < 1 or args.spawn_rate <= 0 or args.user_rps < 0:
        parser.error("--duration, --users and --spawn-rate must be positive and --user-rps not negative")
    if args.mix_seed is None:
        # A fresh seed per run: against a long-running service, a repeated seed would replay last run's "never
        # seen" tail queries straight into a warm cache.
        args.mix_seed = random.SystemRandom().randrange(1_000_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (RunError, SloError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    objectives = load_objectives(args.slo)
    if not args.queries.exists():
        raise RunError(f"no query set at {args.queries}; run `make data` or pass --queries")
    started = datetime.now(UTC)
    run_dir = args.out / f"loadtest-{started:%Y%m%d-%H%M%S}"
    suffix = 1
    while run_dir.exists():
        run_dir = args.out / f"loadtest-{started:%Y%m%d-%H%M%S}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)

    service: Service | None = None
    service_env: dict[str, str] = {}
    if not args.host:
        # One OpenMP thread for FAISS, as `make bench` runs it: on 2 cores, spinning OpenMP workers fight the event
        # loop and the load generator, and tail latency multiplies.
        service_env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        options = {k: getattr(args, k) for k in ("bundle_dir", "model_dir", "encoder_dir") if getattr(args, k)}
        service = start_service(
            {**os.environ, **service_env}, {"log_level": "warning", **options}, log=run_dir / "service.log"
        )
    url = (args.host or (service.url if service else "")).rstrip("/")
    clock = time.monotonic()
    try:
        ready = wait_for_service(url, args.ready_timeout or (180.0 if service else 10.0), service)
        warmed = "none: the run starts on a cold query cache"
        if args.warm_up == "head":
            try:
                texts = list(dict.fromkeys(q.text for q in load_queries(args.queries)))
            except ValueError as exc:
                raise RunError(f"{exc}; fix the query set or pass --warm-up none") from None
            print(f"warm-up: sending each of the {len(texts)} queries of the set once ...", flush=True)
            seconds = warm_up(url, texts)
            warmed = f"head: each of the {len(texts)} queries of the set sent once before the run ({seconds:.1f} s)"
        before = scrape(url)
        with GaugeSampler(url, 1.0) as gauges:
            run_locust(args, url, run_dir)
        try:
            after, problems = scrape(url), []
        except (OSError, RunError) as exc:
            # The service died or hung under load: that is a result, not a reason to lose the client-side figures.
            after, problems = "", [f"the /metrics scrape after the run failed ({exc}); server-side figures are missing"]
        if service is not None and service.process.poll() is not None:
            problems.append(f"the service exited during the run (code {service.process.returncode}); see service.log")
    finally:
        if service is not None:
            stop_group(service.process, 30)
    (run_dir / "metrics-before.prom").write_text(before)
    (run_dir / "metrics-after.prom").write_text(after)

    info = RunInfo(
        target=url,
        started_service=service is not None,
        users=args.users,
        spawn_rate=args.spawn_rate,
        duration_s=args.duration,
        user_rps=args.user_rps,
        mix_seed=args.mix_seed,
        queries=str(args.queries),
        warm_up=warmed,
        slo_file=str(args.slo),
        started_at=f"{started:%Y-%m-%d %H:%M:%S} UTC",
        elapsed_s=round(time.monotonic() - clock, 1),
        ready=ready,
        service_env=service_env,
        locust_version=f"locust {metadata.version('locust')}",
        gauges=gauges.samples,
        problems=problems,
    )
    report = build_report(run_dir, info, Scrapes(before, after), objectives)
    report.charts = write_charts(run_dir, gauges.samples)
    write_report(report, run_dir)

    print(f"report: {run_dir / 'summary.md'}")
    for problem in problems:
        print(f"warning: {problem}")
    print(f"{report.requests} requests, {report.rps:.1f}/s, {report.errors} failures")
    for a in report.agreement:
        print(
            f"{a.route} p99: Locust {a.client_p99:.3f} ms, histogram {a.server_p99:.3f} ms "
            f"(apart {abs(a.difference):.3f} ms, allowed {a.allowance:.3f} ms)"
        )
    for o in report.outcomes:
        print(f"SLO {o.objective.name}: {o.shown()} ({o.objective.describe()}): {'pass' if o.passed else 'MISSED'}")
    missed = sum(not o.passed for o in report.outcomes)
    print("PASS" if not missed else f"FAIL: {missed} of {len(report.outcomes)} objectives missed")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
