"""The gather and rank stages: a batch's candidate lists laid out for the scoring graph
(`index.runtime.scoring_graph`), /rerank documents given as text encoded as the catalog's items were at index time,
then ONE graph run that gathers the candidates' features, computes their zero-shot evidence and scores them with the
ranker (without a model, the prior is the score).

Laps "gather" (the layout and the text documents) and "rank" (the graph run) on the batch's `StageTimer`.
"""

from __future__ import annotations

import numpy as np

from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel
from index.runtime.features import text_only_features
from index.runtime.scoring_graph import PER_POSITION, Extras, ScoringGraph
from service.jobs import Embedded, Job, RerankJob
from service.timing import StageTimer


class Scorer:
    """Scores a batch's candidates with one bundle's features and one model (None: zero-shot, the prior)."""

    def __init__(self, bundle: Bundle, model: ExportedModel | None, threads: int = 1) -> None:
        self.bundle, self.model = bundle, model
        self.graph = ScoringGraph(bundle, model, threads)

    def extras(self, jobs: list[Job], embedded: list[Embedded], length: int, bm25: list[np.ndarray]) -> Extras | None:
        """The rows of /rerank documents given as text, at their places in the (jobs, `length`) layout: made by
        `text_only_features` from their MiniLM embeddings (the text present, the image and the attributes masked)
        and the candidate encoder, as the catalog's were. Their BM25 scores are written into `bm25`. None when the
        batch has no text documents."""
        b = self.bundle
        at: list[np.ndarray] = []
        parts: dict[str, list[np.ndarray]] = {}
        for i, (job, job_embedded, job_bm25) in enumerate(zip(jobs, embedded, bm25, strict=True)):
            if not (isinstance(job, RerankJob) and job.texts and job_embedded.documents is not None):
                continue
            order = list(job.texts)
            job_bm25[order] = b.lexical.score_texts(job.query, [job.texts[d] for d in order])
            docs = text_only_features(job_embedded.documents, b.schema)
            rows = {"text": docs.text, "mask": docs.mask}
            if self.model is not None:
                encoded = self.model.encode_candidates(docs.text, docs.image, docs.attrs, docs.mask)
                rows.update(kv=encoded.kv, retrieval=encoded.retrieval)
            at.append(i * length + np.asarray(order, dtype=np.int64))
            for name, values in rows.items():
                parts.setdefault(name, []).append(np.asarray(values, dtype=np.float32))
        if not at:
            return None
        return Extras(np.concatenate(at), {name: np.concatenate(values) for name, values in parts.items()})

    def score(
        self,
        jobs: list[Job],
        embedded: list[Embedded],
        projected: dict[str, np.ndarray],
        rows: list[np.ndarray],
        bm25: list[np.ndarray],
        prior: str,
        stages: StageTimer,
        explain: bool = False,
    ) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        """Scores (M,) of every candidate of every job, concatenated in job order: the ranker's with `prior` as the
        prior, or without a model the prior itself. Each job's list is one row of the graph's (B, L) layout. With
        `explain`, from the explained graph, also the parts of each score (`explain_*`, (M, ...) in the same order);
        else None."""
        lengths = [len(r) for r in rows]
        length = max(lengths, default=0)
        if length == 0:
            stages.lap("gather")
            stages.lap("rank")
            return np.zeros(0, np.float32), ({} if explain else None)
        extras = self.extras(jobs, embedded, length, bm25)
        valid = np.arange(length) < np.asarray(lengths)[:, None]
        table_rows = np.zeros((len(jobs), length), np.int64)
        table_rows[valid] = np.concatenate(rows)
        scores_bm25 = np.zeros((len(jobs), length), np.float32)
        scores_bm25[valid] = np.concatenate(bm25)
        queries = np.stack([e.query for e in embedded]).astype(np.float32, copy=False)
        vectors = np.stack([projected[job.query] for job in jobs]) if self.model is not None else None
        stages.lap("gather")
        if not explain:
            scores = self.graph.run(prior, queries, vectors, table_rows, valid, scores_bm25, extras)
            stages.lap("rank")
            return scores[valid], None
        outputs = self.graph.outputs(prior, queries, vectors, table_rows, valid, scores_bm25, extras, explain=True)
        stages.lap("rank")
        # The evidence outputs are (B, L); the ranker's and the mask are per flat position b * L + j.
        flat = valid.reshape(-1)
        parts = {
            name: value[flat] if name in PER_POSITION else value[valid]
            for name, value in outputs.items()
            if name != "scores"
        }
        return outputs["scores"][valid], parts
