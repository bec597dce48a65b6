"""MiniLM query-encoder benchmark: `.venv/bin/python -m loadtests.bench.encoder`.

Encodes never-seen queries one per call, as the service's encode thread does for a lone cache miss (drawn as the
load test draws its never-seen tail: `loadtests.mix.never_seen_texts` over data/synthetic/queries.jsonl), with the
fp32 and the fused int8 graph, back to back and after an idle pause (`--idle-ms`), at 1 intra-op thread and at 2 on
the session the service uses when no other stage has work (`TextEncoder.idle_session`, whose threads spin only
briefly after a run). Reports p50/p99 ms per query over `--count` calls after a warm-up, measured side by side in one
run (time.perf_counter), the process's CPU time per call (time.process_time, pauses included: what a spinning
thread burns counts), and the word pieces per query. Prints a markdown table.

The pause is what the service's encode thread sees at one request at a time: it sleeps between misses while the
client reads its answer and sends the next query, and an encode that follows an idle gap runs slower on this kind of
machine than one of a tight loop (its caches and the CPU's clock are cold).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from index.runtime.text_encoder import TextEncoder
from loadtests.mix import load_queries, never_seen_texts
from training.paths import ROOT


def timings(
    encoder: TextEncoder, texts: list[str], warmup: int, idle_ms: float = 0.0, idle: bool = False
) -> tuple[list[float], float]:
    """ms per single-text encode call (`idle`: on the idle session), each after `idle_ms` of sleep, after `warmup`
    calls that are not counted; and the process's CPU seconds over the counted calls and their pauses."""
    for text in texts[:warmup]:
        encoder.encode([text], idle=idle)
    out = []
    cpu = time.process_time()
    for text in texts[warmup:]:
        if idle_ms > 0:
            time.sleep(idle_ms / 1000.0)
        started = time.perf_counter()
        encoder.encode([text], idle=idle)
        out.append((time.perf_counter() - started) * 1000.0)
    return out, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.encoder", description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", type=Path, default=ROOT / "artifacts/encoders/minilm")
    parser.add_argument("--queries", type=Path, default=ROOT / "data/synthetic/queries.jsonl")
    parser.add_argument("--count", type=int, default=500, help="timed calls per configuration (default 500)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--idle-ms", type=float, nargs="+", default=[0.0, 3.0], help="pauses before each call (default 0 3)"
    )
    args = parser.parse_args(argv)
    queries = load_queries(args.queries)
    n = args.count + args.warmup
    encoders = {variant: TextEncoder(args.encoder, variant=variant, idle_threads=2) for variant in ("fp32", "int8")}
    configs = [(variant, threads, idle) for variant in encoders for threads in (1, 2) for idle in args.idle_ms]
    results: dict[tuple[str, int, float], list[float]] = {c: [] for c in configs}
    cpu_seconds = dict.fromkeys(configs, 0.0)
    # Interleaved rounds, each configuration on fresh texts, so machine drift hits all of them alike.
    fresh = never_seen_texts(queries, seed=0)
    sent: list[str] = []
    for _ in range(5):
        for c in configs:
            texts = [next(fresh) for _ in range(n // 5)]
            ms, cpu = timings(encoders[c[0]], texts, args.warmup // 5, c[2], idle=c[1] == 2)
            results[c] += ms
            cpu_seconds[c] += cpu
            sent += texts
    tokens = encoders["fp32"].token_counts(sent)
    print(f"MiniLM query encoding, one never-seen query per call; median {int(np.median(tokens))} word pieces")
    print("| graph | intra-op threads | idle before each call, ms | p50 ms | p99 ms | process CPU ms per call |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c in configs:
        ms = sorted(results[c])
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        cpu_ms = cpu_seconds[c] * 1000.0 / len(ms)
        print(f"| {c[0]} | {c[1]} | {c[2]:g} | {statistics.median(ms):.3f} | {p99:.3f} | {cpu_ms:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
