"""`make evaluate DATA=dir`: label-based quality of what is SERVED, beside zero-shot baselines on the same queries.

    .venv/bin/python -m loadtests.evaluate --data data/synthetic                  # in process, default artifacts
    .venv/bin/python -m loadtests.evaluate --data data/synthetic --url http://127.0.0.1:8000
    .venv/bin/python -m loadtests.evaluate --data ../shared/data/cisi --systems minilm,bm25,rrf --split all --folds 5

The dataset's items, queries and judgments are read with the project's one reader (index.data.readers); queries
without a split are hash-split 60/20/20 (`hash_split`), and `--split` picks the queries (test by default; `all` for
every query). Systems:

- served: each query goes through the real request path and the ranked ids come back: in process (the engine
  `service.loading.load_engine` builds from --bundle/--model/--encoder and the RANK_* environment, exactly as the
  service starts, quality gate included; `RANK_REQUIRE_BEATS_BASELINE=false` relaxes it), or with --url over HTTP
  POST /rank. Top-K is 100 (the service's max_top_k) and num_candidates the service's default unless given.
- minilm: zero-shot MiniLM cosine (the project's ONNX all-MiniLM-L6-v2) of the query and each item's full text
  (title and text joined), exact search over the WHOLE catalog.
- bm25: Okapi BM25 (the service's own, index.runtime.lexical: bm25s, k1 1.5, b 0.75, lowercase alphanumeric
  tokens, then --analysis: none, or a language's stop words and Snowball stems; by default the served bundle's)
  over the whole catalog's full texts.
- rrf: reciprocal-rank fusion of the minilm and bm25 rankings (k = 60; each list taken to --rrf-depth).

Metrics are label-based with the project's pinned definitions (training.metrics): nDCG@10 (gain 2^g-1, log2
discount, ties averaged, ideal over ALL judged items of the query, so what a system missed counts against it;
queries without a judged relevant item excluded but counted), MRR (first item with grade >= 2 in the top K, 0 when
none; the mean over all queries, as the model card's) and recall@K (share of the query's grade >= 2 items in the top
K; queries without one excluded). One table is printed and a JSON report with per-query figures is written
(--out, default reports/evaluate-<UTC time>.json). Exit codes: 0 done, 2 it could not run (one sentence says why).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm

from index.cli_logging import configure_cli_logging
from index.data.readers import find_data_file, find_judgments
from index.data.records import DataError, Item, Query, fold_of
from index.data.verdict import read_catalog
from index.offline.text_cache import encode_texts as cached_embeddings
from index.runtime.faiss_index import FaissIndex, IndexKind, IndexParams, build_index
from index.runtime.lexical import NO_ANALYSIS, TOKEN, Analyzer, LexicalIndex, LexicalParams, analysis_choices
from index.runtime.text_encoder import TextEncoder
from training.metrics import NDCG_CONVENTION, RELEVANT_GRADE, ndcg_at_k, reciprocal_rank

log = logging.getLogger("loadtests.evaluate")

SPLITS = ("train", "val", "test", "all")
SYSTEMS = ("served", "minilm", "bm25", "rrf")
SYSTEM_LABELS = {"served": "served", "minilm": "minilm_cosine", "bm25": "bm25", "rrf": "rrf(minilm,bm25)"}
DEFAULT_TOP_K = 100  # /rank's max_top_k
NDCG_K = 10
BM25_K1 = 1.5
BM25_B = 0.75
BM25_METHOD = "lucene"  # bm25s's default: Okapi term weighting, idf log(1 + (N - n + 0.5) / (n + 0.5)), never < 0
RRF_K = 60  # Cormack, Clarke and Buettcher (SIGIR 2009): the constant everyone uses
RRF_DEPTH = 1000
ENCODE_BATCH = 64


class EvaluateError(RuntimeError):
    """The evaluation cannot run; the message is the one sentence the CLI prints."""


# -- the data ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalData:
    """A dataset read for evaluation: the whole catalog, the chosen queries and every judged grade of theirs."""

    name: str
    path: Path
    synthetic: bool
    items: list[Item]
    queries: list[Query]  # the chosen split's, in file order
    judged: dict[str, dict[str, int]]  # query id -> item id -> grade, for every judged pair of the chosen queries
    split: str
    queries_in_file: int


def is_synthetic(data_dir: Path) -> bool:
    """The embedded SYNTHETIC default (its generator writes dataset.json saying so) or a name that says it."""
    if "synthetic" in data_dir.resolve().name.lower():
        return True
    info = data_dir / "dataset.json"
    if not info.exists():
        return False
    try:
        raw = json.loads(info.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and (bool(raw.get("synthetic")) or "synthetic" in str(raw.get("name", "")).lower())


def load_eval_data(data_dir: Path, split: str = "test") -> EvalData:
    """Items, the `split` queries (or every query for "all") and their judgments; DataError says what is wrong."""
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist (run `make data` for the SYNTHETIC default)")
    if split not in SPLITS:
        raise DataError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if find_data_file(data_dir, "items") is None:
        raise DataError(f"{data_dir} has no items.jsonl or items.parquet")
    queries_file = find_data_file(data_dir, "queries")
    if queries_file is None:
        raise DataError(f"{data_dir} has no queries.jsonl or queries.parquet")
    judgments_file = find_judgments(data_dir)
    if not judgments_file.exists():
        raise DataError(
            f"{data_dir} has no judgments (judgments.jsonl, judgments.parquet or a TREC qrels file): "
            "there is nothing to measure quality against"
        )
    # The verdict training and indexing give (index.data.verdict): skipped items, judgments and unjudged queries are
    # left out here as there, each defect logged once.
    screened = read_catalog(data_dir)
    screened.log(log)
    items, queries, judgments = screened.items, screened.queries, screened.judgments
    if not judgments:
        raise DataError(f"{judgments_file} holds no usable judgments: there is nothing to measure quality against")
    chosen = [q for q in screened.judged_queries if split == "all" or q.split == split]
    if not chosen:
        raise DataError(f"{data_dir}: no queries in split {split!r}")
    wanted = {q.id for q in chosen}
    judged: dict[str, dict[str, int]] = {q.id: {} for q in chosen}
    for j in judgments:
        if j.query_id in wanted:
            judged[j.query_id][j.item_id] = j.grade
    if not any(judged.values()):
        raise DataError(f"{data_dir}: none of the {len(chosen)} queries of split {split!r} has a judgment")
    return EvalData(
        data_dir.resolve().name, data_dir, is_synthetic(data_dir), items, chosen, judged, split, len(queries)
    )


# -- rankings ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranking:
    """One system's answer to one query: item ids best first, with the scores that ordered them (ties in the
    scores share their gain in nDCG, as the pinned definition says)."""

    ids: list[str]
    scores: list[float]


def _rankings(scores: np.ndarray, rows: np.ndarray, ids: Sequence[str]) -> list[Ranking]:
    """(Q, K) scores and catalog rows (best first, -1 for none) as Rankings."""
    out = []
    for query_scores, query_rows in zip(scores, rows, strict=True):
        keep = query_rows >= 0
        out.append(Ranking([ids[r] for r in query_rows[keep].tolist()], query_scores[keep].astype(float).tolist()))
    return out


def _bar(iterable: Any, desc: str, total: int | None = None, unit: str = "it") -> Any:
    """A progress bar on stderr, off when stderr is not a terminal."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, disable=None)


