"""What shadow scoring costs the client: `.venv/bin/python -m loadtests.bench.shadow`.

Starts the service (default artifacts, admin API on), loads a shadow (by default the serving artifacts again: the
shadow does the same work as the serving model, which is what a real candidate costs), and measures /rank client
time at c=1 and c=8 (closed loop: each client thread sends its next request when the last is answered, over one
keep-alive connection) with the shadow scoring 0% and 100% of requests. The conditions alternate in `--rounds`
rounds, so drift on a shared machine falls on both alike. Cached queries (the query set, cycled): the shadow's
cost is then the ranking, not a second MiniLM call, which it never makes. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from loadtests.process import start_service, stop_group, wait_ready
from service.settings import Settings
from training.paths import ROOT

TOKEN = "bench-shadow-token-0123456789"


def call(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    headers = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def client_times(port: int, queries: list[str], concurrency: int, requests: int) -> list[float]:
    """ms per /rank request, `requests` in all, over `concurrency` threads."""
    times: list[float] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for i in range(offset, requests, concurrency):
            started = time.perf_counter()
            status, _ = call(conn, "POST", "/rank", {"query": queries[i % len(queries)], "top_k": 10})
            mine.append((time.perf_counter() - started) * 1000.0)
            if status != 200:
                raise RuntimeError(f"/rank answered {status}")
        conn.close()
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.shadow", description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=Path, default=ROOT / "data/synthetic/queries.jsonl")
    parser.add_argument("--shadow-model", type=Path, default=None, help="default: the serving model")
    parser.add_argument("--shadow-bundle", type=Path, default=None, help="default: the serving bundle")
    parser.add_argument("--requests", type=int, default=400, help="per condition per round (default 400)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    queries = [json.loads(line)["text"] for line in args.queries.read_text().splitlines() if line.strip()][:100]

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK_ADMIN_TOKEN": TOKEN}
        service = start_service(env, {"log_level": "warning"}, log=Path(tmp) / "service.log")
        try:
            wait_ready(service.url, service.process, timeout=240, log=service.log)
            port = service.port
            admin = http.client.HTTPConnection("127.0.0.1", port, timeout=240)
            defaults = Settings()  # the artifacts the service serves, unless RANK_* says otherwise
            paths = {
                "model_dir": str(args.shadow_model or defaults.model_dir),
                "bundle_dir": str(args.shadow_bundle or defaults.bundle_dir),
            }
            status, body = call(admin, "POST", "/admin/shadow", {"share": 0, **paths})
            if status != 200:
                raise SystemExit(f"error: the shadow did not load: {body.get('error')}")
            client_times(port, queries, 8, 2 * len(queries))  # warm: every query cached, connections made
            results: dict[tuple[int, float], list[float]] = {}
            for _ in range(args.rounds):
                for concurrency in (1, 8):
                    for share in (0.0, 100.0):
                        call(admin, "POST", "/admin/shadow", {"share": share})
                        times = client_times(port, queries, concurrency, args.requests)
                        results.setdefault((concurrency, share), []).extend(times)
            status, final = call(admin, "GET", "/admin/shadow")
        finally:
            stop_group(service.process, 30)

    print(f"/rank client ms, {args.rounds} rounds x {args.requests} requests per cell, cached queries, top_k 10")
    print("| concurrency | shadow scores | p50 | p99 | requests |")
    print("| --- | --- | --- | --- | --- |")
    for (concurrency, share), times in sorted(results.items()):
        p50, p99 = np.percentile(times, [50, 99])
        print(f"| {concurrency} | {share:g}% | {p50:.3f} | {p99:.3f} | {len(times)} |")
    print(
        f"\nshadow: {final['compared']} compared, {final['shed']} shed, {final['failed']} failed; "
        f"its own time p50 {final['shadow_total_ms']['p50']} ms; mean RBO {final['mean']['rbo']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
