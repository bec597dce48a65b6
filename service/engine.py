"""The request path: query encoding -> hybrid candidates (learned space, MiniLM dense, BM25; fused by RRF) ->
zero-shot evidence and feature gather -> ONNX ranker -> top-k, as `RankingEngine`.

Requests are validated on the event loop (`prepare_rank`, `prepare_rerank`) into jobs; `process_batch` then serves
any number of jobs together on the batcher's worker thread: distinct queries are encoded once (misses in one
MiniLM call) and projected into the retrieval space in one query-tower call (the `encode` stage), unfiltered
searches with the same depth go to each FAISS index as one batch (`retrieve`), BM25 scores each distinct query once
(`lexical`), the candidate lists are fused and their evidence computed (`fuse`), and every candidate of every job is
scored in ONE ranker call. A batch of one job is exactly the unbatched path, so rankings do not depend on batching.
An unfiltered /rank job whose query and depth this engine served before takes its candidates (rows and BM25 scores)
from the candidate cache and skips retrieve, lexical and fuse; its ranking is the same either way.

Without a trained model (a zero-shot bundle) candidates come from dense and BM25 search and are ordered by the
zero-shot prior (`index.runtime.hybrid`): the same code path, with the prior as the score.

Each job ends in a typed outcome (`RankOutcome`, `RerankOutcome`); turning one into a response body is the routes'
business (service/routes.py), so nothing here knows the wire format.
"""

from __future__ import annotations

import dataclasses
import math
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np

from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel, retrieval_scores
from index.runtime.faiss_index import FaissIndex
from index.runtime.features import text_only_features
from index.runtime.hybrid import ZERO_SHOT_PRIOR, ZERO_SHOT_SOURCES, candidate_rows, evidence, ranker_evidence
from index.runtime.lru import LruCache
from index.runtime.text_encoder import TextEncoder
from service.batcher import Batched
from service.errors import RequestError
from service.metrics import Metrics
from service.protocol import DocumentRef, RankRequest, RerankRequest
from service.settings import Settings


@dataclass(frozen=True)
class Embedded:
    """A job's MiniLM embeddings, made before it reaches the ranking worker (`RankingEngine.embed`): the query's,
    and for /rerank the text documents' in `RerankJob.texts` order; `timing` is the encode stage's, in ms."""

    query: np.ndarray  # (text_dim,)
    documents: np.ndarray | None = None  # (T, text_dim)
    timing: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RankJob:
    """A validated /rank request."""

    query: str
    top_k: int
    num_candidates: int
    allowed: np.ndarray | None = None  # (N,) bool filter mask
    embedded: Embedded | None = None

    @property
    def size(self) -> int:
        return self.num_candidates


@dataclass(frozen=True)
class RerankJob:
    """A validated /rerank request: catalog rows for id documents, texts for the others."""

    query: str
    documents: list[str | DocumentRef]
    rows: np.ndarray  # (D,) catalog row per document (0 where the document is text)
    texts: dict[int, str]  # document index -> normalised text
    top_n: int
    return_documents: bool
    embedded: Embedded | None = None

    @property
    def size(self) -> int:
        return len(self.documents)


Job = RankJob | RerankJob
R = TypeVar("R")

# Outcomes hold their hits as parallel columns, best first, not as a record per hit: the routes zip them straight
# into the response body. A record per hit (even a NamedTuple) built first nearly doubled the time to write a
# 1000-document rerank answer here, and top_n defaults to every document.


@dataclass(frozen=True, slots=True)
class RankOutcome:
    """A served /rank job: the best `top_k` items, best first (hit i has rank i + 1), and the versions that ranked
    them."""

    ids: list[str]
    scores: list[float]  # the ranker's raw scores (zero-shot: the prior), descending
    titles: list[str]
    attributes: list[dict[str, Any]]
    model_version: str
    bundle_version: str
    timing: Mapping[str, float]  # ms per stage (service.metrics.STAGES; the caller adds total)