def encode_texts(encoder: TextEncoder, texts: list[str], desc: str) -> np.ndarray:
    """MiniLM embeddings (N, dim) of texts, in batches, with a progress bar."""
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    starts = range(0, len(texts), ENCODE_BATCH)
    for start in _bar(starts, desc, total=len(starts), unit="batch"):
        out[start : start + ENCODE_BATCH] = encoder.encode(texts[start : start + ENCODE_BATCH])
    return out


def minilm_rankings(encoder: TextEncoder, items: list[Item], query_texts: list[str], depth: int) -> list[Ranking]:
    """Zero-shot MiniLM cosine of each query with every item's full text (title and text), exact search."""
    catalog = cached_embeddings(encoder, [item.full_text for item in items])
    queries = encode_texts(encoder, query_texts, "MiniLM: queries")
    params = IndexParams(IndexKind.EXACT)
    scores, rows = FaissIndex(build_index(catalog, params), params).search(queries, min(depth, len(items)))
    return _rankings(scores, rows, [item.id for item in items])


def bm25_rankings(
    documents: list[str],
    ids: Sequence[str],
    query_texts: list[str],
    depth: int,
    *,
    k1: float = BM25_K1,
    b: float = BM25_B,
    method: str = BM25_METHOD,
    analysis: str = NO_ANALYSIS,
) -> list[Ranking]:
    """Okapi BM25 of each query against every document, with the service's own BM25 (index.runtime.lexical) and
    lexical `analysis`; `ids` names the documents. A query that shares no term with a document ranks nothing."""
    index = LexicalIndex.build(documents, LexicalParams(k1, b, method), analysis)
    rankings = []
    for text in _bar(query_texts, "BM25", unit="query"):
        scores, rows = index.search(text, depth)
        rankings.append(Ranking([ids[r] for r in rows.tolist()], scores.tolist()))
    return rankings


