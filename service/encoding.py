"""The encode stage: MiniLM embeddings for a batch of jobs. Distinct queries are looked up in the query cache and
the misses encoded in one query-encoder call (and remembered); /rerank text documents are encoded, never cached, in
one document-encoder call. Runs on the encode stage's thread, or inline on the ranking thread for jobs that come
without embeddings.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from index.runtime.text_encoder import TextEncoder
from service.batcher import Batched
from service.errors import RequestError
from service.jobs import Embedded, Job, RerankJob, normalize_query
from service.metrics import Metrics


def _encode(encoder: TextEncoder, texts: list[str], idle: bool = False) -> np.ndarray:
    return encoder.encode(texts, idle=idle) if texts else np.zeros((0, encoder.dim), np.float32)


class Embedder:
    """Embeds jobs' texts with the query `encoder` (whose LRU cache holds query embeddings) and the
    `document_encoder` (the graph the index build embeds catalog texts with), counting cache hits and misses."""

    def __init__(self, encoder: TextEncoder, document_encoder: TextEncoder, metrics: Metrics) -> None:
        self.encoder, self.document_encoder, self.metrics = encoder, document_encoder, metrics

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
        vectors = _encode(self.document_encoder, [text for docs in documents for text in docs], idle)
        out, start = [], 0
        for job, docs in zip(jobs, documents, strict=True):
            out.append(Embedded(found[job.query], vectors[start : start + len(docs)] if docs else None))
            start += len(docs)
        return out

    def _encode_and_remember(self, queries: list[str], idle: bool = False) -> np.ndarray:
        """The query encoder's embeddings of `queries`, each put in the query cache."""
        vectors = _encode(self.encoder, queries, idle)
        for query, vector in zip(queries, vectors, strict=True):
            self.encoder.remember(query, vector)
        return vectors

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

    def prefill(self, texts: Sequence[str], room: int, max_chars: int) -> tuple[int, int]:
        """Embed the first `room` of `texts` not yet cached into the query cache, normalised as requests are (at
        most `max_chars` long); texts that are no valid query are skipped. Returns (embedded, skipped as invalid)."""
        fresh: dict[str, None] = {}  # ordered and de-duplicated
        invalid = 0
        for text in texts:
            try:
                query = normalize_query(text, max_chars)
            except RequestError:
                invalid += 1
                continue
            if self.encoder.cached(query) is None:
                fresh[query] = None
        new = list(fresh)[:room]
        self._encode_and_remember(new)
        return len(new), invalid
