"""The gather and rank stages: every candidate's ranker inputs gathered from the bundle (rerank text documents are
encoded here, as the catalog's items were at index time), the zero-shot evidence of each candidate list, then ONE
ranker call for every candidate of the batch; without a model the prior is the score.

Laps "gather" and "rank" on the batch's `StageTimer`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel, retrieval_scores
from index.runtime.features import text_only_features
from index.runtime.hybrid import evidence, ranker_evidence
from service.jobs import Embedded, Job, RerankJob
from service.timing import StageTimer


class Gathered(NamedTuple):
    """The ranker's candidate-side inputs for every candidate of a batch, in job order (fresh arrays: rerank text
    documents are written into them); kv and retrieval are None without a model."""

    kv: np.ndarray | None  # (M, 2, 3, dim)
    text: np.ndarray  # (M, text_dim)
    mask: np.ndarray  # (M, 3) image, text, attributes
    retrieval: np.ndarray | None  # (M, retrieval_dim)


class Scorer:
    """Scores a batch's candidates with one bundle's features and one model (None: zero-shot, the prior)."""

    def __init__(self, bundle: Bundle, model: ExportedModel | None) -> None:
        self.bundle, self.model = bundle, model

    def gather(
        self, jobs: list[Job], embedded: list[Embedded], rows: list[np.ndarray], bm25: list[np.ndarray]
    ) -> Gathered:
        """cand_kv, text, modality mask and retrieval vectors for every candidate of every job, concatenated in job
        order; rerank documents given as text go through the candidate encoder here, as `text_only_features` makes
        them from their MiniLM embeddings (the text present, the image and the attributes masked), and get their
        BM25 scores (written into `bm25`)."""
        flat = np.concatenate(rows)
        b = self.bundle
        kv = b.cand_kv[flat] if b.cand_kv is not None else None
        retrieval = b.retrieval[flat] if b.retrieval is not None else None
        gathered = Gathered(kv, b.text[flat], b.mask[flat], retrieval)
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

    def score(
        self,
        jobs: list[Job],
        embedded: list[Embedded],
        projected: dict[str, np.ndarray],
        rows: list[np.ndarray],
        bm25: list[np.ndarray],
        prior: str,
        stages: StageTimer,
    ) -> np.ndarray:
        """Scores (M,) of every candidate of every job, concatenated in job order: the ranker's over the gathered
        inputs and the evidence with `prior` as the prior, or without a model the prior itself."""
        cand = self.gather(jobs, embedded, rows, bm25)
        queries = np.stack([e.query for e in embedded])
        lengths = [len(r) for r in rows]
        query_index = np.repeat(np.arange(len(jobs)), lengths)
        dense = np.einsum("md,md->m", cand.text, queries[query_index])
        found = evidence(dense, np.concatenate(bm25), lengths)
        if self.model is None or cand.kv is None or cand.retrieval is None:
            scores = found.prior(prior)  # zero-shot: the prior is the score
            stages.lap("gather")
        else:
            query_vectors = np.stack([projected[job.query] for job in jobs])
            retrieval_score = retrieval_scores(query_vectors, cand.retrieval, query_index)
            ranker_inputs = (cand.kv, cand.text, cand.mask, retrieval_score, ranker_evidence(found, prior))
            stages.lap("gather")
            scores = self.model.score(queries, *ranker_inputs, query_index) if len(query_index) else dense
        stages.lap("rank")
        return scores