class RerankDocument(NamedTuple):
    """A reranked document as the caller may want it back: its text, and for a catalog id also the id and the
    item's attributes."""

    text: str
    id: str | None = None
    attributes: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RerankOutcome:
    """A served /rerank job: the best `top_n` documents, best first."""

    indices: list[int]  # positions in the request's documents
    scores: list[float]  # the ranker's raw scores (zero-shot: the prior), descending
    relevance: list[float]  # the ranker's scores through a logistic, in (0, 1): order-preserving, not calibrated
    documents: list[RerankDocument] | None  # None unless return_documents
    model_version: str
    timing: Mapping[str, float]  # as RankOutcome.timing


Outcome = RankOutcome | RerankOutcome


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


def normalize_query(text: str, max_chars: int, field_name: str = "query") -> str:
    """NFKC-normalise, drop control characters and collapse whitespace; refuse empty or over-long text."""
    if len(text) > max_chars:
        raise RequestError(field_name, f"is {len(text)} characters long; the limit is {max_chars}")
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    text = " ".join(text.split())
    if not text:
        raise RequestError(field_name, "must contain some text")
    return text


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class _Gathered(NamedTuple):
    """The ranker's candidate-side inputs for every candidate of a batch, in job order (fresh arrays: rerank text
    documents are written into them); kv and retrieval are None without a model."""

    kv: np.ndarray | None  # (M, 2, 3, dim)
    text: np.ndarray  # (M, text_dim)
    mask: np.ndarray  # (M, 3) image, text, attributes
    retrieval: np.ndarray | None  # (M, retrieval_dim)


@dataclass
class _Stages:
    """Wall time of each batch stage in ms; every job of the batch reports the batch's stage times."""

    ms: dict[str, float] = field(default_factory=dict)
    last: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        """Time since the last lap, added to `stage` (a stage may run in two pieces)."""
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self.last) * 1000.0
        self.last = now


