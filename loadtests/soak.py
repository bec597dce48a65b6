"""Soak: steady load on the service for N minutes, recording RSS and latency per minute; memory must not grow
without bound.

    .venv/bin/python -m loadtests.soak --minutes 10

Starts the service on 127.0.0.1 (default artifacts), warms it, then runs wrk one minute at a time at a fixed
concurrency. One request in ten carries a never-seen query, so the query cache fills to its bound and evicts.
RSS comes from /proc/<pid>/status. Exits non-zero when RSS grew more than --max-growth-mb over the second half.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from loadtests.bench.systems import start, wait_serving
from loadtests.bench.traffic import Traffic, post, run_wrk, wrk_script
from loadtests.process import free_port, stop_group


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/bundle"))
    parser.add_argument("--model", type=Path, default=Path("artifacts"))
    parser.add_argument("--encoder", type=Path, default=Path("artifacts/encoders/minilm"))
    parser.add_argument("--queries", type=Path, default=Path("data/synthetic/queries.jsonl"))
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    args = parser.parse_args(argv)
    texts = [json.loads(line)["text"] for line in args.queries.read_text().splitlines()][:200]
    script = Path(tempfile.gettempdir()) / "soak-rank.lua"
    wrk_script([{"query": t, "top_k": 10} for t in texts], script, Traffic("cycled, 10% never-seen", 0.1, False))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start("service", port, args)
    rows = []
    try:
        wait_serving(url, "service", {"query": texts[0]}, process)
        for text in texts:
            post(f"{url}/rank", {"query": text})
        start_rss = rss_mb(process.pid)
        print(f"RSS after warm-up: {start_rss:.1f} MB", flush=True)
        for minute in range(1, args.minutes + 1):
            p50, p99, rps, errors = run_wrk(url, script, args.concurrency, 60)
            rows.append((minute, rss_mb(process.pid), p50, p99, rps, errors))
            print(
                f"minute {minute:2d}: RSS {rows[-1][1]:7.1f} MB  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                f"{rps:7.0f} req/s  errors {errors}",
                flush=True,
            )
    finally:
        stop_group(process, 30)
    half = rows[len(rows) // 2 - 1][1] if len(rows) > 1 else start_rss
    growth = rows[-1][1] - half
    print("\n| minute | RSS MB | p50 ms | p99 ms | requests/s | errors |\n| --- | --- | --- | --- | --- | --- |")
    print(f"| 0 (warm) | {start_rss:.1f} | | | | |")
    for minute, rss, p50, p99, rps, errors in rows:
        print(f"| {minute} | {rss:.1f} | {p50:.2f} | {p99:.2f} | {rps:.0f} | {errors} |")
    print(f"\nRSS growth over the second half: {growth:+.1f} MB (limit {args.max_growth_mb} MB)")
    return 0 if growth <= args.max_growth_mb and all(r[5] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
