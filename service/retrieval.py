"""The retrieve stage: a batch's candidate rows, and the BM25 score of each, from the engine's sources (the learned
FAISS index, MiniLM dense search, BM25) fused by RRF (`index.runtime.hybrid`), through the candidate cache.

Unfiltered searches with the same depth go to each FAISS index as one batch, BM25 scores each distinct query once,
and a /rerank job brings its own rows. Laps "retrieve", "lexical" and "fuse" on the batch's `StageTimer`.
"""

from __future__ import annotations

import numpy as np

from index.runtime.bundle import Bundle
from index.runtime.faiss_index import FaissIndex
from index.runtime.hybrid import candidate_rows
from service.caches import CandidateCache
from service.jobs import Job, RankJob, RerankJob
from service.timing import StageTimer

QueryVectors = dict[str, np.ndarray]
"""A vector per distinct query text of a batch."""
Sources = tuple[str, ...]
"""The candidate sources a model fuses (index.runtime.hybrid.SOURCES): the engine's, which a test may change."""
FoundBy = list[dict[str, np.ndarray] | None]
"""Per job, for an explained /rank job, each source's ranked rows (the lists fused into its candidates); else None."""


def search(index: FaissIndex, jobs: list[Job], vectors: QueryVectors) -> dict[int, np.ndarray]:
    """Ranked rows per rank job (by position) from one FAISS index; unfiltered jobs of equal depth share a call, a
    filtered one searches only its allowed rows."""
    out: dict[int, np.ndarray] = {}
    groups: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        if isinstance(job, RankJob):
            if job.allowed is None:
                groups.setdefault(job.num_candidates, []).append(i)
            else:
                found = index.search(vectors[job.query][None], job.num_candidates, job.allowed)[1][0]
                out[i] = found[found >= 0]
    for k, members in groups.items():
        found = index.search(np.stack([vectors[jobs[i].query] for i in members]), k)[1]
        for i, hits in zip(members, found, strict=True):
            out[i] = hits[hits >= 0]
    return out


class CandidateFinder:
    """Finds the candidates of a batch's jobs in one bundle, remembering unfiltered /rank jobs' in `cache`."""

    def __init__(self, bundle: Bundle, cache: CandidateCache) -> None:
        self.bundle, self.cache = bundle, cache

    def retrieve(
        self, jobs: list[Job], vectors: QueryVectors, projected: QueryVectors, sources: Sources, stages: StageTimer
    ) -> tuple[list[np.ndarray], list[np.ndarray], FoundBy]:
        """Candidate rows per job and the BM25 score of each candidate: an unfiltered /rank job's from the cache
        when its query and depth were served before, the others' found afresh (`find`, which laps its stages even
        with nothing to find) and the unfiltered /rank ones remembered. `vectors` are the queries' MiniLM
        embeddings, `projected` their vectors in the learned space (empty without a model). Explained jobs also get
        their sources' lists (never cached)."""
        keys, cached = self.cache.lookup(jobs)
        fresh = [i for i, hit in enumerate(cached) if hit is None]
        rows, bm25, lists = self.find([jobs[i] for i in fresh], vectors, projected, sources, stages)
        found_by: FoundBy = [None] * len(jobs)
        for i, job_lists in zip(fresh, lists, strict=True):
            found_by[i] = job_lists
        found = dict(zip(fresh, zip(rows, bm25, strict=True), strict=True))
        for i, (job_rows, job_bm25) in found.items():
            if (key := keys[i]) is not None:
                self.cache.remember(key, job_rows, job_bm25)
        self.cache.count(hits=len(jobs) - len(fresh), misses=sum(keys[i] is not None for i in fresh))
        both = [hit if hit is not None else found[i] for i, hit in enumerate(cached)]
        return [job_rows for job_rows, _ in both], [job_bm25 for _, job_bm25 in both], found_by

    def find(
        self, jobs: list[Job], vectors: QueryVectors, projected: QueryVectors, sources: Sources, stages: StageTimer
    ) -> tuple[list[np.ndarray], list[np.ndarray], FoundBy]:
        """Candidate rows per job (rerank jobs bring their own; rank jobs fuse `sources`), the BM25 score of each
        candidate (0 for a rerank text document: the gather scores those) and, for explained /rank jobs, the lists
        fused. Laps "retrieve", "lexical" (BM25: whole-catalog scores when BM25 is a source, then the candidates'
        own) and "fuse"."""
        b = self.bundle
        ranked: dict[str, dict[int, np.ndarray]] = {}
        if "dense" in sources:
            ranked["dense"] = search(b.dense, jobs, vectors)
        if "learned" in sources and b.retriever is not None:
            ranked["learned"] = search(b.retriever, jobs, projected)
        stages.lap("retrieve")
        # Whole-catalog BM25 scores only when BM25 finds candidates; otherwise only the candidates' (below).
        lexical = {}
        if "bm25" in sources:
            lexical = {query: b.lexical.scores(query) for query in dict.fromkeys(job.query for job in jobs)}
            ranked["bm25"] = {
                i: b.lexical.top(lexical[job.query], job.num_candidates, job.allowed)[1]
                for i, job in enumerate(jobs)
                if isinstance(job, RankJob)
            }
        stages.lap("lexical")
        rows = []
        found_by: FoundBy = [None] * len(jobs)
        for i, job in enumerate(jobs):
            if isinstance(job, RerankJob):
                rows.append(job.rows)
            else:
                lists = {name: found[i] for name, found in ranked.items() if i in found}
                fused = candidate_rows(lists, sources, job.num_candidates)
                if len(fused) < job.num_candidates and "dense" not in lists:
                    # Too few (only BM25 can find fewer than asked): fill from dense search, as training does.
                    lists["dense"] = search(b.dense, [job], vectors).get(0, np.zeros(0, np.int64))
                    fused = candidate_rows(lists, sources, job.num_candidates)
                rows.append(fused)
                if job.explain:
                    found_by[i] = lists
        stages.lap("fuse")
        bm25 = [
            lexical[job.query][job_rows] if job.query in lexical else b.lexical.scores_at(job.query, job_rows)
            for job, job_rows in zip(jobs, rows, strict=True)
        ]
        stages.lap("lexical")
        return rows, bm25, found_by
