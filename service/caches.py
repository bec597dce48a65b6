"""What an engine remembers between batches: each query's vector in its model's retrieval space
(`ProjectionCache`), each unfiltered /rank query's candidates (`CandidateCache`) and their scores (`ResultCache`).

All belong to one engine: projections and scores are its model's, candidate rows its bundle's, so a swap starts them
empty.
The query's MiniLM embedding is cached by the text encoder itself (`TextEncoder.cached`), shared by every engine
that embeds with it.
"""

from __future__ import annotations

import numpy as np

from index.runtime.exported_model import ExportedModel
from index.runtime.lru import LruCache
from service.jobs import Job, RankJob
from service.metrics import Metrics

CandidateKey = tuple[str, int]  # (query, number of candidates)
Candidates = tuple[np.ndarray, np.ndarray]  # (rows, BM25 score of each), read-only
ResultKey = tuple[str, int, str]  # (query, number of candidates, prior)
Scored = tuple[np.ndarray, np.ndarray]  # (candidate rows, the score of each), read-only


class ProjectionCache:
    """Queries in the model's retrieval space, by query text: a cached query skips the query tower too."""

    def __init__(self, size: int) -> None:
        self._vectors: LruCache[str, np.ndarray] = LruCache(size)

    def peek(self, query: str) -> np.ndarray | None:
        """The query's remembered vector, or None."""
        return self._vectors.get(query)

    def project(self, model: ExportedModel, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each query of `vectors` (MiniLM embeddings by text) in the retrieval space: remembered ones from the
        cache, the others in one query-tower call, then remembered."""
        projected = {query: found for query in vectors if (found := self._vectors.get(query)) is not None}
        new = [query for query in vectors if query not in projected]
        if new:
            for query, vector in zip(new, model.project_queries(np.stack([vectors[q] for q in new])), strict=True):
                self._vectors.put(query, vector)
                projected[query] = vector
        return projected


class CandidateCache:
    """Candidate rows and their BM25 scores by (query, depth), for unfiltered /rank jobs (a filtered job's rows
    depend on its filter, and a /rerank job brings its own); counts hits and misses in `rank_candidate_cache_total`.
    """

    def __init__(self, size: int, metrics: Metrics) -> None:
        self._lists: LruCache[CandidateKey, Candidates] = LruCache(size)
        self._metrics = metrics

    @staticmethod
    def key(job: Job) -> CandidateKey | None:
        """The job's cache key, or None for a job whose candidates are never cached."""
        # An explained job needs each source's own list, which the cache does not keep.
        if isinstance(job, RankJob) and job.allowed is None and not job.explain:
            return (job.query, job.num_candidates)
        return None

    def lookup(self, jobs: list[Job]) -> tuple[list[CandidateKey | None], list[Candidates | None]]:
        """Each job's key and its remembered candidates (None: not cached, or never cacheable)."""
        keys = [self.key(job) for job in jobs]
        return keys, [self._lists.get(key) if key is not None else None for key in keys]

    def remember(self, key: CandidateKey, rows: np.ndarray, bm25: np.ndarray) -> None:
        """Keep a job's candidates; they become read-only, since every later hit shares them."""
        rows.flags.writeable = bm25.flags.writeable = False
        self._lists.put(key, (rows, bm25))

    def count(self, hits: int, misses: int) -> None:
        """Record one batch's lookups."""
        self._metrics.candidate_cache.labels("hit").inc(hits)
        self._metrics.candidate_cache.labels("miss").inc(misses)


class ResultCache:
    """Every candidate's score by (query, depth, prior), for unfiltered /rank jobs: a repeated request skips the
    whole path after validation, the scoring graph included, since one engine's model and bundle score the same
    candidates the same way every time. top_k is not in the key (the top-k is cut from all the candidates' scores),
    nor the filters (a filtered job is never cached). Counts hits and misses in `rank_result_cache_total`."""

    def __init__(self, size: int, metrics: Metrics) -> None:
        self._scored: LruCache[ResultKey, Scored] = LruCache(size)
        self._metrics = metrics

    @staticmethod
    def key(job: Job, prior: str) -> ResultKey | None:
        """The job's key, or None for a job whose results are never cached (as `CandidateCache.key`)."""
        found = CandidateCache.key(job)
        return (*found, prior) if found is not None else None

    def peek(self, job: Job, prior: str) -> bool:
        """Whether `job`'s scores are remembered (not counted, not refreshed): such a job needs no MiniLM."""
        key = self.key(job, prior)
        return key is not None and key in self._scored

    def lookup(self, jobs: list[Job], prior: str) -> list[Scored | None]:
        """Each job's remembered rows and scores (None: not cached, or never cacheable); counts the cacheable."""
        keys = [self.key(job, prior) for job in jobs]
        found = [self._scored.get(key) if key is not None else None for key in keys]
        hits = sum(hit is not None for hit in found)
        self._metrics.result_cache.labels("hit").inc(hits)
        self._metrics.result_cache.labels("miss").inc(sum(key is not None for key in keys) - hits)
        return found

    def remember(self, job: Job, prior: str, rows: np.ndarray, scores: np.ndarray) -> None:
        """Keep a cacheable job's scores (read-only from now on: every later hit shares them); others are ignored."""
        if (key := self.key(job, prior)) is not None:
            rows.flags.writeable = scores.flags.writeable = False
            self._scored.put(key, (rows, scores))
