"""What the evaluation ranks with: a `Ranking`, and the zero-shot searches over the WHOLE catalog, MiniLM cosine,
BM25 and their reciprocal-rank fusion. BM25 and RRF take their parameters from the service's own definitions
(index.runtime.lexical.LexicalParams, index.runtime.hybrid.RRF_K): the baselines are what the request path runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from index.data.records import Item
from index.offline.text_cache import encode_texts as cached_embeddings
from index.runtime.faiss_index import FaissIndex, IndexKind, IndexParams, build_index
from index.runtime.hybrid import RRF_K
from index.runtime.lexical import NO_ANALYSIS, LexicalIndex, LexicalParams
from index.runtime.text_encoder import TextEncoder

SYSTEMS = ("served", "minilm", "bm25", "rrf")
SYSTEM_LABELS = {"served": "served", "minilm": "minilm_cosine", "bm25": "bm25", "rrf": "rrf(minilm,bm25)"}
DEFAULT_TOP_K = 100  # /rank's max_top_k
# The service's BM25 (k1, b and bm25s's idf variant; "lucene": idf log(1 + (N - n + 0.5) / (n + 0.5)), never < 0).
DEFAULT_BM25 = LexicalParams()
RRF_DEPTH = 1000
ENCODE_BATCH = 64


def label(system: str) -> str:
    """A system's name in tables and reports (`minilm` -> `minilm_cosine`)."""
    return SYSTEM_LABELS.get(system, system)


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


def progress_bar(iterable: Any, desc: str, total: int | None = None, unit: str = "it") -> Any:
    """A progress bar on stderr, off when stderr is not a terminal."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, disable=None)


def encode_texts(encoder: TextEncoder, texts: list[str], desc: str) -> np.ndarray:
    """MiniLM embeddings (N, dim) of texts, in batches, with a progress bar."""
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    starts = range(0, len(texts), ENCODE_BATCH)
    for start in progress_bar(starts, desc, total=len(starts), unit="batch"):
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
    k1: float = DEFAULT_BM25.k1,
    b: float = DEFAULT_BM25.b,
    method: str = DEFAULT_BM25.method,
    analysis: str = NO_ANALYSIS,
) -> list[Ranking]:
    """Okapi BM25 of each query against every document, with the service's own BM25 (index.runtime.lexical) and
    lexical `analysis`; `ids` names the documents. A query that shares no term with a document ranks nothing."""
    index = LexicalIndex.build(documents, LexicalParams(k1, b, method), analysis)
    rankings = []
    for text in progress_bar(query_texts, "BM25", unit="query"):
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