def rrf(rankings: Sequence[Ranking], k: int = RRF_K, top: int = DEFAULT_TOP_K) -> Ranking:
    """Reciprocal-rank fusion: score(d) = sum over the rankings of 1 / (k + rank of d), ranks from 1; a ranking
    that does not hold d adds nothing. The best `top`, ties in input order."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, item_id in enumerate(ranking.ids, start=1):
            fused[item_id] = fused.get(item_id, 0.0) + 1.0 / (k + rank)
    best = sorted(fused.items(), key=lambda kv: -kv[1])[:top]
    return Ranking([item_id for item_id, _ in best], [score for _, score in best])


# -- the served system ---------------------------------------------------------------------------------------------


class Served(Protocol):
    """Something that answers a query the way the service does."""

    description: str
    model_version: str
    synthetic_model: bool

    def rank(self, query: Query) -> Ranking: ...


class InProcessServed:
    """The service's engine in this process: `prepare_rank` (validation, normalisation) then `serve_one` (the
    unbatched path, a batch of one, ranked exactly as a batch of many)."""

    def __init__(self, engine: Any, top_k: int = DEFAULT_TOP_K, num_candidates: int | None = None) -> None:
        from service.protocol import RankRequest

        self._request = RankRequest
        self.engine = engine
        self.top_k, self.num_candidates = top_k, num_candidates
        self.model_version: str = engine.model_version
        self.synthetic_model: bool = engine.synthetic
        candidates = num_candidates or engine.settings.default_candidates
        self.description = (
            f"in process: model {engine.model_version}, bundle {engine.bundle.version} ({engine.bundle.size} items), "
            f"top {top_k} of {candidates} candidates"
        )
        self.catalog: set[str] | None = set(engine.bundle.ids)

    def rank(self, query: Query) -> Ranking:
        from service.errors import RequestError

        try:
            job = self.engine.prepare_rank(
                self._request(query=query.text, top_k=self.top_k, num_candidates=self.num_candidates)
            )
        except RequestError as exc:
            raise EvaluateError(f"query {query.id!r} cannot be served: {exc}") from None
        outcome = self.engine.serve_one(job)
        return Ranking(list(outcome.ids), [float(s) for s in outcome.scores])


def load_in_process(
    bundle: Path | None,
    model: Path | None,
    encoder: Path | None,
    top_k: int = DEFAULT_TOP_K,
    num_candidates: int | None = None,
    gate: bool | None = None,
) -> InProcessServed:
    """Build the engine as the service does at start-up (checksums, canaries, quality gate, warm-up), from the
    given paths and otherwise the RANK_* environment; EvaluateError when the artifacts do not load. `gate` False
    turns the zero-shot part of the quality gate off (to measure a model the service would refuse)."""
    from service.loading import load_engine
    from service.metrics import Metrics
    from service.settings import Settings

    paths: dict[str, Any] = {
        "bundle_dir": bundle,
        "model_dir": model,
        "encoder_dir": encoder,
        "require_beats_baseline": gate,
    }
    try:
        settings = Settings(**{k: v for k, v in paths.items() if v is not None})
    except ValueError as exc:
        raise EvaluateError(f"the service settings are invalid: {_one_line(exc)}") from None
    try:
        engine = load_engine(settings, Metrics())
    except Exception as exc:  # noqa: BLE001 - any failure to load is one sentence, never a traceback
        raise EvaluateError(
            f"the served artifacts (model {settings.model_dir}, bundle {settings.bundle_dir}, encoder "
            f"{settings.encoder_dir}) do not load: {_one_line(exc)}"
        ) from None
    return InProcessServed(engine, top_k, num_candidates)


class HttpServed:
    """A running service, over HTTP POST /rank (http.client, one request at a time, a 429 retried)."""

    def __init__(
        self, url: str, top_k: int = DEFAULT_TOP_K, num_candidates: int | None = None, timeout: float = 30.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EvaluateError(f"--url must look like http://127.0.0.1:8000, got {url!r}")
        self.url = url.rstrip("/")
        self._host, self._https = parts.hostname, parts.scheme == "https"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.top_k, self.num_candidates = top_k, num_candidates
        self._conn: http.client.HTTPConnection | None = None
        status, ready = self._call("GET", "/health/ready")
        if status != 200:
            raise EvaluateError(f"{self.url} is not ready (GET /health/ready answered {status}: {_detail(ready)})")
        self.model_version = str(ready.get("model_version", "?"))
        self.synthetic_model = bool(ready.get("synthetic", False))
        candidates = num_candidates or "the service's default number of"
        self.description = (
            f"{self.url}: model {self.model_version}, bundle {ready.get('bundle_version', '?')} "
            f"({ready.get('items', '?')} items), top {top_k} of {candidates} candidates"
        )
        self.catalog: set[str] | None = None  # unknown over HTTP: every returned id is checked instead

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = kind(self._host, self._port, timeout=self.timeout)
        return self._conn

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {} if payload is None else {"content-type": "application/json"}
        for attempt in range(2):  # a kept-alive connection the server closed gets one fresh try
            try:
                conn = self._connection()
                conn.request(method, self._prefix + path, payload, headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt:
                    raise EvaluateError(f"{self.url} closed the connection: {exc}") from None
            except OSError as exc:
                self.close()
                reason = exc.strerror or str(exc) or type(exc).__name__
                raise EvaluateError(f"cannot reach {self.url}: {reason}") from None
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"detail": raw[:200].decode(errors="replace")}
        return response.status, decoded if isinstance(decoded, dict) else {"detail": decoded}

    def rank(self, query: Query) -> Ranking:
        body: dict[str, Any] = {"query": query.text, "top_k": self.top_k}
        if self.num_candidates is not None:
            body["num_candidates"] = self.num_candidates
        for _ in range(20):
            status, answer = self._call("POST", "/rank", body)
            if status != 429:
                break
            time.sleep(0.05)
        if status != 200:
            raise EvaluateError(f"{self.url}/rank answered {status} for query {query.id!r}: {_detail(answer)}")
        results = answer.get("results", [])
        return Ranking([str(r["id"]) for r in results], [float(r["score"]) for r in results])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def served_rankings(served: Served, queries: list[Query], catalog: set[str] | None = None) -> list[Ranking]:
    """Each query through the served path; an id outside `catalog` means the service serves another catalog."""
    out = []
    for query in _bar(queries, "served", unit="query"):
        ranking = served.rank(query)
        if catalog is not None:
            stranger = next((i for i in ranking.ids if i not in catalog), None)
            if stranger is not None:
                raise EvaluateError(
                    f"the served system returned item {stranger!r}, which is not in this dataset's catalog: it "
                    "serves another catalog (evaluate the zero-shot systems only with --systems minilm,bm25,rrf)"
                )
        out.append(ranking)
    return out


# -- metrics -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryMetrics:
    """One query's figures for one system; NaN where the query has nothing to measure (see `summarize`)."""

    query_id: str
    ndcg_at_10: float  # NaN when the query has no judged item with a gain
    reciprocal_rank: float  # 0 when no item with grade >= 2 is in the ranking
    recall: float  # NaN when the query has no item with grade >= 2
    relevant: int  # the query's items with grade >= 2, in the whole catalog


