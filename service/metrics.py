"""Prometheus metrics of the service, on a registry of its own (one per app, so tests can build many apps).

Names follow Prometheus conventions (`_seconds`, `_total`); labels are bounded: route is one of the known routes,
status is the HTTP code, stage is one of STAGES. No query text ever becomes a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# 50 us to 1 s: fine resolution under the 2 ms budget, coarse above it.
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00015,
    0.0002,
    0.0003,
    0.0004,
    0.0005,
    0.00075,
    0.001,
    0.00125,
    0.0015,
    0.00175,
    0.002,
    0.0025,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.035,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# The order a request meets them in: the wait for the encode thread and MiniLM there (both ~0 for a cached query,
# which skips the encode stage), the wait for the ranking thread, then its laps (`RankingEngine.process_batch`).
STAGES = ("encode_queue", "encode", "queue", "project", "retrieve", "lexical", "fuse", "gather", "rank", "total")
ROUTES = (
    "/rank",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/admin/reload",
    "/admin/rollback",
    "/health/live",
    "/health/ready",
    "/metrics",
)


class Metrics:
    """All metric families of one app instance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "rank_stage_seconds",
            "Server-side time per request stage.",
            ["route", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.served_seconds = Histogram(
            "rank_served_seconds",
            "Server time of each request served (its Server-Timing total), by route, by whether MiniLM ran for it "
            "(encoded: a query-cache miss, or /rerank text documents) and by the model version that served it.",
            ["route", "encoded", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "rank_http_request_duration_seconds",
            "Time from request received to response sent, per route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "rank_http_requests_total",
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.model_requests = Counter(
            "rank_model_requests_total",
            "Requests served, by route and the model version that served them (canary split).",
            ["route", "model_version"],
            registry=self.registry,
        )
        self.shadow_requests = Counter(
            "rank_shadow_requests_total",
            "Requests offered to the shadow model, by outcome (compared, shed: the ranking queue was long, failed), "
            "the serving model's version and the shadow's.",
            ["outcome", "model_version", "shadow_version"],
            registry=self.registry,
        )
        self.shadow_agreement = Histogram(
            "rank_shadow_agreement",
            "Agreement of the shadow's list with the served one, per request pair: figure is overlap_at_10, rbo "
            "(p = 0.9), kendall_tau (on the common items) or top1 (1 when the first items match).",
            ["figure", "model_version", "shadow_version"],
            buckets=(-0.5, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=self.registry,
        )
        self.shadow_stage_seconds = Histogram(
            "rank_shadow_stage_seconds",
            "The shadow model's own time per stage (total: from its submission to its outcome).",
            ["stage", "shadow_version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.candidates = Histogram(
            "rank_candidates",
            "Candidates scored per request.",
            buckets=(1, 10, 25, 50, 100, 200, 500, 1000),
            registry=self.registry,
        )
        self.cache = Counter(
            "rank_query_cache_total", "Query-embedding cache lookups by result.", ["result"], registry=self.registry
        )
        self.candidate_cache = Counter(
            "rank_candidate_cache_total",
            "Candidate-list cache lookups of unfiltered /rank jobs, by result.",
            ["result"],
            registry=self.registry,
        )
        self.event_records = Counter(
            "rank_event_records_total",
            "Impression and feedback records (service/events.py) by kind and outcome: written, dropped (the queue was "
            "full: a slow disk), failed (could not be made).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.explored = Counter(
            "rank_explored_total",
            "/rank answers shown with two adjacent results swapped (RANK_EXPLORE).",
            registry=self.registry,
        )
        self.result_cache = Counter(
            "rank_result_cache_total",
            "Result (score) cache lookups of unfiltered /rank jobs, by result: a hit skips every stage.",
            ["result"],
            registry=self.registry,
        )
        self.query_encodes = Counter(
            "rank_query_encodes_total",
            "Queries MiniLM embedded (cache misses), by the intra-op threads it ran on: the idle session's while no "
            "other stage had work, else RANK_ENCODER_THREADS.",
            ["threads"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "rank_batch_size",
            "Candidates scored per ranker call (one call serves a whole micro-batch).",
            buckets=(1, 10, 50, 100, 200, 400, 800, 1600, 3200, 6400),
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "rank_batch_requests",
            "Requests served per ranker call.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.queue_depth = Gauge("rank_queue_depth", "Requests waiting for the ranking thread.", registry=self.registry)
        self.encode_queue_depth = Gauge(
            "rank_encode_queue_depth", "Requests waiting for the encode thread (cache misses).", registry=self.registry
        )
        self.rejections = Counter(
            "rank_rejections_total",
            "Requests refused before queueing (429), by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.deadline_drops = Counter(
            "rank_deadline_drops_total",
            "Requests dropped unprocessed because their deadline passed (504).",
            registry=self.registry,
        )
        self.key_requests = Counter(
            "rank_api_key_requests_total",
            'Data-plane requests by API key id (RANK_API_KEYS set); refusals as key_id "missing" or "invalid".',
            ["key_id"],
            registry=self.registry,
        )
        self.in_flight = Gauge("rank_in_flight_requests", "Requests being handled now.", registry=self.registry)
        self.ready = Gauge("rank_ready", "1 when the model and bundle are loaded and warm.", registry=self.registry)
        self.info = Info("rank_model", "Versions and execution provider being served.", registry=self.registry)

    def route_label(self, path: str) -> str:
        return path if path in ROUTES else "other"
