"""Do two checkouts serve the same answers? Each serves the same artifacts in turn (`python -m service` in that
checkout, started by `loadtests.process.start_service`), and the answers to the same /rank and /rerank requests are
compared: ids in the same order, and scores within a tolerance (0: identical floats).

    python -m loadtests.compare_served --tree ../before --tree . --data data/synthetic --count 200

This is how a change that must not change behaviour (a refactor, a faster request path) shows that it did not: name
a worktree of the commit before it (`git worktree add ../before <commit>`). The /rerank requests send each query's
/rank top 20 (from the first checkout) in reverse order, so that reranking has work to do: every other one as its
catalog id, the others as their titles given as text (which the service encodes per request).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.process import request_json, start_service, wait_ready

RERANK_DEPTH = 20


@dataclass(frozen=True)
class Answers:
    """What one checkout answered: per request, the ranked ids and their scores."""

    rank: list[tuple[list[str], list[float]]]
    rerank: list[tuple[list[int], list[float]]]
    titles: list[list[str]]  # per /rank answer, its items' titles


def ask(tree: Path, env: dict[str, str], queries: list[str], reranked: Answers | None) -> Answers:
    """Serve from `tree`, send every /rank (and /rerank) request one at a time, stop the service. The /rerank
    documents come from `reranked`'s /rank answers (None: this checkout's own)."""
    service = start_service(env, root=tree)
    try:
        wait_ready(service.url, service.process, log=service.log)
        rank, rerank, titles = [], [], []
        for i, query in enumerate(queries):
            body = json.loads(_post(f"{service.url}/rank", {"query": query, "top_k": RERANK_DEPTH}))
            rank.append(([r["id"] for r in body["results"]], [r["score"] for r in body["results"]]))
            titles.append([r["title"] for r in body["results"]])
            ids, texts = (
                (reranked.rank[i][0], reranked.titles[i]) if reranked is not None else (rank[-1][0], titles[-1])
            )
            pairs = list(zip(ids, texts, strict=True))[::-1]
            documents = [{"id": item} if j % 2 == 0 else {"text": text} for j, (item, text) in enumerate(pairs)]
            if documents:
                body = json.loads(_post(f"{service.url}/rerank", {"query": query, "documents": documents}))
                rerank.append(([r["index"] for r in body["results"]], [r["relevance_score"] for r in body["results"]]))
        return Answers(rank, rerank, titles)
    finally:
        service.stop()


def _post(url: str, body: dict[str, Any]) -> bytes:
    status, payload = request_json(url, body, timeout=30)
    if status != 200:
        raise SystemExit(f"error: {url} answered {status}: {payload[:300]!r}")
    return payload


def compare(first: list[tuple[list, list[float]]], other: list[tuple[list, list[float]]], tolerance: float) -> str:
    """One line: how many answers have the same ids in the same order, and the largest score difference."""
    same_ids = sum(a[0] == b[0] for a, b in zip(first, other, strict=True))
    worst = max((abs(x - y) for a, b in zip(first, other, strict=True) for x, y in zip(a[1], b[1])), default=0.0)
    verdict = "same" if same_ids == len(first) and worst <= tolerance else "DIFFERENT"
    return f"{same_ids} of {len(first)} with identical ids, max |score difference| {worst:.3g}: {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.compare_served", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, action="append", required=True, help="a checkout; give two or more")
    parser.add_argument("--data", type=Path, required=True, help="dataset whose queries.jsonl is asked")
    parser.add_argument("--count", type=int, default=200, help="queries asked (default 200)")
    parser.add_argument("--model", type=Path, default=None, help="model directory served (default: RANK_MODEL_DIR)")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle served (default: RANK_BUNDLE_DIR)")
    parser.add_argument("--encoder", type=Path, default=None, help="text encoder (default: RANK_ENCODER_DIR)")
    parser.add_argument("--tolerance", type=float, default=0.0, help="largest score difference allowed (default 0)")
    args = parser.parse_args(argv)
    if len(args.tree) < 2:
        parser.error("give --tree at least twice: the checkouts to compare")
    lines = (args.data / "queries.jsonl").read_text().splitlines()
    queries = [json.loads(line)["text"] for line in lines if line.strip()][: args.count]
    env = dict(os.environ)
    for name, value in (("MODEL_DIR", args.model), ("BUNDLE_DIR", args.bundle), ("ENCODER_DIR", args.encoder)):
        if value is not None:
            env[f"RANK_{name}"] = str(value.resolve())
    env.setdefault("RANK_LOG_LEVEL", "warning")
    first = ask(args.tree[0], env, queries, None)
    failed = False
    for tree in args.tree[1:]:
        other = ask(tree, env, queries, first)
        for route, a, b in (("/rank", first.rank, other.rank), ("/rerank", first.rerank, other.rerank)):
            line = compare(a, b, args.tolerance)
            failed |= line.endswith("DIFFERENT")
            print(f"{args.tree[0]} vs {tree}, {route}: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