def query_metrics(query_id: str, ranking: Ranking, judged: dict[str, int], cutoff: int = DEFAULT_TOP_K) -> QueryMetrics:
    """nDCG@10 (ideal over every judged item of the query), reciprocal rank and recall@cutoff of one ranking."""
    ids, scores = ranking.ids[:cutoff], np.asarray(ranking.scores[:cutoff], dtype=np.float64)
    grades = np.asarray([judged.get(i, 0) for i in ids], dtype=np.int64)
    ideal = np.asarray(list(judged.values()), dtype=np.int64)
    relevant = int((ideal >= RELEVANT_GRADE).sum())
    found = int((grades >= RELEVANT_GRADE).sum())
    return QueryMetrics(
        query_id=query_id,
        ndcg_at_10=ndcg_at_k(scores, grades, NDCG_K, ideal_grades=ideal) if len(ideal) else float("nan"),
        reciprocal_rank=reciprocal_rank(scores, grades),
        recall=found / relevant if relevant else float("nan"),
        relevant=relevant,
    )


def _nanmean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(array)) if np.isfinite(array).any() else float("nan")


@dataclass(frozen=True)
class Summary:
    """Means over a set of queries: nDCG@10 and recall over the queries that have something to find, MRR over all."""

    ndcg_at_10: float
    mrr: float
    recall: float
    queries: int
    queries_without_relevant: int  # excluded from nDCG@10 (no judged item with a gain)

    def as_dict(self, cutoff: int) -> dict[str, Any]:
        return {
            "ndcg@10": _round(self.ndcg_at_10),
            "mrr": _round(self.mrr),
            f"recall@{cutoff}": _round(self.recall),
            "queries": self.queries,
            "queries_without_relevant": self.queries_without_relevant,
        }


