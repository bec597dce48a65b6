"""Every figure of a load-test report: client quantiles from the samples, server quantiles from the two scrapes'
histogram deltas (`Scrapes`), the p99 agreement between them, counters and gauges, and the SLO outcomes
(`build_report`), gathered in a `Report` that knows its JSON form."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.report.inputs import Sample, load_samples, locust_rows
from loadtests.slo import Measurements, Objective, Outcome, check
from service.metrics import STAGES
from training.release.promstats import (
    Buckets,
    bucket_width_at,
    counter_deltas,
    delta,
    has_family,
    histogram_buckets,
    histogram_quantile,
    series,
)

ROUTES = ("/rank", "/rerank")
QUANTILES = (0.5, 0.95, 0.99)
# The service's caches, by the key of their lookups in the summary: an unfiltered /rank repeat takes its scores from
# the result cache (and then looks up neither of the others), else its candidates from the candidate cache (no FAISS
# or BM25); a query in the query cache skips MiniLM.
CACHES = {
    "result_cache": "rank_result_cache_total",
    "candidate_cache": "rank_candidate_cache_total",
    "query_cache": "rank_query_cache_total",
}


@dataclass(frozen=True)
class Quantiles:
    """p50, p95, p99 in ms over n observations (NaN when n is 0)."""

    n: int
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: list[float]) -> Quantiles:
        if not values:
            return cls(0, math.nan, math.nan, math.nan)
        p50, p95, p99 = (float(v) for v in np.percentile(np.asarray(values), [50, 95, 99]))
        return cls(len(values), p50, p95, p99)


@dataclass(frozen=True)
class Scrapes:
    """The /metrics text before and after the run, and what can be read from their difference."""

    before: str
    after: str

    def buckets(self, name: str, labels: dict[str, str]) -> Buckets | None:
        """Bucket deltas over the run; None when the series is absent or a counter went backwards (a restart)."""
        after = histogram_buckets(self.after, name, **labels)
        if not after:
            return None
        deltas = delta(after, histogram_buckets(self.before, name, **labels))
        if any(v < 0 for v in deltas.values()):
            return None
        return deltas

    def quantile_ms(self, name: str, labels: dict[str, str], q: float) -> float | None:
        buckets = self.buckets(name, labels)
        value = histogram_quantile(q, buckets) * 1000.0 if buckets else math.nan
        return None if math.isnan(value) else value

    def quantiles_ms(self, name: str, labels: dict[str, str]) -> tuple[Quantiles, float] | None:
        """(p50/p95/p99 in ms, bucket width in ms at the p99) of a latency histogram over the run."""
        buckets = self.buckets(name, labels)
        if not buckets or buckets.get(math.inf, 0.0) <= 0:
            return None
        p50, p95, p99 = (histogram_quantile(q, buckets) * 1000.0 for q in QUANTILES)
        quantiles = Quantiles(int(buckets[math.inf]), p50, p95, p99)
        return quantiles, bucket_width_at(p99 / 1000.0, buckets) * 1000.0

    def mean_and_quantiles(self, name: str) -> dict[str, float] | None:
        """Mean (sum/count) and p99 of a count histogram (batch sizes) over the run. No median: with buckets as coarse
        as 1, 2, 4, interpolation puts the median of all-ones at 0.5, which reads as nonsense."""
        buckets = self.buckets(name, {})
        if not buckets or buckets.get(math.inf, 0.0) <= 0:
            return None
        total = sum(v for _, v in series(self.after, f"{name}_sum")) - sum(
            v for _, v in series(self.before, f"{name}_sum")
        )
        count = buckets[math.inf]
        return {
            "calls": count,
            "mean": total / count,
            "p50": histogram_quantile(0.5, buckets),
            "p99": histogram_quantile(0.99, buckets),
        }

    def counter(self, name: str, by: tuple[str, ...] = ()) -> dict[tuple[str, ...], float] | None:
        """Increase over the run by label values; None when the service does not export the counter at all."""
        if not has_family(self.after, name):
            return None
        return counter_deltas(self.after, self.before, name, by)

    def info(self) -> dict[str, str]:
        found = series(self.after, "rank_model_info")
        return found[0][0] if found else {}


@dataclass(frozen=True)
class Agreement:
    """How far the client's p99 is from the histogram's for one route, and what the instruments allow.

    A client time is the server's time plus the time outside it (the HTTP overhead), request by request. So the
    client's p99 is at least the server's (less one bucket width, the histogram's resolution), and at most the
    server's p99.5 plus the overhead's p99.5 (plus the width): at most 0.5% of requests exceed each, so at most 1%
    exceed the sum. A sum of p99s is no bound: when stalls hit some requests inside the server and others outside it,
    each p99 can miss its stall while the client's p99 holds both.
    """

    route: str
    client_p99: float
    server_p99: float
    bucket_width: float
    server_p995: float
    overhead_p995: float | None  # client time - Server-Timing total, per request, p99.5

    @property
    def difference(self) -> float:
        return self.client_p99 - self.server_p99

    @property
    def allowance(self) -> float:
        """How far above the server's p99 the client's may be."""
        return self.bucket_width + (self.server_p995 - self.server_p99) + (self.overhead_p995 or 0.0)

    @property
    def agrees(self) -> bool:
        return -self.bucket_width <= self.difference <= self.allowance


@dataclass
class RunInfo:
    """How the run was set up (for the report's header and summary.json)."""

    target: str
    started_service: bool
    users: int
    spawn_rate: float
    duration_s: float
    user_rps: float
    mix_seed: int
    queries: str
    slo_file: str
    started_at: str
    elapsed_s: float = 0.0
    warm_up: str = ""  # what the query cache held when the run began (loadtests.run --warm-up)
    ready: dict[str, Any] = field(default_factory=dict)
    service_env: dict[str, str] = field(default_factory=dict)
    locust_version: str = ""
    gauges: list[tuple[float, float | None, float | None]] = field(default_factory=list)  # (t, queue, in-flight)
    problems: list[str] = field(default_factory=list)  # what went wrong with the run itself


@dataclass
class Report:
    """Everything summary.md and summary.json say."""

    info: RunInfo
    passed: bool
    outcomes: list[Outcome]
    locust_rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    client: dict[str, Quantiles]  # Locust request name or route -> exact client quantiles
    http: dict[str, tuple[Quantiles, float]]  # route -> rank_http_request_duration_seconds quantiles, width at p99
    stages: dict[str, dict[str, tuple[Quantiles, float]]]  # route -> stage -> rank_stage_seconds quantiles, width
    overhead: dict[str, Quantiles]  # route -> client - Server-Timing total, 200s only
    server_timing: dict[str, Quantiles]  # route -> exact Server-Timing totals, 200s only
    agreement: list[Agreement]
    statuses: dict[str, dict[str, float]] | None  # route -> status -> count (server counter)
    extras: dict[str, Any]
    requests: int
    errors: int
    rps: float
    charts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def clean(value: Any) -> Any:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {str(k): clean(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            return value

        body = {
            "passed": self.passed,
            "info": asdict(self.info),
            "slo": [
                {
                    "name": o.objective.name,
                    "objective": o.objective.describe(),
                    "threshold": o.objective.threshold,
                    "measured": o.measured,
                    "passed": o.passed,
                    "note": o.note,
                }
                for o in self.outcomes
            ],
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_s": self.rps,
            "locust": self.locust_rows,
            "locust_failures": self.failures,
            "client_ms": {k: asdict(v) for k, v in self.client.items()},
            "server_http_ms": {k: {**asdict(q), "bucket_width_at_p99": w} for k, (q, w) in self.http.items()},
            "server_stage_ms": {
                route: {s: {**asdict(q), "bucket_width_at_p99": w} for s, (q, w) in stages.items()}
                for route, stages in self.stages.items()
            },
            "http_overhead_ms": {k: asdict(v) for k, v in self.overhead.items()},
            "server_timing_total_ms": {k: asdict(v) for k, v in self.server_timing.items()},
            "p99_agreement": [
                {**asdict(a), "difference": a.difference, "allowance": a.allowance, "agrees": a.agrees}
                for a in self.agreement
            ],
            "status_counts": self.statuses,
            "extras": self.extras,
            "charts": self.charts,
        }
        return clean(body)


def failure_counts(samples: list[Sample]) -> list[dict[str, Any]]:
    """How often each (request name, error) occurred among the samples."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for s in samples:
        if s.error:
            counts[(s.name, s.error)] += 1
    return [{"name": n, "error": e, "occurrences": c} for (n, e), c in sorted(counts.items())]


def build_report(run_dir: Path, info: RunInfo, scrapes: Scrapes, objectives: list[Objective]) -> Report:
    """Read the run's files and the scrapes, compute every figure, and check the objectives."""
    samples = load_samples(run_dir / "samples.csv")
    by_name: dict[str, list[float]] = defaultdict(list)
    by_route: dict[str, list[float]] = defaultdict(list)
    overhead: dict[str, list[float]] = defaultdict(list)
    server_timing: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        by_name[s.name].append(s.client_ms)
        by_route[s.route].append(s.client_ms)
        if s.status == 200 and s.server_ms is not None:
            overhead[s.route].append(s.client_ms - s.server_ms)
            server_timing[s.route].append(s.server_ms)
    client = {name: Quantiles.of(values) for name, values in sorted(by_name.items())}
    client.update({f"{route} (all requests)": Quantiles.of(by_route[route]) for route in ROUTES if route in by_route})

    http: dict[str, tuple[Quantiles, float]] = {}
    stages: dict[str, dict[str, tuple[Quantiles, float]]] = {}
    agreement = []
    for route in ROUTES:
        found = scrapes.quantiles_ms("rank_http_request_duration_seconds", {"route": route})
        if found:
            http[route] = found
        per_stage = {}
        for stage in STAGES:
            stage_found = scrapes.quantiles_ms("rank_stage_seconds", {"route": route, "stage": stage})
            if stage_found:
                per_stage[stage] = stage_found
        if per_stage:
            stages[route] = per_stage
        if found and by_route.get(route):
            (server_q, width), client_q = found, Quantiles.of(by_route[route])
            over = float(np.percentile(overhead[route], 99.5)) if overhead.get(route) else None
            server_p995 = histogram_quantile(
                0.995, scrapes.buckets("rank_http_request_duration_seconds", {"route": route})
            )
            agreement.append(Agreement(route, client_q.p99, server_q.p99, width, server_p995 * 1000.0, over))

    statuses_raw = scrapes.counter("rank_http_requests_total", ("route", "status"))
    statuses: dict[str, dict[str, float]] | None = None
    if statuses_raw is not None:
        statuses = defaultdict(dict)
        for (route, status), count in sorted(statuses_raw.items()):
            if count > 0:
                statuses[route][status] = count
        statuses = dict(statuses)

    extras: dict[str, Any] = {
        "batch_candidates": scrapes.mean_and_quantiles("rank_batch_size"),
        "batch_requests": scrapes.mean_and_quantiles("rank_batch_requests"),
        "candidates_per_request": scrapes.mean_and_quantiles("rank_candidates"),
    }
    for key, metric in CACHES.items():
        cache = scrapes.counter(metric, ("result",))
        if cache is not None:
            hits, misses = cache.get(("hit",), 0.0), cache.get(("miss",), 0.0)
            extras[key] = {
                "hits": hits,
                "misses": misses,
                "hit_ratio": hits / (hits + misses) if hits + misses else None,
            }
    rejections = scrapes.counter("rank_rejections_total", ("reason",))
    extras["rejections"] = None if rejections is None else {k[0]: v for k, v in rejections.items() if v}
    drops = scrapes.counter("rank_deadline_drops_total")
    extras["deadline_drops"] = None if drops is None else sum(drops.values())
    queue = [q for _, q, _ in info.gauges if q is not None]
    in_flight = [f for _, _, f in info.gauges if f is not None]
    extras["queue_depth"] = {"max": max(queue), "mean": sum(queue) / len(queue)} if queue else None
    # Minus 1: the scrape that reads the gauge is itself in flight.
    extras["in_flight"] = (
        {"max": max(in_flight) - 1, "mean": sum(in_flight) / len(in_flight) - 1} if in_flight else None
    )
    extras["model_info"] = scrapes.info()

    # Counts come from the samples, not Locust's CSV: the CSV misses the requests that finish while Locust stops
    # its users, and the samples must match the server's counters over the same window.
    requests = len(samples)
    failures = failure_counts(samples)
    errors = sum(f["occurrences"] for f in failures)
    span = max(s.start + s.client_ms / 1000.0 for s in samples) - min(s.start for s in samples) if samples else 0.0
    rps = requests / span if span > 0 else math.nan

    def locust_ms(name: str, q: float) -> float | None:
        values = by_name.get(name)
        return float(np.percentile(np.asarray(values), q * 100)) if values else None

    outcomes = check(objectives, Measurements(scrapes.quantile_ms, locust_ms, requests, errors))
    return Report(
        info=info,
        passed=all(o.passed for o in outcomes),
        outcomes=outcomes,
        locust_rows=locust_rows(run_dir / "locust_stats.csv"),
        failures=failures,
        client=client,
        http=http,
        stages=stages,
        overhead={route: Quantiles.of(v) for route, v in overhead.items()},
        server_timing={route: Quantiles.of(v) for route, v in server_timing.items()},
        agreement=agreement,
        statuses=statuses,
        extras=extras,
        requests=requests,
        errors=errors,
        rps=rps,
    )
