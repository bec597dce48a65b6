"""Scoring rankings against the judgments: one query's nDCG@10, reciprocal rank and recall@K, their means over a
set of queries, and `run_systems`, which ranks every chosen query with each system and scores the rankings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index.data.records import fold_of
from index.runtime.hybrid import RRF_K
from index.runtime.lexical import NO_ANALYSIS
from index.runtime.text_encoder import TextEncoder
from training.evaluate.data import EvalData
from training.evaluate.errors import EvaluateError
from training.evaluate.served import Served, served_rankings
from training.evaluate.systems import (
    DEFAULT_BM25,
    DEFAULT_TOP_K,
    RRF_DEPTH,
    Ranking,
    bm25_rankings,
    minilm_rankings,
    rrf,
)
from training.metrics import RELEVANT_GRADE, ndcg_at_k, reciprocal_rank

NDCG_K = 10


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
            "ndcg@10": rounded(self.ndcg_at_10),
            "mrr": rounded(self.mrr),
            f"recall@{cutoff}": rounded(self.recall),
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


def rounded(value: float, digits: int = 4) -> float | None:
    """A figure for the JSON report: rounded to `digits`, or None (null) for NaN."""
    return None if math.isnan(value) else round(value, digits)


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
    bm25_method: str = DEFAULT_BM25.method,
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