def summarize(per_query: Sequence[QueryMetrics]) -> Summary:
    ndcg = [m.ndcg_at_10 for m in per_query]
    return Summary(
        ndcg_at_10=_nanmean(ndcg),
        mrr=float(np.mean([m.reciprocal_rank for m in per_query])) if per_query else float("nan"),
        recall=_nanmean([m.recall for m in per_query]),
        queries=len(per_query),
        queries_without_relevant=int(np.isnan(np.asarray(ndcg, dtype=np.float64)).sum()),
    )


def _round(value: float, digits: int = 4) -> float | None:
    return None if math.isnan(value) else round(value, digits)


# -- running it ----------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Rankings and figures of every system on one dataset's chosen queries."""

    data: EvalData
    cutoff: int
    per_query: dict[str, list[QueryMetrics]] = field(default_factory=dict)  # system -> one per query, in order
    analysis: str = NO_ANALYSIS  # the bm25 system's lexical analysis

    def add(self, system: str, rankings: list[Ranking]) -> None:
        self.per_query[system] = [
            query_metrics(q.id, r, self.data.judged[q.id], self.cutoff)
            for q, r in zip(self.data.queries, rankings, strict=True)
        ]

    def summary(self, system: str, fold: int | None = None, folds: int = 1) -> Summary:
        rows = self.per_query[system]
        if fold is not None:
            rows = [m for m in rows if fold_of(m.query_id, folds) == fold]
        return summarize(rows)


def run_systems(
    data: EvalData,
    systems: Sequence[str],
    *,
    served: Served | None = None,
    encoder: TextEncoder | None = None,
    top_k: int = DEFAULT_TOP_K,
    rrf_depth: int = RRF_DEPTH,
    rrf_k: int = RRF_K,
    bm25_method: str = BM25_METHOD,
    analysis: str = NO_ANALYSIS,
) -> Evaluation:
    """Rank every chosen query with each system and score the rankings; `analysis` is the bm25 system's (and so
    rrf's)."""
    evaluation = Evaluation(data, top_k, analysis=analysis)
    texts = [q.text for q in data.queries]
    depth = max(top_k, rrf_depth if "rrf" in systems else top_k)
    if "served" in systems:
        if served is None:
            raise EvaluateError("the served system needs a loaded engine or a --url")
        catalog = {item.id for item in data.items}
        evaluation.add("served", served_rankings(served, data.queries, catalog))
    deep: dict[str, list[Ranking]] = {}
    if "minilm" in systems or "rrf" in systems:
        if encoder is None:
            raise EvaluateError("the MiniLM baseline needs a text encoder")
        deep["minilm"] = minilm_rankings(encoder, data.items, texts, depth)
    if "bm25" in systems or "rrf" in systems:
        docs = [item.full_text for item in data.items]
        ids = [item.id for item in data.items]
        deep["bm25"] = bm25_rankings(docs, ids, texts, depth, method=bm25_method, analysis=analysis)
    for name in ("minilm", "bm25"):
        if name in systems:
            evaluation.add(name, [Ranking(r.ids[:top_k], r.scores[:top_k]) for r in deep[name]])
    if "rrf" in systems:
        fused = [rrf(pair, rrf_k, top_k) for pair in zip(deep["minilm"], deep["bm25"], strict=True)]
        evaluation.add("rrf", fused)
    return evaluation


