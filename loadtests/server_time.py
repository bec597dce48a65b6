"""Server-side time of /rank (or /rerank) per stage, from the service's own `timing_ms`, over N sequential requests.

    .venv/bin/python -m loadtests.server_time --url http://127.0.0.1:8000 --requests 1000 --candidates 100

Queries come from the dataset's queries.jsonl (a small set, cycled, so the query cache is warm after the first
pass, as for head queries in production); the first pass is discarded. With `--never-seen` every request's text is
new, drawn as the load test draws its never-seen tail (`loadtests.mix.never_seen_texts`: two real queries' words
recombined, so as long as real queries; a new seed each run), so each one pays for MiniLM. With `--rerank-documents
N` each request is a /rerank of a cached query and N catalog titles (items.jsonl beside the queries) sent as text
documents, drawn afresh each request, so each one pays for MiniLM over N documents. Prints p50/p99 per stage in ms,
and the client's time per request (urllib, a new connection each) as `client`.

With `--floors`, the two biggest stages are then timed alone in this process, on the artifacts the service reads (the
same RANK_* settings) and in the same run, so that a stage reads against its floor on a machine whose speed drifts:
`floor:encode` is MiniLM on each text sent, one call each, as the encode stage runs it at c=1; `floor:rank` the
ranker graph on `--candidates` bundle rows of one query, its inputs ready; `floor:scoring` the scoring graph the rank
stage runs (`index.runtime.scoring_graph`: those rows gathered by id, their evidence, the ranker) back to back, and
`floor:scoring-paused` the same after a 2 ms sleep each, as the ranking thread meets it between c=1 requests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import secrets
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from loadtests.mix import load_documents, load_queries, never_seen_texts
from service.metrics import STAGES as SERVICE_STAGES

STAGES = tuple(s for s in SERVICE_STAGES if not s.endswith("queue"))  # one request at a time: no queue
PAUSE_S = 0.002  # floor:scoring-paused sleeps this long before each run


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def floor_times(texts: list[str], candidates: int) -> dict[str, list[float]]:
    """ms per call of MiniLM alone (one text a call) and, with a model, of the ranker graph alone (`candidates` rows
    of the bundle for one query), once per text, loaded as the service loads them (service.loading)."""
    from index.runtime.bundle import Bundle
    from index.runtime.exported_model import MODEL_CARD_FILE, ExportedModel
    from index.runtime.scoring_graph import ScoringGraph
    from index.runtime.text_encoder import TextEncoder
    from service.settings import load_settings

    settings = load_settings()
    encoder = TextEncoder(
        settings.query_encoder_dir or settings.encoder_dir,
        variant=settings.query_encoder.value,
        threads=settings.encoder_threads,
        idle_threads=min(settings.encoder_idle_threads, os.cpu_count() or 1),
    )
    floors: dict[str, list[float]] = {"floor:encode": []}
    for text in texts:
        started = time.perf_counter()
        encoder.encode([text], idle=True)
        floors["floor:encode"].append((time.perf_counter() - started) * 1000.0)
    if not (settings.model_dir / MODEL_CARD_FILE).exists():
        return floors  # zero-shot: no ranker
    model = ExportedModel(settings.model_dir, threads=settings.ort_threads)
    bundle = Bundle.load(settings.bundle_dir)
    rows = np.random.default_rng(0).choice(bundle.size, min(candidates, bundle.size), replace=False)
    query = encoder.encode(texts[:1])
    inputs = (
        query,
        bundle.cand_kv[rows],
        bundle.text[rows],
        bundle.mask[rows],
        np.zeros(len(rows), np.float32),
        np.zeros((len(rows), 2), np.float32),
        np.zeros(len(rows), np.int64),
    )
    floors["floor:rank"] = []
    for _ in texts:
        started = time.perf_counter()
        model.score(*inputs)
        floors["floor:rank"].append((time.perf_counter() - started) * 1000.0)
    # The graph the rank stage runs: the same rows gathered by id, their evidence, then the ranker's nodes.
    graph = ScoringGraph(bundle, model, settings.ort_threads)
    layout = (query, model.project_queries(query), rows[None], np.ones((1, len(rows)), bool))
    bm25 = np.zeros((1, len(rows)), np.float32)
    # And after a pause as long as a c=1 client's round trip, as the service's ranking thread meets it: on a shared
    # VM the core that slept comes back with cold caches (the same run took 2x as long here, 2026-12-07).
    for name, pause in (("floor:scoring", 0.0), ("floor:scoring-paused", PAUSE_S)):
        floors[name] = []
        for _ in texts:
            time.sleep(pause)
            started = time.perf_counter()
            graph.run(model.card.prior, *layout, bm25)
            floors[name].append((time.perf_counter() - started) * 1000.0)
    return floors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.server_time", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--queries", type=Path, default=Path("data/synthetic/queries.jsonl"))
    parser.add_argument("--distinct", type=int, default=50, help="distinct queries cycled through")
    parser.add_argument("--never-seen", action="store_true", help="a new query text every request (cache misses)")
    parser.add_argument(
        "--rerank-documents", type=int, default=0, help="/rerank with this many text documents instead of /rank"
    )
    parser.add_argument(
        "--explain", action="store_true", help='ask for explanations ("explain": true; no result or candidate cache)'
    )
    parser.add_argument(
        "--floors",
        action="store_true",
        help="then time MiniLM alone, the ranker graph alone and the scoring graph alone here, on the same artifacts",
    )
    args = parser.parse_args(argv)
    queries = load_queries(args.queries)
    texts = [q.text for q in queries[: args.distinct]]
    body: dict = {"top_k": 10, "num_candidates": args.candidates}
    if args.explain:
        body["explain"] = True
    for text in texts:  # warm the query cache
        post(f"{args.url}/rank", {**body, "query": text})
    timings: dict[str, list[float]] = {stage: [] for stage in [*STAGES, "client"]}
    # A new seed each run, so that a run's texts are not the ones an earlier run left in the service's cache.
    fresh = never_seen_texts(queries, secrets.randbits(32))
    sent = fresh if args.never_seen else itertools.cycle(texts)
    titles = load_documents(args.queries.with_name("items.jsonl"))[1] if args.rerank_documents else []
    if len(titles) < args.rerank_documents:
        parser.error(
            f"--rerank-documents {args.rerank_documents}: items.jsonl beside the queries has {len(titles)} titles"
        )
    rng = random.Random(secrets.randbits(32))
    asked = list(itertools.islice(sent, args.requests))
    for text in asked:
        started = time.perf_counter()
        if args.rerank_documents:
            documents = rng.sample(titles, args.rerank_documents)
            timing = post(f"{args.url}/rerank", {"query": text, "documents": documents, "top_n": 5})["meta"][
                "timing_ms"
            ]
        else:
            timing = post(f"{args.url}/rank", {**body, "query": text})["timing_ms"]
        timings["client"].append((time.perf_counter() - started) * 1000.0)
        for stage in STAGES:
            timings[stage].append(timing[stage])
    if args.floors:
        timings |= floor_times(asked, args.candidates)
    cache = "every query never seen" if args.never_seen else "warm query cache"
    if args.rerank_documents:
        print(f"/rerank server-side time, {args.requests} requests, {args.rerank_documents} text documents, {cache}")
    else:
        print(f"/rank server-side time, {args.requests} requests, {args.candidates} candidates, {cache}")
    print(f"{'stage':<12} {'p50 ms':>8} {'p99 ms':>8}")
    for stage in timings:
        values = np.asarray(timings[stage])
        print(f"{stage:<12} {np.percentile(values, 50):>8.3f} {np.percentile(values, 99):>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
