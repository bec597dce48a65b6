"""The request mix of the load test, as plain Python (no Locust, no gevent), so tests can check it directly.

`loadtests/locustfile.py` turns these bodies into HTTP calls. The mix, per request:

- `/rank` queries come Zipf-like from a query set: a seeded shuffle of the set (or its first `head_size` queries)
  is drawn with probability proportional to 1/rank^s, so the first ranks repeat often (the query-embedding cache
  serves them, as it does production's popular queries) and the last ones rarely. A further `tail_share` of queries
  is never seen before: new recombinations of two queries' words, each used once; those are cache misses and pay
  for MiniLM encoding, as production's long tail does, however long the target service has been running.
- `top_k` and `num_candidates` vary; a share of requests carries one attribute filter taken from the query's own
  constraints, and a share a `timeout_ms` deadline.
- `/rerank` calls send catalog ids (stored features); a share sends a few free-text documents instead, which the
  service encodes on every call.
- A small share of requests is invalid by design; each must be answered 4xx (see `INVALID`).
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# (route, body as JSON-able object or raw bytes, what is wrong with it). Every one must get a 4xx.
INVALID: tuple[tuple[str, Any, str], ...] = (
    ("/rank", {"query": ""}, "empty query"),
    ("/rank", {"query": "\u200b \u0000 "}, "query empty after normalisation"),
    ("/rank", {"query": "gin", "top_k": 0}, "top_k below 1"),
    ("/rank", {"query": "gin", "top_k": 20, "num_candidates": 10}, "top_k above num_candidates"),
    ("/rank", {"query": "gin", "num_candidates": 10_000_000}, "num_candidates above the service's cap"),
    ("/rank", {"query": "gin", "filters": {"flavour": "sweet"}}, "unknown filter attribute"),
    ("/rank", {"query": 42}, "query of the wrong type"),
    ("/rank", {"query": "gin", "surprise": True}, "unknown field"),
    ("/rank", b'{"query": "gin", ', "truncated JSON"),
    ("/rerank", {"query": "gin", "documents": []}, "no documents"),
    ("/rerank", {"query": "gin", "documents": [{"id": "no-such-item-id"}]}, "unknown document id"),
    ("/rerank", {"query": "gin", "documents": [{"id": "a", "text": "b"}]}, "document with both id and text"),
)


@dataclass(frozen=True)
class MixConfig:
    """Knobs of the request mix; the defaults are the `make loadtest` mix."""

    head_size: int = 0  # 0: the whole query set is the Zipf head
    zipf_s: float = 1.1
    tail_share: float = 0.1
    top_k: tuple[int, ...] = (1, 5, 10, 10, 10, 10, 20, 50)
    num_candidates: tuple[int | None, ...] = (None, None, 50, 100, 100, 200)  # None: the service's default
    filter_share: float = 0.05
    timeout_share: float = 0.5
    timeout_ms: int = 1000
    rerank_documents: tuple[int, int] = (5, 40)  # catalog ids per /rerank call
    rerank_text_share: float = 0.2  # share of /rerank calls that send free text instead (encoded on every call)
    rerank_text_documents: tuple[int, int] = (2, 10)
    seed: int = 0


@dataclass(frozen=True)
class Query:
    """One query of the set: its text and its stated constraints (attribute -> value)."""

    text: str
    constraints: dict[str, str]


def load_queries(path: Path) -> list[Query]:
    """Queries from a JSONL file with `text` (required) and `constraints` (optional) per line."""
    queries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise ValueError(f"{path}:{number}: a query needs a non-empty 'text'")
        constraints = row.get("constraints") or {}
        queries.append(Query(row["text"], {k: v for k, v in constraints.items() if isinstance(v, str)}))
    if not queries:
        raise ValueError(f"{path}: no queries")
    return queries


def load_documents(path: Path, limit: int = 2000) -> tuple[list[str], list[str]]:
    """Catalog ids and titles of the first `limit` items of an items JSONL file (ids: /rerank id documents,
    titles: its free-text documents). A missing file gives no ids, and /rerank then sends only texts."""
    ids: list[str] = []
    titles: list[str] = []
    if not path.exists():
        return ids, titles
    with path.open() as lines:
        for line in itertools.islice(lines, limit):
            row = json.loads(line)
            ids.append(str(row["id"]))
            if isinstance(row.get("title"), str):
                titles.append(row["title"])
    return ids, titles


@dataclass
class QueryStream:
    """Draws query texts: Zipf-like over the query set (repeats), plus a tail of never-seen queries."""

    queries: list[Query]
    config: MixConfig = field(default_factory=MixConfig)
    rng: random.Random = field(init=False)
    head: list[Query] = field(init=False)
    _cumulative: list[float] = field(init=False)
    _tail: Iterator[Query] = field(init=False)
    _seen: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        order = list(self.queries)
        self.rng.shuffle(order)
        size = min(self.config.head_size, len(order)) if self.config.head_size > 0 else len(order)
        self.head = order[:size]
        weights = [1.0 / (rank**self.config.zipf_s) for rank in range(1, size + 1)]
        self._cumulative = list(itertools.accumulate(weights))
        self._seen = {q.text for q in self.queries}
        self._tail = self._recombined()

    def _recombined(self) -> Iterator[Query]:
        """Endless never-seen queries: the first half of one query's words joined to the second half of
        another's, with a counter only if a combination was already used (rare: there are the set's size squared)."""
        for n in itertools.count():
            a, b = self.rng.choice(self.queries), self.rng.choice(self.queries)
            words_a, words_b = a.text.split(), b.text.split()
            text = " ".join(words_a[: len(words_a) // 2] + words_b[len(words_b) // 2 :])
            while text in self._seen:
                text = f"{text} {n}"
            yield Query(text, {**b.constraints, **a.constraints})

    def next(self) -> tuple[Query, bool]:
        """The next query and whether it came from the (never-repeating) tail."""
        if self.rng.random() < self.config.tail_share:
            query = next(self._tail)
            self._seen.add(query.text)
            return query, True
        index = bisect.bisect_left(self._cumulative, self.rng.random() * self._cumulative[-1])
        return self.head[min(index, len(self.head) - 1)], False


def never_seen_texts(queries: list[Query], seed: int) -> Iterator[str]:
    """Endless never-seen query texts, drawn as the load test draws its tail (`QueryStream` with a tail share of 1):
    real queries' words recombined, so they are as long as real queries, not padded with markers."""
    stream = QueryStream(queries, MixConfig(tail_share=1.0, seed=seed))
    while True:
        yield stream.next()[0].text