def _fmt(value: float | None, width: int = 8) -> str:
    return f"{'n/a':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.4f}"


def _label(system: str) -> str:
    return SYSTEM_LABELS.get(system, system)


def report_table(evaluation: Evaluation, served: Served | None, folds: int) -> str:
    """The printed report: one table of system x metric, and with folds one of per-fold nDCG@10."""
    d, k = evaluation.data, evaluation.cutoff
    systems = list(evaluation.per_query)
    any_summary = evaluation.summary(systems[0])
    synthetic = "SYNTHETIC " if d.synthetic else ""
    split = "every query (--split all)" if d.split == "all" else f"the {d.split} split"
    lines = [
        f"Quality on {split} of {synthetic}dataset '{d.name}' ({d.path}): {any_summary.queries} queries of "
        f"{d.queries_in_file}, {any_summary.queries_without_relevant} without a judged relevant item; "
        f"{len(d.items)} catalog items",
    ]
    if served is not None and "served" in systems:
        lines.append(f"served = {served.description}")
        if d.split != "test":
            lines.append("  (not held out: the served model may have been trained on some of these queries)")
    lines.append(f"{'system':<18} {'nDCG@10':>8} {'MRR':>8} {f'recall@{k}':>10} {'queries':>8}")
    for system in systems:
        s = evaluation.summary(system)
        lines.append(f"{_label(system):<18} {_fmt(s.ndcg_at_10)} {_fmt(s.mrr)} {_fmt(s.recall, 10)} {s.queries:>8}")
    lines.append(
        f"({NDCG_CONVENTION}; ideal over all judged items, so what a system missed counts; MRR: first item with "
        f"grade >= {RELEVANT_GRADE} in the top {k}, mean over all queries; recall@{k}: share of a query's grade >= "
        f"{RELEVANT_GRADE} items in its top {k}; zero-shot systems search the whole catalog; bm25 analysis: "
        f"{evaluation.analysis}; rrf k={RRF_K})"
    )
    if folds > 1:
        lines.append("")
        lines.append(
            f"nDCG@10 over {folds} query folds (fold = sha256(query id) mod {folds}); mean and sample sd over folds"
        )
        header = " ".join(f"{f'fold {f + 1}':>8}" for f in range(folds))
        lines.append(f"{'system':<18} {header} {'mean':>8} {'sd':>8}")
        sizes = [evaluation.summary(systems[0], f, folds).queries for f in range(folds)]
        lines.append(f"{'(queries)':<18} " + " ".join(f"{n:>8}" for n in sizes))
        for system in systems:
            per_fold = [evaluation.summary(system, f, folds).ndcg_at_10 for f in range(folds)]
            cells = " ".join(_fmt(v) for v in per_fold)
            if system == "served":
                lines.append(f"{_label(system):<18} {cells} {'-':>8} {'-':>8}")
            else:
                mean, sd = _fold_spread(per_fold)
                lines.append(f"{_label(system):<18} {cells} {_fmt(mean)} {_fmt(sd)}")
        lines.append(
            "(zero-shot systems learn nothing, so their spread over folds is the noise of a test set this size; the "
            "served model is whatever is loaded, so its row only shows the folds' figures)"
        )
    return "\n".join(lines)


def _fold_spread(values: Sequence[float]) -> tuple[float, float]:
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if not len(finite):
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")


