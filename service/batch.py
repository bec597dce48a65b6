"""Offline batch ranking with the service's own engine, in process, no HTTP: `python -m service.batch --in
queries.jsonl --out results.jsonl` (or `make batch IN=... OUT=...`).

Each input line is a /rank request body (`query`, and optionally `top_k`, `num_candidates`, `filters`) with an
optional `id`; each output line is what /rank would answer for it (`results`, `model_version`, `bundle_version`)
with that `id` (default: the line number), in input order. The engine is loaded exactly as the service loads it
(checksums, canaries, quality gate, warm-up; the RANK_* settings apply) and requests go through
`RankingEngine.process_batch` in micro-batches, which rank exactly as one request at a time. A line that cannot be
served gets `{"id", "error"}` instead, and the command then exits 1. For backfills, offline evaluation, debugging.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson
from pydantic import ValidationError

from index.runtime.files import ArtifactError
from service.batcher import Batched
from service.engine import RankingEngine
from service.errors import RequestError
from service.jobs import Job
from service.loading import load_engine
from service.metrics import Metrics
from service.outcomes import RankOutcome
from service.protocol import RankRequest
from service.routes import rank_body
from service.settings import load_settings


def read_requests(lines: TextIO) -> Iterator[tuple[str, RankRequest | str]]:
    """(id, request) per non-blank line, or (id, the sentence saying why the line is not a request)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as exc:
            yield str(number), f"line {number}: not JSON ({exc.msg})"
            continue
        if not isinstance(body, dict):
            yield str(number), f"line {number}: not a JSON object"
            continue
        line_id = str(body.pop("id", number))
        try:
            yield line_id, RankRequest(**body)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            yield line_id, f"line {number}: {field}: {first['msg']}"


def answer(line_id: str, outcome: RankOutcome) -> dict[str, Any]:
    """The /rank answer for one line (`routes.rank_body`, the one definition of it), without timing."""
    body = rank_body(outcome, {}, line_id)
    return {
        "id": line_id,
        "results": body["results"],
        "model_version": body["model_version"],
        "bundle_version": body["bundle_version"],
    }


def rank_file(engine: RankingEngine, source: TextIO, out: TextIO, batch: int, progress: TextIO) -> tuple[int, int]:
    """Rank every line of `source` into `out`; returns (lines ranked, lines refused)."""
    done = failed = 0
    started = time.perf_counter()
    pending: list[tuple[str, Job | str]] = []

    def flush() -> None:
        nonlocal done, failed
        jobs = [(i, job) for i, job in pending if not isinstance(job, str)]
        outcomes = iter(engine.process_batch([Batched(job, 0.0) for _, job in jobs]) if jobs else [])
        for line_id, job in pending:
            result = job if isinstance(job, str) else next(outcomes)
            if isinstance(result, RankOutcome):
                out.write(orjson.dumps(answer(line_id, result)).decode() + "\n")
                done += 1
            else:
                out.write(orjson.dumps({"id": line_id, "error": str(result)}).decode() + "\n")
                failed += 1
        pending.clear()
        rate = (done + failed) / max(time.perf_counter() - started, 1e-9)
        progress.write(f"\r{done + failed} queries ({failed} refused), {rate:.0f}/s")
        progress.flush()

    for line_id, request in read_requests(source):
        try:
            pending.append((line_id, engine.prepare_rank(request) if isinstance(request, RankRequest) else request))
        except RequestError as exc:
            pending.append((line_id, str(exc)))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    seconds = time.perf_counter() - started
    progress.write(f"\n{done} ranked, {failed} refused in {seconds:.1f}s: {(done + failed) / seconds:.0f} queries/s\n")
    return done, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.batch",
        description="Rank a JSONL file of /rank requests with the service's engine, in process.",
        epilog="Exit codes: 0 all ranked, 1 some lines refused (their output lines say why), 2 nothing could run.",
    )
    parser.add_argument("--in", dest="source", type=Path, required=True, help="JSONL of /rank bodies (+ 'id')")
    parser.add_argument("--out", type=Path, required=True, help="JSONL of /rank answers, one per input line")
    parser.add_argument("--batch", type=int, default=32, help="requests per engine call (default 32)")
    parser.add_argument("--bundle-dir", type=Path, help="default: RANK_BUNDLE_DIR or artifacts/bundle")
    parser.add_argument("--model-dir", type=Path, help="default: RANK_MODEL_DIR or artifacts")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"error: {args.source} is not a file; give --in a JSONL file of /rank request bodies", file=sys.stderr)
        return 2
    if args.batch < 1:
        print("error: --batch must be at least 1", file=sys.stderr)
        return 2
    paths = {"bundle_dir": args.bundle_dir, "model_dir": args.model_dir}
    try:
        engine = load_engine(load_settings(**{k: v for k, v in paths.items() if v is not None}), Metrics())
    except (ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"error: cannot load the engine: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.source.open(encoding="utf-8") as source, args.out.open("w", encoding="utf-8") as out:
        _, failed = rank_file(engine, source, out, args.batch, sys.stderr)
    if failed:
        print(f"error: {failed} lines could not be ranked; their lines in {args.out} say why", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
