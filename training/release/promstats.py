"""Prometheus exposition helpers for the release's canary and the load tools: scrape, diff two scrapes, and histogram
quantiles.

`histogram_quantile` interpolates linearly inside the bucket that holds the rank, as PromQL's function of the same
name does, applied to the bucket deltas between two scrapes (what `rate()` would see over the run).
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

Buckets = dict[float, float]  # upper bound -> cumulative count


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return response.read().decode()


def histogram_buckets(text: str, name: str, **labels: str) -> Buckets:
    """Cumulative bucket counts of histogram `name` for the series whose labels include `labels`."""
    out: Buckets = defaultdict(float)
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name != f"{name}_bucket":
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                out[float(sample.labels["le"])] += sample.value
    return dict(out)


def delta(after: Buckets, before: Buckets) -> Buckets:
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def series(text: str, sample_name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called `sample_name` (e.g. `rank_http_requests_total`, `rank_queue_depth`) as (labels, value);
    empty when the service does not export it."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name:
                out.append((dict(sample.labels), float(sample.value)))
    return out


def has_family(text: str, name: str) -> bool:
    """Whether the exposition declares metric family `name` (a counter may be named with or without `_total`),
    even one with no samples yet (a labelled counter before its first increment)."""
    return any(family.name in (name, name.removesuffix("_total")) for family in text_string_to_metric_families(text))


def counter_deltas(after: str, before: str, sample_name: str, by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Increase of a counter between two scrapes, summed by the label values in `by`. A series that first appears
    after the first scrape counts from zero, as prometheus_client creates labelled series on first use."""
    totals: dict[tuple[str, ...], float] = defaultdict(float)
    for sign, text in ((1.0, after), (-1.0, before)):
        for labels, value in series(text, sample_name):
            totals[tuple(labels.get(k, "") for k in by)] += sign * value
    return dict(totals)


def histogram_quantile(q: float, buckets: Buckets) -> float:
    """The q-quantile (0..1) of cumulative buckets; NaN when empty. Values in the +Inf bucket clamp to the last
    finite bound, as in PromQL."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return float("nan")
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower
            width = count - below
            return lower + (le - lower) * ((rank - below) / width if width else 1.0)
        lower, below = le, count
    return lower


def bucket_width_at(value: float, buckets: Buckets) -> float:
    """Width of the bucket that contains `value` (the histogram's resolution there)."""
    bounds = sorted(b for b in buckets if b != float("inf"))
    lower = 0.0
    for le in bounds:
        if value <= le:
            return le - lower
        lower = le
    return float("inf")