def report_json(evaluation: Evaluation, served: Served | None, folds: int, settings: dict[str, Any]) -> dict[str, Any]:
    d, k = evaluation.data, evaluation.cutoff
    out: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {
            "name": d.name,
            "path": str(d.path),
            "synthetic": d.synthetic,
            "items": len(d.items),
            "queries_in_file": d.queries_in_file,
        },
        "split": d.split,
        "convention": NDCG_CONVENTION + "; ideal over all judged items; MRR mean over all queries",
        "settings": settings,
        "served": None if served is None else {"description": served.description, "model": served.model_version},
        "systems": {_label(s): evaluation.summary(s).as_dict(k) for s in evaluation.per_query},
    }
    if folds > 1:
        fold_figures: dict[str, Any] = {}
        for system in evaluation.per_query:
            per_fold = [evaluation.summary(system, f, folds) for f in range(folds)]
            entry: dict[str, Any] = {"per_fold": [s.as_dict(k) for s in per_fold]}
            if system != "served":
                for metric, values in (
                    ("ndcg@10", [s.ndcg_at_10 for s in per_fold]),
                    ("mrr", [s.mrr for s in per_fold]),
                    (f"recall@{k}", [s.recall for s in per_fold]),
                ):
                    mean, sd = _fold_spread(values)
                    entry[metric] = {"mean": _round(mean), "sd": _round(sd)}
            fold_figures[_label(system)] = entry
        out["folds"] = {"k": folds, "rule": f"sha256(query id) mod {folds}", "systems": fold_figures}
    out["per_query"] = {
        _label(system): [
            {
                "query_id": m.query_id,
                "fold": fold_of(m.query_id, folds),
                "ndcg@10": _round(m.ndcg_at_10, 6),
                "reciprocal_rank": _round(m.reciprocal_rank, 6),
                f"recall@{k}": _round(m.recall, 6),
                "relevant": m.relevant,
            }
            for m in rows
        ]
        for system, rows in evaluation.per_query.items()
    }
    return out


def served_analysis(served: Served | None, bundle: Path | None) -> str:
    """The lexical analysis of the bundle the service serves, for the bm25 baseline to match: the in-process
    engine's, else that of the bundle at `bundle` (default RANK_BUNDLE_DIR) if there is one, else none."""
    if isinstance(served, InProcessServed):
        return str(served.engine.bundle.lexical.analyzer.name)
    try:
        if bundle is None:
            from service.settings import Settings

            bundle = Settings().bundle_dir
        manifest = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError):  # no bundle there (or settings that do not load): no analysis to match
        return NO_ANALYSIS
    return str(manifest.get("lexical", {}).get("analysis", NO_ANALYSIS))