@dataclass
class RequestMix:
    """Builds request bodies for /rank, /rerank and the invalid share."""

    stream: QueryStream
    document_ids: list[str]
    document_texts: list[str]

    @property
    def rng(self) -> random.Random:
        return self.stream.rng

    @property
    def config(self) -> MixConfig:
        return self.stream.config

    def rank_body(self) -> dict[str, Any]:
        query, _ = self.stream.next()
        cfg = self.config
        body: dict[str, Any] = {"query": query.text}
        candidates = self.rng.choice(cfg.num_candidates)
        top_k = self.rng.choice(cfg.top_k)
        if candidates is not None:
            body["num_candidates"] = candidates
            top_k = min(top_k, candidates)
        body["top_k"] = top_k
        if query.constraints and self.rng.random() < cfg.filter_share:
            attribute = self.rng.choice(sorted(query.constraints))
            body["filters"] = {attribute: [query.constraints[attribute]]}
        if self.rng.random() < cfg.timeout_share:
            body["timeout_ms"] = cfg.timeout_ms
        return body

    def rerank_body(self) -> dict[str, Any]:
        query, _ = self.stream.next()
        cfg = self.config
        documents: list[Any]
        if self.document_ids and self.rng.random() >= cfg.rerank_text_share:
            documents = [
                {"id": self.rng.choice(self.document_ids)} for _ in range(self.rng.randint(*cfg.rerank_documents))
            ]
        else:
            texts = self.document_texts or [q.text for q in self.stream.queries]
            documents = [self.rng.choice(texts) for _ in range(self.rng.randint(*cfg.rerank_text_documents))]
        return {
            "query": query.text,
            "documents": documents,
            "top_n": min(len(documents), self.rng.choice((3, 5, 10))),
            "return_documents": self.rng.random() < 0.5,
        }

    def invalid(self) -> tuple[str, Any, str]:
        """(route, body, what is wrong): a request the service must answer with a 4xx."""
        return self.rng.choice(INVALID)
