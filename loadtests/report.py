"""The load-test report: client-side figures from Locust, server-side figures from two /metrics scrapes, side by side.

Inputs, all in the run's directory: Locust's CSVs (`locust_stats.csv`, `locust_failures.csv`,
`locust_stats_history.csv` from --csv-full-history), the locustfile's `samples.csv` (every request's exact client
time and the server's Server-Timing `total`), and the Prometheus exposition scraped before and after the run.
Outputs: `summary.md`, `summary.json` and two PNG charts.

Server-side quantiles come from histogram bucket *deltas* between the two scrapes, interpolated as PromQL's
`histogram_quantile` does, so they describe exactly the run's window, as `rate(...[window])` would. Every metric
family is optional: a service that does not export one gets "n/a" in that row, never an error.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
# The service's caches, by the key of their lookups in the summary: unfiltered /rank repeats skip FAISS and BM25.
CACHES = {"query_cache": "rank_query_cache_total", "candidate_cache": "rank_candidate_cache_total"}


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
class Sample:
    """One request as the locustfile recorded it."""

    start: float  # epoch seconds
    name: str
    status: int  # 0: no response (connection error, timeout)
    client_ms: float
    server_ms: float | None  # Server-Timing total; None when the response had none (4xx, errors)
    error: str  # why Locust counted it as a failure; empty for a success

    @property
    def route(self) -> str:
        return self.name.split(" ", 1)[0]


def load_samples(path: Path) -> list[Sample]:
    if not path.exists():
        return []
    with path.open(newline="") as rows:
        return [
            Sample(
                float(row["start"]),
                row["name"],
                int(row["status"]),
                float(row["client_ms"]),
                float(row["server_total_ms"]) if row["server_total_ms"] else None,
                row["error"],
            )
            for row in csv.DictReader(rows)
        ]


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


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _locust_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as rows:
        return [
            {
                "name": row["Name"],
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": _float(row["Requests/s"]),
                "p50": _float(row["50%"]),
                "p95": _float(row["95%"]),
                "p99": _float(row["99%"]),
            }
            for row in csv.DictReader(rows)
        ]


def _failures(samples: list[Sample]) -> list[dict[str, Any]]:
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
    failures = _failures(samples)
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
        locust_rows=_locust_rows(run_dir / "locust_stats.csv"),
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


# -- rendering ---------------------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if value >= 10 else f"{value:.3f}"


def _quantile_cells(q: Quantiles) -> str:
    return f"{q.n} | {ms(q.p50)} | {ms(q.p95)} | {ms(q.p99)}"


def render_markdown(report: Report) -> str:
    info = report.info
    model = report.extras.get("model_info") or {}
    ready = info.ready
    synthetic = " (SYNTHETIC catalog: numbers say nothing about real data)" if ready.get("synthetic") else ""
    lines = [
        f"# Load test {info.started_at}: {'PASS' if report.passed else 'FAIL'}",
        "",
        f"- target: `{info.target}` ({'started by the runner' if info.started_service else 'already running'})"
        f"{synthetic}",
        f"- model `{ready.get('model_version') or model.get('model_version', '?')}`, bundle "
        f"`{ready.get('bundle_version') or model.get('bundle_version', '?')}` ({ready.get('items', '?')} items, "
        f"{model.get('index', '?')} index), provider `{ready.get('provider') or model.get('provider', '?')}`",
        f"- load: Locust FastHttpUser ({info.locust_version}), {info.users} users spawned at {info.spawn_rate:g}/s, "
        f"each at {info.user_rps:g} requests/s (Poisson), {info.duration_s:g} s; mix seed {info.mix_seed}; queries "
        f"`{info.queries}`",
        *([f"- query-cache warm-up: {info.warm_up}"] if info.warm_up else []),
        f"- machine: {platform.node()}, {_cpus()} CPUs, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; load generator and service share it"
        + (
            f"; service started with {' '.join(f'{k}={v}' for k, v in info.service_env.items())}"
            if info.service_env
            else ""
        ),
        f"- SLO file: `{info.slo_file}`",
        *(f"- **problem**: {problem}" for problem in info.problems),
        "",
        "## SLOs",
        "",
        "| objective | measured | threshold | result |",
        "| --- | --- | --- | --- |",
    ]
    for o in report.outcomes:
        result = "pass" if o.passed else "**MISSED**" + (f" ({o.note})" if o.note else "")
        lines.append(f"| {o.objective.name} | {o.shown()} | {o.objective.describe()} | {result} |")

    lines += [
        "",
        "## Throughput and errors",
        "",
        f"{report.requests} requests: **{report.rps:.1f} requests/s**; {report.errors} failures "
        f"({report.errors / report.requests if report.requests else 0:.3%}). Invalid-by-design requests answered 4xx "
        "count as successes. Counted from every request the locustfile recorded (Locust's CSV, last table, leaves "
        "out the requests that finish while it stops its users).",
        "",
    ]
    if report.statuses is not None:
        lines += ["Responses by route and status (server counter `rank_http_requests_total`, increase over the run):"]
        lines += ["", "| route | status | count |", "| --- | --- | --- |"]
        for route, counts in sorted(report.statuses.items()):
            for status, count in sorted(counts.items()):
                lines.append(f"| {route} | {status} | {count:.0f} |")
        lines.append("")
    if report.failures:
        lines += ["Failures as Locust saw them:", "", "| request | error | count |", "| --- | --- | --- |"]
        lines += [f"| {f['name']} | {f['error']} | {f['occurrences']} |" for f in report.failures]
        lines.append("")

    lines += [
        "## Latency: client (Locust) and server (Prometheus histograms)",
        "",
        "Times in ms. *Locust* rows are exact quantiles of every request's time as Locust measured it (the "
        "locustfile records them; Locust's own CSV rounds to whole ms and is in the last table). *Histogram* rows "
        "are PromQL-style `histogram_quantile` over the bucket deltas between the scrapes before and after the run; "
        "the histogram cannot resolve finer than the width of the bucket the quantile falls in.",
        "",
        "| route | source | n | p50 | p95 | p99 | bucket width at p99 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for route in ROUTES:
        rows: list[tuple[str, Quantiles | None, float | None]] = [
            ("Locust, all requests", report.client.get(f"{route} (all requests)"), None),
            ("histogram `rank_http_request_duration_seconds`", *report.http.get(route, (None, None))),
            ("Server-Timing `total` (HTTP 200, exact)", report.server_timing.get(route), None),
            (
                "histogram `rank_stage_seconds` total (HTTP 200)",
                *report.stages.get(route, {}).get("total", (None, None)),
            ),
            ("HTTP overhead: Locust - Server-Timing total", report.overhead.get(route), None),
        ]
        for source, q, width in rows:
            if q is not None:
                lines.append(f"| {route} | {source} | {_quantile_cells(q)} | {'' if width is None else ms(width)} |")
    lines.append("")
    for a in report.agreement:
        over = "n/a (no Server-Timing headers)" if a.overhead_p995 is None else f"{ms(a.overhead_p995)} ms"
        verdict = "they agree" if a.agrees else "**they disagree**: look for time spent outside the instrumented path"
        lines.append(
            f"- **{a.route} p99**: Locust {ms(a.client_p99)} ms, histogram {ms(a.server_p99)} ms: "
            f"{abs(a.difference):.3f} ms {'above' if a.difference >= 0 else 'below'} it. Allowed: up to the bucket "
            f"width at the histogram's p99 ({ms(a.bucket_width)} ms) below it; above it, that width + the histogram's "
            f"p99.5 - p99 ({ms(a.server_p995 - a.server_p99)} ms) + the HTTP overhead's p99.5 ({over}) = "
            f"{ms(a.allowance)} ms; {verdict}."
        )
    lines.append("")

    for route, per_stage in report.stages.items():
        lines += [
            f"### Server stages, {route} (`rank_stage_seconds`, HTTP 200 only)",
            "",
            "| stage | n | p50 | p95 | p99 | bucket width at p99 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for stage in (*STAGES, *sorted(set(per_stage) - set(STAGES))):
            if stage in per_stage:
                q, width = per_stage[stage]
                lines.append(f"| {stage} | {_quantile_cells(q)} | {ms(width)} |")
        lines.append("")

    lines += ["## Batching, queue and cache", "", "| what | over the run |", "| --- | --- |"]
    for key, label in (
        ("batch_candidates", "candidates per ranker call (`rank_batch_size`)"),
        ("batch_requests", "requests per ranker call (`rank_batch_requests`)"),
        ("candidates_per_request", "candidates per request (`rank_candidates`)"),
    ):
        value = report.extras.get(key)
        shown = (
            "n/a" if value is None else f"{value['calls']:.0f} calls, mean {value['mean']:.1f}, p99 {value['p99']:.1f}"
        )
        lines.append(f"| {label} | {shown} |")
    for key, metric in CACHES.items():
        cache = report.extras.get(key)
        lines.append(
            f"| {key.replace('_', ' ')} (`{metric}`) | "
            + (
                "n/a"
                if not cache
                else f"{cache['hits']:.0f} hits, {cache['misses']:.0f} misses"
                + (f", hit ratio {cache['hit_ratio']:.1%}" if cache["hit_ratio"] is not None else "")
            )
            + " |"
        )
    rejections = report.extras.get("rejections")
    lines.append(
        "| rejections, 429 (`rank_rejections_total`) | "
        + ("n/a" if rejections is None else (", ".join(f"{k}: {v:.0f}" for k, v in rejections.items()) or "0"))
        + " |"
    )
    drops = report.extras.get("deadline_drops")
    lines.append(
        f"| deadline drops, 504 (`rank_deadline_drops_total`) | {'n/a' if drops is None else f'{drops:.0f}'} |"
    )
    for key, label in (("queue_depth", "`rank_queue_depth`"), ("in_flight", "`rank_in_flight_requests`")):
        value = report.extras.get(key)
        shown = "n/a" if value is None else f"max {value['max']:.0f}, mean {value['mean']:.2f}"
        lines.append(f"| {label} (sampled each second during the run) | {shown} |")
    lines.append("")

    lines += [
        "## Locust's own statistics (`locust_stats.csv`, whole ms)",
        "",
        "| request | requests | failures | requests/s | p50 | p95 | p99 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report.locust_rows:
        lines.append(
            f"| {row['name']} | {row['requests']} | {row['failures']} | {row['rps']:.1f} | {row['p50']:g} | "
            f"{row['p95']:g} | {row['p99']:g} |"
        )
    lines.append("")
    if report.charts:
        lines += ["## Over time (Locust's stats history; percentiles over its sliding 10 s window)", ""]
        lines += [f"![{Path(c).stem}]({c})" for c in report.charts]
        lines.append("")
    lines += [
        "Files here: `locust_*.csv` (Locust), `samples.csv` (every request), `metrics-before.prom` and "
        "`metrics-after.prom` (the scrapes), `summary.json` (these figures), `locust.log`"
        + (", `service.log`." if info.started_service else "."),
        "",
    ]
    return "\n".join(lines)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _history(path: Path) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = defaultdict(list)
    if not path.exists():
        return columns
    with path.open(newline="") as rows:
        for row in csv.DictReader(rows):
            if row["Name"] != "Aggregated":
                continue
            idle = _float(row["Requests/s"]) == 0  # Locust's first rows: no window yet, percentiles read 0
            for key in ("Timestamp", "User Count", "Requests/s", "Failures/s", "50%", "95%", "99%"):
                columns[key].append(math.nan if idle and key.endswith("%") else _float(row[key]))
    return columns


def write_charts(run_dir: Path, gauges: list[tuple[float, float | None, float | None]]) -> list[str]:
    """latency.png and throughput.png from Locust's stats history (and the sampled gauges); returns file names."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    history = _history(run_dir / "locust_stats_history.csv")
    if len(history.get("Timestamp", [])) < 2:
        return []
    start = history["Timestamp"][0]
    t = [x - start for x in history["Timestamp"]]

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for key, label in (("50%", "p50"), ("95%", "p95"), ("99%", "p99")):
        ax.plot(t, history[key], label=label)
    ax.set(xlabel="seconds since start", ylabel="response time, ms", title="Latency percentiles (Locust, all requests)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "latency.png", dpi=100)
    plt.close(fig)

    panels = 2 if gauges else 1
    fig, axes = plt.subplots(panels, 1, figsize=(9, 3.2 * panels + 1), sharex=True, squeeze=False)
    top = axes[0][0]
    top.plot(t, history["Requests/s"], label="requests/s")
    top.plot(t, history["Failures/s"], label="failures/s", color="tab:red")
    top.set(ylabel="per second", title="Throughput (Locust)")
    users = top.twinx()
    users.plot(t, history["User Count"], color="tab:gray", linestyle=":", label="users (right axis)")
    users.set_ylabel("users")
    users.set_ylim(bottom=0)
    users.yaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    handles = top.get_legend_handles_labels()[0] + users.get_legend_handles_labels()[0]
    top.legend(handles=handles, loc="lower right")
    if gauges:
        bottom = axes[1][0]
        gt = [g[0] for g in gauges]
        bottom.plot(gt, [math.nan if g[1] is None else g[1] for g in gauges], label="queue depth")
        bottom.plot(gt, [math.nan if g[2] is None else g[2] - 1 for g in gauges], label="in flight")
        bottom.set(ylabel="requests", title="Service gauges (sampled /metrics)")
        bottom.set_ylim(bottom=0)
        bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.grid(alpha=0.3)
        bottom.legend(loc="upper left")
    axes[-1][0].set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(run_dir / "throughput.png", dpi=100)
    plt.close(fig)
    return ["latency.png", "throughput.png"]


def write_report(report: Report, run_dir: Path) -> None:
    (run_dir / "summary.md").write_text(render_markdown(report))
    (run_dir / "summary.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
