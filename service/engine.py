"""The request path, as `RankingEngine`: query encoding -> hybrid candidates (learned space, MiniLM dense, BM25;
fused by RRF) -> zero-shot evidence and feature gather -> ONNX ranker -> top-k.

The engine coordinates; each step has a module of its own:

- service/jobs.py: requests are validated on the event loop (`prepare_rank`, `prepare_rerank`) into jobs;
- service/encoding.py, the `encode` stage: distinct queries are encoded once (misses in one MiniLM call), and
  service/caches.py's projection cache puts them into the retrieval space in one query-tower call (`project`);
- service/retrieval.py: unfiltered searches with the same depth go to each FAISS index as one batch (`retrieve`),
  BM25 scores each distinct query once (`lexical`), and the candidate lists are fused (`fuse`); an unfiltered /rank
  job whose query and depth this engine served before takes its candidates from the candidate cache instead, and
  its scores from the result cache (then no stage runs for it);
- service/scoring.py: the candidates' features and evidence are gathered (`gather`) and every candidate of every
  job is scored in ONE ranker call (`rank`);
- service/outcomes.py: each job ends in a typed outcome (`RankOutcome`, `RerankOutcome`).

`process_batch` serves any number of jobs together on the batcher's worker thread. A batch of one job is exactly the
unbatched path, so rankings do not depend on batching; nor on the caches.

Without a trained model (a zero-shot bundle) candidates come from dense and BM25 search and are ordered by the
zero-shot prior (`index.runtime.hybrid`): the same code path, with the prior as the score.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel
from index.runtime.hybrid import ZERO_SHOT_PRIOR, ZERO_SHOT_SOURCES
from index.runtime.scoring_graph import ScoringGraph
from index.runtime.text_encoder import TextEncoder
from service.batcher import Batched
from service.caches import CandidateCache, ProjectionCache, ResultCache, Scored
from service.encoding import Embedder
from service.explain import Details
from service.jobs import Embedded, Job, JobValidator, RankJob, RerankJob
from service.metrics import Metrics
from service.outcomes import Outcome, rank_outcome, rerank_outcome
from service.protocol import DocumentRef, RankRequest, RerankRequest
from service.retrieval import CandidateFinder
from service.scoring import Scorer
from service.settings import Settings
from service.timing import StageTimer

R = TypeVar("R")


class RankingEngine:
    """Serves ranking requests from one bundle, one exported model (query tower, candidate encoder and ranker
    graphs; None for zero-shot serving) and one text encoder. `sources` (the candidate sources fused) and `prior`
    are the model's; they are read at every batch."""

    def __init__(
        self,
        bundle: Bundle,
        model: ExportedModel | None,
        encoder: TextEncoder,
        settings: Settings,
        metrics: Metrics,
        document_encoder: TextEncoder | None = None,
    ) -> None:
        bundle.check_compatible(model.card if model is not None else None)
        self.bundle, self.model, self.encoder = bundle, model, encoder
        # /rerank text documents stand where catalog items stand, whose texts the index build embeds with the fp32
        # graph, batched: `document_encoder` is that graph (the query `encoder` when none is given).
        self.document_encoder = document_encoder or encoder
        self.settings, self.metrics = settings, metrics
        self.sources = model.card.sources if model is not None else ZERO_SHOT_SOURCES
        self.prior = model.card.prior if model is not None else ZERO_SHOT_PRIOR
        self._validator = JobValidator(bundle, settings)
        self._embedder = Embedder(encoder, self.document_encoder, metrics)
        # Cached queries skip the query tower too (the projection is this engine's model's, hence its own cache);
        # and their candidates (rows and BM25 scores by query and depth) are the bundle's, hence per engine too.
        self._projections = ProjectionCache(settings.query_cache_size)
        self._finder = CandidateFinder(bundle, CandidateCache(settings.candidate_cache_size, metrics))
        self._results = ResultCache(settings.result_cache_size, metrics)
        self._scorer = Scorer(bundle, model, settings.ort_threads)

    @property
    def model_version(self) -> str:
        """The served model's version, or 'zero-shot' without one."""
        return self.model.version if self.model is not None else "zero-shot"

    @property
    def synthetic(self) -> bool:
        """Whether the served model was trained on synthetic data (False for zero-shot serving: nothing trained)."""
        return self.model is not None and bool(self.model.card.raw.get("dataset", {}).get("synthetic", False))

    @property
    def scoring_graph(self) -> ScoringGraph:
        """The graph run that scores each batch's candidates (`index.runtime.scoring_graph`)."""
        return self._scorer.graph

    @property
    def provider(self) -> str:
        """The execution provider the ranker runs on ('none' without a ranker)."""
        return self.model.providers[0] if self.model is not None else "none"

    def projected(self, query: str) -> np.ndarray | None:
        """`query` in the model's retrieval space, if it is in this engine's projection cache (None without a
        model): what the impression log reads for its feature logging, never computing it anew."""
        return self._projections.peek(query) if self.model is not None else None

    # -- validation, on the event loop -------------------------------------------------------------------------

    def prepare_rank(self, request: RankRequest) -> RankJob:
        """A /rank request as a job for this engine (`JobValidator.prepare_rank`); RequestError when invalid."""
        return self._validator.prepare_rank(request)

    def prepare_rerank(self, request: RerankRequest) -> RerankJob:
        """A /rerank request as a job for this engine (`JobValidator.prepare_rerank`); RequestError when invalid."""
        return self._validator.prepare_rerank(request)

    # -- serving, on the batchers' worker threads --------------------------------------------------------------

    def needs_encoding(self, job: Job) -> bool:
        """Whether `job` has text to run through MiniLM: a query not in the cache (and whose results are not
        remembered either), or /rerank text documents."""
        return not self._results.peek(job, self.prior) and self._embedder.needs_encoding(job)

    def embed(self, jobs: list[Job], idle: bool = False) -> list[Embedded]:
        """MiniLM embeddings for each job (`Embedder.embed`)."""
        return self._embedder.embed(jobs, idle)

    def encode_batch(self, batch: list[Batched[Job]], idle: bool = False) -> list[Embedded]:
        """The encode stage's work on its thread (`Embedder.encode_batch`)."""
        return self._embedder.encode_batch(batch, idle)

    def process_batch(self, batch: list[Batched[Job]]) -> list[Outcome | Exception]:
        """Serve a batch of jobs; returns one outcome (timing without 'total') per job, in order. Jobs whose
        results are remembered take them from the result cache; the others run every stage together (with none,
        the stages run empty, so that every job reports every stage)."""
        jobs = [b.item for b in batch]
        stages = StageTimer()
        remembered = self._results.lookup(jobs, self.prior)
        fresh = [i for i, hit in enumerate(remembered) if hit is None]
        embedded, scored, details = self._score([jobs[i] for i in fresh], stages)
        found = dict(zip(fresh, zip(embedded, scored, details, strict=True), strict=True))
        out: list[Outcome | Exception] = []
        for i, (b, job, hit) in enumerate(zip(batch, jobs, remembered, strict=True)):
            job_timing: Mapping[str, float] = {}
            job_details: Details | None = None
            if hit is None:
                job_embedded, (job_rows, job_scores), job_details = found[i]
                self._results.remember(job, self.prior, job_rows, job_scores)
                # A job embedded on the encode stage reports that stage's times, not the (then empty) encode lap.
                job_timing = job_embedded.timing
            else:
                job_rows, job_scores = hit
            self.metrics.candidates.observe(len(job_rows))
            timing = {"encode_queue": 0.0, "queue": b.queue_seconds * 1000.0, **stages.ms, **job_timing}
            version, size = self.model_version, len(jobs)
            if isinstance(job, RankJob):
                out.append(rank_outcome(self.bundle, version, job, job_rows, job_scores, timing, size, job_details))
            else:
                out.append(rerank_outcome(self.bundle, version, job, job_scores, timing, size, job_details))
        return out

    def _score(self, jobs: list[Job], stages: StageTimer) -> tuple[list[Embedded], list[Scored], list[Details | None]]:
        """Every stage for `jobs`: their embeddings, each job's candidate rows and the score of each, and for a job
        that asked for explanations the parts of its scores (the batch then runs the explained graph: the same
        nodes and scores, more outputs)."""
        missing = [i for i, job in enumerate(jobs) if job.embedded is None]
        made = dict(zip(missing, self.embed([jobs[i] for i in missing]), strict=True)) if missing else {}
        embedded = [job.embedded or made[i] for i, job in enumerate(jobs)]
        stages.lap("encode")
        vectors = {job.query: e.query for job, e in zip(jobs, embedded, strict=True)}
        projected = self._projections.project(self.model, vectors) if self.model is not None else {}
        stages.lap("project")
        rows, bm25, found_by = self._finder.retrieve(jobs, vectors, projected, self.sources, stages)
        explain = any(job.explain for job in jobs)
        scores, parts = self._scorer.score(jobs, embedded, projected, rows, bm25, self.prior, stages, explain)
        if jobs:
            self.metrics.batch_size.observe(sum(len(r) for r in rows))
            self.metrics.batch_requests.observe(len(jobs))
        ends = np.cumsum([len(r) for r in rows])[:-1]
        per_job = np.split(np.asarray(scores, dtype=np.float32), ends) if jobs else []
        details: list[Details | None] = [None] * len(jobs)
        if parts is not None:
            split = {name: np.split(values, ends) for name, values in parts.items()}
            for j, job in enumerate(jobs):
                if job.explain:
                    job_parts = {name: values[j] for name, values in split.items()}
                    details[j] = Details(job_parts, found_by[j], self.prior, self.sources, self.model is None)
        return embedded, list(zip(rows, per_job, strict=True)), details

    def serve_one(self, job: Job) -> Outcome:
        """The unbatched path: a batch of one, on the caller's thread."""
        result = self.process_batch([Batched(job, 0.0)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    # -- warming, while loading --------------------------------------------------------------------------------

    def prefill(self, texts: Sequence[str], room: int) -> tuple[int, int]:
        """Embed the first `room` of `texts` not yet cached into the query cache, normalised as requests are; texts
        that are no valid query are skipped. Returns (embedded, skipped as invalid)."""
        return self._embedder.prefill(texts, room, self.settings.max_query_chars)

    def warm(self, queries: int) -> None:
        """Run the whole path a few times so first requests do not pay for lazy initialisation."""
        limit = self.settings.max_query_chars
        for i in range(queries):
            # Catalog titles make realistic queries, but a catalog may hold titles longer than a request may be:
            # cut to the limit, so that what the user's data looks like can never keep the service from starting.
            title = self.bundle.titles[i % self.bundle.size]
            self.serve_one(self.prepare_rank(RankRequest(query=f"warm-up {i} {title}"[:limit], top_k=1)))
        doc = DocumentRef(id=self.bundle.ids[0])
        self.serve_one(self.prepare_rerank(RerankRequest(query="warm-up", documents=["warm-up document", doc])))


@dataclass(frozen=True)
class Work:
    """A job tagged with the engine that validated it: after a hot swap, queued work still finishes on the
    engine (bundle rows, filter masks) it was prepared for."""

    engine: RankingEngine
    job: Job

    @property
    def size(self) -> int:
        return self.job.size


def _per_engine(
    batch: list[Batched[Work]], run: Callable[[RankingEngine, list[Batched[Job]]], Sequence[R]]
) -> list[R | Exception]:
    """`run` each engine's share of a batch (work prepared by different engines meets only around a swap)."""
    results: list[R | Exception] = [RuntimeError("not processed")] * len(batch)
    groups: dict[int, list[int]] = {}
    for i, b in enumerate(batch):
        groups.setdefault(id(b.item.engine), []).append(i)
    for members in groups.values():
        engine = batch[members[0]].item.engine
        served = run(engine, [Batched(batch[i].item.job, batch[i].queue_seconds) for i in members])
        for i, result in zip(members, served, strict=True):
            results[i] = result
    return results


def process_work(batch: list[Batched[Work]]) -> list[Outcome | Exception]:
    """The ranking stage: serve a micro-batch (`RankingEngine.process_batch`)."""
    return _per_engine(batch, RankingEngine.process_batch)


def process_encode_work(batch: list[Batched[Work]], idle: bool = False) -> list[Embedded | Exception]:
    """The encode stage: MiniLM for a micro-batch of jobs that need it (`RankingEngine.encode_batch`); `idle`: no
    other stage has work, so MiniLM may use the other cores."""
    return _per_engine(batch, lambda engine, jobs: engine.encode_batch(jobs, idle))
