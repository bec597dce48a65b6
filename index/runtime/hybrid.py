"""Hybrid candidates and the zero-shot evidence the ranker builds on.

Candidate generation fuses up to three ranked lists by reciprocal-rank fusion (Cormack, Clarke and Buettcher, SIGIR
2009; k = 60): the learned retrieval space (the model's two-tower, when there is a model), MiniLM dense search over
the items' text, and BM25. RRF needs no score calibration between sources, which is why it is the usual fusion of
lexical and dense search. Which sources a model's candidates fuse is chosen at training time on the validation queries
(the set with the best recall) and recorded in its model card; without a model, dense and BM25 are fused.

Every candidate also carries zero-shot evidence computed within its own candidate list, the same way for a /rank list,
a /rerank request's documents and a training list:

- `dense`: the MiniLM cosine of the query and the item's text;
- `lexical`: its BM25 score divided by the list's best (0..1, 0 when no query term occurs);
- the prior, one of `PRIORS`: `dense`, `lexical`, or `rrf`, 60 * the RRF of the list's dense and BM25 orders (a
  source that scores a candidate 0 adds nothing for it).

Without a trained ranker the prior is the score; with one, the ranker adds a learned residual to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

RRF_K = 60
SOURCES = ("learned", "dense", "bm25")
ZERO_SHOT_SOURCES = ("dense", "bm25")
PRIORS = ("dense", "lexical", "rrf")
ZERO_SHOT_PRIOR = "rrf"


def fuse(ranked: Sequence[np.ndarray], depth: int, k: int = RRF_K) -> np.ndarray:
    """Rows of the RRF of ranked row lists (best first; a row absent from a list gets nothing from it), the best
    `depth`, ties by row so that the order is deterministic."""
    lists = [r[r >= 0] for r in (np.asarray(r, dtype=np.int64) for r in ranked)]
    lists = [r for r in lists if len(r)]
    if not lists:
        return np.zeros(0, np.int64)
    if len(lists) == 1 and len(np.unique(lists[0])) == len(lists[0]):
        return lists[0][:depth]  # the RRF of one list without repeats is that list (a model with one source)
    rows = np.concatenate(lists)
    ranks = np.concatenate([np.arange(1, len(r) + 1) for r in lists])
    unique, inverse = np.unique(rows, return_inverse=True)
    score = np.bincount(inverse, weights=1.0 / (k + ranks))
    return unique[np.lexsort((unique, -score))][:depth]


def _rrf_term(values: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """1 / (k + rank) by descending value within one list (ranks from 1, ties by position); 0 where value <= 0."""
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    return np.where(values > 0, 1.0 / (k + ranks), 0.0)


class Evidence(NamedTuple):
    """Per-candidate zero-shot evidence, (M,) float32 each, for candidates concatenated list after list."""

    dense: np.ndarray
    lexical: np.ndarray  # BM25 / the list's best BM25
    rrf: np.ndarray  # RRF_K * (RRF of the list's dense and BM25 orders)

    def prior(self, kind: str) -> np.ndarray:
        if kind not in PRIORS:
            raise ValueError(f"unknown prior {kind!r}; choose one of {', '.join(PRIORS)}")
        return getattr(self, kind)


def evidence(dense: np.ndarray, bm25: np.ndarray, lengths: Sequence[int]) -> Evidence:
    """Evidence for candidate lists of the given `lengths` laid end to end (dense cosines and raw BM25 scores)."""
    dense = np.asarray(dense, dtype=np.float32)
    bm25 = np.asarray(bm25, dtype=np.float32)
    lexical = np.zeros(len(bm25), dtype=np.float32)
    rrf = np.zeros(len(bm25), dtype=np.float32)
    start = 0
    for n in lengths:
        part = slice(start, start + n)
        best = float(bm25[part].max()) if n else 0.0
        if best > 0:
            lexical[part] = bm25[part] / best
        rrf[part] = RRF_K * (_rrf_term(dense[part]) + _rrf_term(bm25[part]))
        start += n
    return Evidence(dense, lexical, rrf)


def ranker_evidence(found: Evidence, prior: str) -> np.ndarray:
    """The ranker's `evidence` input, (M, 2) float32: the prior (`prior`, one of PRIORS) and the lexical score, in
    the order of `model.fusion.EVIDENCE`."""
    return np.stack([found.prior(prior), found.lexical], axis=1).astype(np.float32)


def candidate_rows(ranked: Mapping[str, np.ndarray], sources: Sequence[str], depth: int) -> np.ndarray:
    """A query's candidate rows: the RRF of the `sources`' ranked rows, the best `depth`; when they hold fewer (BM25
    finds only items that share a term with the query), filled up in the order of the `dense` ranking."""
    rows = fuse([ranked[name] for name in sources], depth)
    if len(rows) < depth and "dense" in ranked:
        dense = np.asarray(ranked["dense"], dtype=np.int64)
        dense = dense[dense >= 0]
        extra = dense[~np.isin(dense, rows)][: depth - len(rows)]
        rows = np.concatenate([rows, extra])
    return rows