def _one_line(exc: BaseException) -> str:
    """An exception as one sentence: pydantic's lists of errors joined, anything else its first line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors())
        except (TypeError, KeyError):
            pass
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _detail(body: dict[str, Any]) -> str:
    detail = body.get("error", body.get("detail", body))
    return _one_line(ValueError(json.dumps(detail) if not isinstance(detail, str) else detail))


def _systems(value: str) -> list[str]:
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown system(s) {unknown or value!r}; choose from {', '.join(SYSTEMS)}")
    return [s for s in SYSTEMS if s in chosen]


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    from service.settings import Settings

    defaults = Settings.model_fields
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.evaluate",
        description="Label-based quality of what the service serves (in process, or --url over HTTP), beside "
        "zero-shot MiniLM cosine, BM25 and their RRF over the whole catalog, on the same held-out queries.",
        epilog="Exit codes: 0 done, 2 the evaluation could not run (one sentence on stderr says why).",
    )
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="dataset directory (user format)")
    parser.add_argument(
        "--split", choices=SPLITS, default="test", help="queries to evaluate: a split, or all (default: test)"
    )
    parser.add_argument(
        "--systems",
        type=_systems,
        default=list(SYSTEMS),
        help=f"comma-separated, from {','.join(SYSTEMS)} (default: all); leave out served for a catalog the "
        "service does not serve",
    )
    parser.add_argument("--url", help="evaluate a running service over HTTP POST /rank instead of in process")
    for name, flag in (("bundle_dir", "--bundle"), ("model_dir", "--model"), ("encoder_dir", "--encoder")):
        parser.add_argument(
            flag,
            type=Path,
            help=f"in-process served artifacts (default: RANK_{name.upper()} or {defaults[name].default})"
            + ("; the encoder also makes the MiniLM baseline" if flag == "--encoder" else ""),
        )
    parser.add_argument(
        "--top-k", type=_positive, default=DEFAULT_TOP_K, help=f"ranked items per query (default: {DEFAULT_TOP_K})"
    )
    parser.add_argument(
        "--num-candidates", type=_positive, help="served: candidates per query (default: the service's default)"
    )
    parser.add_argument(
        "--folds",
        type=_positive,
        default=1,
        help="also report nDCG@10 over K query folds (sha256 of the query id mod K): for each zero-shot system the "
        "mean and spread over folds, which is how much a test set of that size moves; for the served system only "
        "each fold's figure (the loaded model is evaluated as it is, nothing is retrained per fold) (default: 1)",
    )
    parser.add_argument(
        "--bm25-method",
        choices=("lucene", "robertson"),
        default=BM25_METHOD,
        help="bm25s's idf variant: lucene log(1+(N-n+.5)/(n+.5)), or robertson log((N-n+.5)/(n+.5)) floored at 0 "
        f"(default: {BM25_METHOD})",
    )
    parser.add_argument(
        "--analysis",
        choices=analysis_choices(),
        metavar="{none,LANGUAGE}",
        help="the bm25 baseline's lexical analysis: none, or a Snowball language (stop words and stems), e.g. "
        "english (default: the served bundle's, --bundle or RANK_BUNDLE_DIR; none without one)",
    )
    parser.add_argument(
        "--rrf-depth", type=_positive, default=RRF_DEPTH, help=f"depth of each list RRF fuses (default: {RRF_DEPTH})"
    )
    parser.add_argument("--out", type=Path, help="JSON report (default: reports/evaluate-<UTC time>.json)")
    return parser


def run(args: argparse.Namespace) -> int:
    started = datetime.now(UTC)
    data = load_eval_data(args.data, args.split)
    served: Served | None = None
    try:
        if "served" in args.systems:  # first: a service or artifacts that are not there fail before the long work
            if args.url:
                served = HttpServed(args.url, args.top_k, args.num_candidates)
            else:
                served = load_in_process(args.bundle, args.model, args.encoder, args.top_k, args.num_candidates)
                catalog = served.catalog if isinstance(served, InProcessServed) else None
                items = {item.id for item in data.items}
                if catalog is not None and not catalog <= items:
                    raise EvaluateError(
                        f"the served bundle holds {len(catalog - items)} of its {len(catalog)} items outside "
                        f"{args.data}'s catalog: it serves another dataset (leave served out with --systems)"
                    )
        encoder = None
        if {"minilm", "rrf"} & set(args.systems):
            from service.settings import Settings

            encoder_dir = args.encoder or Settings().encoder_dir
            try:
                encoder = TextEncoder(encoder_dir)
            except Exception as exc:  # noqa: BLE001 - a broken encoder is one sentence
                raise EvaluateError(f"the MiniLM encoder at {encoder_dir} does not load: {_one_line(exc)}") from None
        analysis = args.analysis or served_analysis(served, args.bundle)
        evaluation = run_systems(
            data,
            args.systems,
            served=served,
            encoder=encoder,
            top_k=args.top_k,
            rrf_depth=args.rrf_depth,
            bm25_method=args.bm25_method,
            analysis=analysis,
        )
    finally:
        if isinstance(served, HttpServed):
            served.close()
    print(report_table(evaluation, served, args.folds))
    settings = {
        "top_k": args.top_k,
        "num_candidates": args.num_candidates,
        "systems": [_label(s) for s in args.systems],
        "minilm": {"text": "title and text joined (Item.full_text)", "search": "exact inner product"},
        "bm25": {
            "library": "bm25s",
            "k1": BM25_K1,
            "b": BM25_B,
            "method": args.bm25_method,
            "tokens": TOKEN.pattern,
            "analysis": evaluation.analysis,
            "terms": Analyzer(evaluation.analysis).describe(),
        },
        "rrf": {"k": RRF_K, "depth": args.rrf_depth, "of": ["minilm_cosine", "bm25"]},
        "command": sys.argv,
    }
    out = args.out or Path("reports") / f"evaluate-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report_json(evaluation, served, args.folds, settings), indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_cli_logging()
    try:
        return run(args)
    except (EvaluateError, DataError, FileNotFoundError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
