"""summary.md, rendered from a `Report`, and `write_report`, which writes it beside summary.json."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

from loadtests.report.figures import CACHES, ROUTES, Quantiles, Report
from service.metrics import STAGES


def ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if value >= 10 else f"{value:.3f}"


def quantile_cells(q: Quantiles) -> str:
    """n, p50, p95 and p99 as the cells of a markdown table row."""
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
                lines.append(f"| {route} | {source} | {quantile_cells(q)} | {'' if width is None else ms(width)} |")
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
                lines.append(f"| {stage} | {quantile_cells(q)} | {ms(width)} |")
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


def write_report(report: Report, run_dir: Path) -> None:
    (run_dir / "summary.md").write_text(render_markdown(report))
    (run_dir / "summary.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
