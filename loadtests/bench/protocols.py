"""gRPC against HTTP on one running service, side by side in one run: `python -m loadtests.bench.protocols
--url http://127.0.0.1:8000 --grpc 127.0.0.1:50051`.

Each protocol sends the same /rank bodies (top_k 10, 100 candidates) over one kept-alive connection (HTTP:
http.client with JSON; gRPC: one channel, the generated stub), in alternating rounds:

- c=1, cached: the query set's first `--distinct` queries cycled (embeddings, candidates and results cached);
- c=1, never-seen: a new query text each request (MiniLM runs);
- c=32, cached: 32 client threads, each with its own connection, for `--seconds`, counting answers (throughput).

Prints client p50/p99 and the service's own total (timing_ms) per protocol and round. The client shares the
machine's cores with the service, so compare the rows of one run, not runs on different days.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import grpc
import numpy as np
import orjson

from loadtests.mix import load_queries, never_seen_texts
from service.rpc import rank_pb2 as pb
from service.rpc import rank_pb2_grpc

Call = Callable[[str], float]  # one /rank for a query text; returns the server's total ms


def http_caller(url: str) -> Call:
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=30)
    headers = {"content-type": "application/json"}

    def call(query: str) -> float:
        body = orjson.dumps({"query": query, "top_k": 10, "num_candidates": 100})
        connection.request("POST", "/rank", body, headers)
        response = connection.getresponse()
        answer = orjson.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"/rank answered {response.status}: {answer}")
        return float(answer["timing_ms"]["total"])

    return call


def grpc_caller(target: str) -> Call:
    stub = rank_pb2_grpc.RankerStub(grpc.insecure_channel(target))

    def call(query: str) -> float:
        return stub.Rank(pb.RankRequest(query=query, top_k=10, num_candidates=100), timeout=30).timing_ms["total"]

    return call


def one_at_a_time(call: Call, texts: Iterator[str], requests: int) -> tuple[np.ndarray, np.ndarray]:
    """Client and server ms of `requests` sequential calls."""
    client, server = [], []
    for text in itertools.islice(texts, requests):
        started = time.perf_counter()
        server.append(call(text))
        client.append((time.perf_counter() - started) * 1000.0)
    return np.asarray(client), np.asarray(server)


def throughput(make: Callable[[], Call], texts: list[str], threads: int, seconds: float) -> float:
    """Answers per second from `threads` closed-loop clients over `seconds`."""
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def worker(n: int) -> None:
        call = make()
        for text in itertools.cycle(texts):
            if time.perf_counter() >= stop:
                return
            call(text)
            done[n] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.protocols", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--grpc", default="127.0.0.1:50051", help="the same service's gRPC host:port")
    parser.add_argument("--queries", type=Path, default=Path("data/synthetic/queries.jsonl"))
    parser.add_argument("--distinct", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000, help="per protocol, round and c=1 row")
    parser.add_argument("--never-seen", type=int, default=300, help="never-seen requests per protocol and round")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    queries = load_queries(args.queries)
    texts = [q.text for q in queries[: args.distinct]]
    makers: dict[str, Callable[[], Call]] = {
        "http": lambda: http_caller(args.url),
        "grpc": lambda: grpc_caller(args.grpc),
    }
    for call in (make() for make in makers.values()):
        for text in texts:  # warm every cache for the cached rows
            call(text)
    print(f"{'round':<6} {'protocol':<9} {'row':<22} {'client p50':>10} {'client p99':>10} {'server p50':>10}")
    for round_ in range(1, args.rounds + 1):
        for name, make in makers.items():
            call = make()
            rows = {
                "c=1 cached": one_at_a_time(call, itertools.cycle(texts), args.requests),
                "c=1 never-seen": one_at_a_time(call, never_seen_texts(queries, secrets.randbits(32)), args.never_seen),
            }
            for row, (client, server) in rows.items():
                p50, p99, s50 = np.percentile(client, 50), np.percentile(client, 99), np.percentile(server, 50)
                print(f"{round_:<6} {name:<9} {row:<22} {p50:>10.3f} {p99:>10.3f} {s50:>10.3f}")
            rate = throughput(make, texts, args.threads, args.seconds)
            print(f"{round_:<6} {name:<9} {f'c={args.threads} cached req/s':<22} {rate:>10.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