class RankingEngine:
    """Serves ranking requests from one bundle, one exported model (query tower, candidate encoder and ranker
    graphs; None for zero-shot serving) and one text encoder."""

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
        self._codes = self._categorical_codes()
        # Cached queries skip the query tower too (the projection is this engine's model's, hence its own cache).
        self._projected: LruCache[str, np.ndarray] = LruCache(settings.query_cache_size)
        # And their candidates: rows and BM25 scores by (query, depth), read-only; the bundle's, hence per engine.
        self._candidates: LruCache[tuple[str, int], tuple[np.ndarray, np.ndarray]] = LruCache(
            settings.candidate_cache_size
        )

    @property
    def model_version(self) -> str:
        """The served model's version, or 'zero-shot' without one."""
        return self.model.version if self.model is not None else "zero-shot"

    @property
    def synthetic(self) -> bool:
        """Whether the served model was trained on synthetic data (False for zero-shot serving: nothing trained)."""
        return self.model is not None and bool(self.model.card.raw.get("dataset", {}).get("synthetic", False))

    @property
    def provider(self) -> str:
        """The execution provider the ranker runs on ('none' without a ranker)."""
        return self.model.providers[0] if self.model is not None else "none"

    # -- validation, on the event loop -------------------------------------------------------------------------

    def _categorical_codes(self) -> dict[str, np.ndarray]:
        """Per categorical field, the value index of every item (len(values) = missing), for vectorised filters."""
        codes, offset = {}, 0
        for cat in self.bundle.schema.categorical:
            codes[cat.name] = self.bundle.attrs[:, offset : offset + cat.width].argmax(axis=1).astype(np.int16)
            offset += cat.width
        return codes

    def _filter_mask(self, filters: dict[str, str | list[str]]) -> np.ndarray:
        mask = np.ones(self.bundle.size, dtype=bool)
        for name, wanted in filters.items():
            cat = self.bundle.schema.categorical_field(name)
            if cat is None:
                known = ", ".join(self.bundle.schema.categorical_field_names) or "none"
                raise RequestError(f"filters.{name}", f"unknown attribute; filterable attributes: {known}")
            values = [wanted] if isinstance(wanted, str) else wanted
            unknown = [v for v in values if v not in cat.values]
            if unknown or not values:
                known = ", ".join(cat.values)
                raise RequestError(f"filters.{name}", f"unknown value {unknown or values}; known: {known}")
            mask &= np.isin(self._codes[name], [cat.values.index(v) for v in values])
        return mask

    def prepare_rank(self, request: RankRequest) -> RankJob:
        """Check a /rank request against the settings' limits and the catalog; RequestError names what is wrong.
        The one place that checks top_k against num_candidates, because only here is the default known."""
        s = self.settings
        num_candidates = request.num_candidates or s.default_candidates
        if num_candidates > s.max_candidates:
            raise RequestError("num_candidates", f"is {num_candidates}; the limit is {s.max_candidates}")
        if request.top_k > s.max_top_k:
            raise RequestError("top_k", f"is {request.top_k}; the limit is {s.max_top_k}")
        if request.top_k > num_candidates:
            raise RequestError("top_k", f"({request.top_k}) must not exceed num_candidates ({num_candidates})")
        allowed = self._filter_mask(request.filters) if request.filters else None
        return RankJob(normalize_query(request.query, s.max_query_chars), request.top_k, num_candidates, allowed)

    def prepare_rerank(self, request: RerankRequest) -> RerankJob:
        """Check a /rerank request and resolve its documents: catalog rows for ids, normalised text for the rest."""
        s = self.settings
        if len(request.documents) > s.max_documents:
            raise RequestError("documents", f"has {len(request.documents)} entries; the limit is {s.max_documents}")
        query = normalize_query(request.query, s.max_query_chars)
        rows = np.zeros(len(request.documents), dtype=np.int64)
        texts: dict[int, str] = {}
        for i, doc in enumerate(request.documents):
            if isinstance(doc, str) or doc.text is not None:
                raw = doc if isinstance(doc, str) else doc.text
                texts[i] = normalize_query(raw or "", s.max_query_chars, f"documents[{i}]")
            elif doc.id not in self.bundle.row_of:
                raise RequestError(f"documents[{i}].id", f"unknown catalog id {doc.id!r}")
            else:
                rows[i] = self.bundle.row_of[doc.id]
        top_n = min(request.top_n or len(rows), len(rows))
        return RerankJob(query, request.documents, rows, texts, top_n, request.return_documents)

    # -- serving, on the batcher's worker thread ---------------------------------------------------------------

    def needs_encoding(self, job: Job) -> bool:
        """Whether `job` has text to run through MiniLM: a query not in the cache, or /rerank text documents."""
        return (isinstance(job, RerankJob) and bool(job.texts)) or self.encoder.cached(job.query) is None

    def embed(self, jobs: list[Job], idle: bool = False) -> list[Embedded]:
        """MiniLM embeddings for each job: its query (from the cache, or encoded and remembered; all misses in one
        query-encoder call) and its /rerank text documents (encoded, not cached, in one document-encoder call).
        `idle`: nothing else is running, so both encoders may use their idle sessions' threads."""
        queries = list(dict.fromkeys(job.query for job in jobs))
        found: dict[str, np.ndarray] = {}
        for text in queries:
            vector = self.encoder.cached(text)
            if vector is not None:
                found[text] = vector
        misses = [t for t in queries if t not in found]
        documents = [list(job.texts.values()) if isinstance(job, RerankJob) else [] for job in jobs]
        self.metrics.cache.labels("hit").inc(len(found))
        self.metrics.cache.labels("miss").inc(len(misses))
        if misses:  # a cached request on the ranking thread passes here too: no metric work for it
            self.metrics.query_encodes.labels(str(self.encoder.threads_for(idle))).inc(len(misses))
        found.update(zip(misses, self._encode_and_remember(misses, idle), strict=True))
        vectors = self._encode(self.document_encoder, [text for docs in documents for text in docs], idle)
        out, start = [], 0
        for job, docs in zip(jobs, documents, strict=True):
            out.append(Embedded(found[job.query], vectors[start : start + len(docs)] if docs else None))
            start += len(docs)
        return out

    def _encode_and_remember(self, queries: list[str], idle: bool = False) -> np.ndarray:
        """The query encoder's embeddings of `queries`, each put in the query cache."""
        vectors = self._encode(self.encoder, queries, idle)
        for query, vector in zip(queries, vectors, strict=True):
            self.encoder.remember(query, vector)
        return vectors

    @staticmethod
    def _encode(encoder: TextEncoder, texts: list[str], idle: bool = False) -> np.ndarray:
        return encoder.encode(texts, idle=idle) if texts else np.zeros((0, encoder.dim), np.float32)

    def encode_batch(self, batch: list[Batched[Job]], idle: bool = False) -> list[Embedded]:
        """`embed` for the encode stage's thread: each Embedded carries the stage's times (the job's wait for the
        thread, and the batch's encoding)."""
        started = time.perf_counter()
        made = self.embed([b.item for b in batch], idle)
        encode_ms = (time.perf_counter() - started) * 1000.0
        return [
            dataclasses.replace(e, timing={"encode_queue": b.queue_seconds * 1000.0, "encode": encode_ms})
            for b, e in zip(batch, made, strict=True)
        ]

    def _embedded(self, jobs: list[Job], stages: _Stages) -> tuple[list[Embedded], dict[str, np.ndarray]]:
        """Each job's embeddings (made here, in an `encode` lap, for jobs that come without them), and each
        distinct query in the retrieval space (the `project` lap: remembered like the embeddings, and one query-tower
        call for those not yet projected; none without a model)."""
        missing = [i for i, job in enumerate(jobs) if job.embedded is None]
        made = dict(zip(missing, self.embed([jobs[i] for i in missing]), strict=True)) if missing else {}
        embedded = [job.embedded or made[i] for i, job in enumerate(jobs)]
        stages.lap("encode")
        if self.model is None:
            return embedded, {}
        vectors = {job.query: e.query for job, e in zip(jobs, embedded, strict=True)}
        projected = {query: found for query in vectors if (found := self._projected.get(query)) is not None}
        new = [query for query in vectors if query not in projected]
        if new:
            for query, vector in zip(new, self.model.project_queries(np.stack([vectors[q] for q in new])), strict=True):
                self._projected.put(query, vector)
                projected[query] = vector
        return embedded, projected

    @staticmethod
    def _search(index: FaissIndex, jobs: list[Job], vectors: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
        """Ranked rows per rank job (by position) from one FAISS index; unfiltered jobs of equal depth share a call,
        a filtered one searches only its allowed rows."""
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

    def _retrieve(
        self, jobs: list[Job], vectors: dict[str, np.ndarray], projected: dict[str, np.ndarray], stages: _Stages
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Candidate rows per job and the BM25 score of each candidate: an unfiltered /rank job's from the candidate
        cache when its query and depth were served before, the others' found afresh (`_find_candidates`, which laps
        its stages even with nothing to find) and the unfiltered /rank ones remembered."""
        keys = [
            (job.query, job.num_candidates) if isinstance(job, RankJob) and job.allowed is None else None
            for job in jobs
        ]
        cached = [self._candidates.get(key) if key is not None else None for key in keys]
        fresh = [i for i, hit in enumerate(cached) if hit is None]
        rows, bm25 = self._find_candidates([jobs[i] for i in fresh], vectors, projected, stages)
        found = dict(zip(fresh, zip(rows, bm25, strict=True), strict=True))
        for i, (job_rows, job_bm25) in found.items():
            if (key := keys[i]) is not None:
                job_rows.flags.writeable = job_bm25.flags.writeable = False  # every later hit shares them
                self._candidates.put(key, (job_rows, job_bm25))
        self.metrics.candidate_cache.labels("hit").inc(len(jobs) - len(fresh))
        self.metrics.candidate_cache.labels("miss").inc(sum(keys[i] is not None for i in fresh))
        both = [hit if hit is not None else found[i] for i, hit in enumerate(cached)]
        return [job_rows for job_rows, _ in both], [job_bm25 for _, job_bm25 in both]

    def _find_candidates(
        self, jobs: list[Job], vectors: dict[str, np.ndarray], projected: dict[str, np.ndarray], stages: _Stages
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Candidate rows per job (rerank jobs bring their own; rank jobs fuse the engine's sources) and the BM25
        score of each candidate (0 for a rerank text document: `_gather` scores those). Laps "retrieve", "lexical"
        (BM25: whole-catalog scores when BM25 is a source, then the candidates' own) and "fuse"."""
        b = self.bundle
        ranked: dict[str, dict[int, np.ndarray]] = {}
        if "dense" in self.sources:
            ranked["dense"] = self._search(b.dense, jobs, vectors)
        if "learned" in self.sources and b.retriever is not None:
            ranked["learned"] = self._search(b.retriever, jobs, projected)
        stages.lap("retrieve")
        # Whole-catalog BM25 scores only when BM25 finds candidates; otherwise only the candidates' (below).
        lexical = {}
        if "bm25" in self.sources:
            lexical = {query: b.lexical.scores(query) for query in dict.fromkeys(job.query for job in jobs)}
            ranked["bm25"] = {
                i: b.lexical.top(lexical[job.query], job.num_candidates, job.allowed)[1]
                for i, job in enumerate(jobs)
                if isinstance(job, RankJob)
            }
        stages.lap("lexical")
        rows = []
        for i, job in enumerate(jobs):
            if isinstance(job, RerankJob):
                rows.append(job.rows)
            else:
                lists = {name: found[i] for name, found in ranked.items() if i in found}
                fused = candidate_rows(lists, self.sources, job.num_candidates)
                if len(fused) < job.num_candidates and "dense" not in lists:
                    # Too few (only BM25 can find fewer than asked): fill from dense search, as training does.
                    lists["dense"] = self._search(b.dense, [job], vectors).get(0, np.zeros(0, np.int64))
                    fused = candidate_rows(lists, self.sources, job.num_candidates)
                rows.append(fused)
        stages.lap("fuse")
        bm25 = [
            lexical[job.query][job_rows] if job.query in lexical else b.lexical.scores_at(job.query, job_rows)
            for job, job_rows in zip(jobs, rows, strict=True)
        ]
        stages.lap("lexical")
        return rows, bm25

    def _gather(
        self, jobs: list[Job], embedded: list[Embedded], rows: list[np.ndarray], bm25: list[np.ndarray]
    ) -> _Gathered:
        """cand_kv, text, modality mask and retrieval vectors for every candidate of every job, concatenated in job
        order; rerank documents given as text go through the candidate encoder here, as `text_only_features` makes
        them from their MiniLM embeddings (the text present, the image and the attributes masked), and get their
        BM25 scores (in `bm25`)."""
        flat = np.concatenate(rows)
        b = self.bundle
        kv = b.cand_kv[flat] if b.cand_kv is not None else None
        retrieval = b.retrieval[flat] if b.retrieval is not None else None
        gathered = _Gathered(kv, b.text[flat], b.mask[flat], retrieval)
        start = 0
        for job, job_embedded, job_rows, job_bm25 in zip(jobs, embedded, rows, bm25, strict=True):
            if isinstance(job, RerankJob) and job.texts and job_embedded.documents is not None:
                order = list(job.texts)
                texts = [job.texts[i] for i in order]
                docs = text_only_features(job_embedded.documents, b.schema)
                at = [start + i for i in order]
                gathered.text[at], gathered.mask[at] = docs.text, docs.mask
                job_bm25[order] = b.lexical.score_texts(job.query, texts)
                if self.model is not None and gathered.kv is not None and gathered.retrieval is not None:
                    encoded = self.model.encode_candidates(docs.text, docs.image, docs.attrs, docs.mask)
                    gathered.kv[at], gathered.retrieval[at] = encoded.kv, encoded.retrieval
            start += len(job_rows)
        return gathered

    def process_batch(self, batch: list[Batched[Job]]) -> list[Outcome | Exception]:
        """Serve a batch of jobs; returns one outcome (timing without 'total') per job, in order."""
        jobs = [b.item for b in batch]
        stages = _Stages()
        embedded, projected = self._embedded(jobs, stages)
        stages.lap("project")
        vectors = {job.query: e.query for job, e in zip(jobs, embedded, strict=True)}
        rows, bm25 = self._retrieve(jobs, vectors, projected, stages)
        cand = self._gather(jobs, embedded, rows, bm25)
        queries = np.stack([e.query for e in embedded])
        lengths = [len(r) for r in rows]
        query_index = np.repeat(np.arange(len(jobs)), lengths)
        dense = np.einsum("md,md->m", cand.text, queries[query_index])
        found = evidence(dense, np.concatenate(bm25), lengths)
        if self.model is None or cand.kv is None or cand.retrieval is None:
            scores = found.prior(self.prior)  # zero-shot: the prior is the score
            stages.lap("gather")
        else:
            query_vectors = np.stack([projected[job.query] for job in jobs])
            retrieval_score = retrieval_scores(query_vectors, cand.retrieval, query_index)
            ranker_inputs = (cand.kv, cand.text, cand.mask, retrieval_score, ranker_evidence(found, self.prior))
            stages.lap("gather")
            scores = self.model.score(queries, *ranker_inputs, query_index) if len(query_index) else dense
        stages.lap("rank")
        self.metrics.batch_size.observe(len(query_index))
        self.metrics.batch_requests.observe(len(jobs))

        out: list[Outcome | Exception] = []
        start = 0
        for b, job, job_embedded, job_rows in zip(batch, jobs, embedded, rows, strict=True):
            job_scores = np.asarray(scores[start : start + len(job_rows)], dtype=np.float32)
            start += len(job_rows)
            self.metrics.candidates.observe(len(job_rows))
            # A job embedded on the encode stage reports that stage's times, not the (then empty) encode lap here.
            timing = {"encode_queue": 0.0, "queue": b.queue_seconds * 1000.0, **stages.ms, **job_embedded.timing}
            if isinstance(job, RankJob):
                out.append(self._rank_outcome(job, job_rows, job_scores, timing))
            else:
                out.append(self._rerank_outcome(job, job_scores, timing))
        return out

    def _rank_outcome(
        self, job: RankJob, rows: np.ndarray, scores: np.ndarray, timing: dict[str, float]
    ) -> RankOutcome:
        top = np.argsort(-scores, kind="stable")[: job.top_k]
        b = self.bundle
        picked = rows[top].tolist()
        return RankOutcome(
            ids=[b.ids[r] for r in picked],
            scores=scores[top].tolist(),
            titles=[b.titles[r] for r in picked],
            attributes=[b.attributes[r] for r in picked],
            model_version=self.model_version,
            bundle_version=b.version,
            timing=timing,
        )

    def _rerank_outcome(self, job: RerankJob, scores: np.ndarray, timing: dict[str, float]) -> RerankOutcome:
        top = np.argsort(-scores, kind="stable")[: job.top_n]
        indices, raw = top.tolist(), scores[top].tolist()
        return RerankOutcome(
            indices=indices,
            scores=raw,
            relevance=[_sigmoid(score) for score in raw],
            documents=[self._document(job.documents[t]) for t in indices] if job.return_documents else None,
            model_version=self.model_version,
            timing=timing,
        )

    def _document(self, doc: str | DocumentRef) -> RerankDocument:
        """The document as given (its text, un-normalised), or for a catalog id the item's title and attributes."""
        if isinstance(doc, str):
            return RerankDocument(doc)
        if doc.text is not None:
            return RerankDocument(doc.text)
        row = self.bundle.row_of[doc.id or ""]
        return RerankDocument(self.bundle.titles[row], doc.id, self.bundle.attributes[row])

    def serve_one(self, job: Job) -> Outcome:
        """The unbatched path: a batch of one, on the caller's thread."""
        result = self.process_batch([Batched(job, 0.0)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def prefill(self, texts: Sequence[str], room: int) -> tuple[int, int]:
        """Embed the first `room` of `texts` not yet cached into the query cache, normalised as requests are; texts
        that are no valid query are skipped. Returns (embedded, skipped as invalid)."""
        fresh: dict[str, None] = {}  # ordered and de-duplicated
        invalid = 0
        for text in texts:
            try:
                query = normalize_query(text, self.settings.max_query_chars)
            except RequestError:
                invalid += 1
                continue
            if self.encoder.cached(query) is None:
                fresh[query] = None
        new = list(fresh)[:room]
        self._encode_and_remember(new)
        return len(new), invalid

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
