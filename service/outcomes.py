"""What a served job ends in: a typed outcome (`RankOutcome`, `RerankOutcome`) made from the job's scores by
`rank_outcome` and `rerank_outcome`. Turning one into a response body is the routes' business (service/routes.py),
so nothing here knows the wire format.

Outcomes hold their hits as parallel columns, best first, not as a record per hit: the routes zip them straight
into the response body. A record per hit (even a NamedTuple) built first nearly doubled the time to write a
1000-document rerank answer here, and top_n defaults to every document.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from index.runtime.bundle import Bundle
from service.explain import Details, explanation
from service.jobs import RankJob, RerankJob
from service.protocol import DocumentRef


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
    batch_jobs: int = 1  # jobs in the micro-batch that served it
    explanations: list[dict[str, Any]] | None = None  # per hit, with explain (service/explain.py)


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
    batch_jobs: int = 1  # as RankOutcome.batch_jobs
    explanations: list[dict[str, Any]] | None = None  # as RankOutcome.explanations


Outcome = RankOutcome | RerankOutcome


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def rank_outcome(
    bundle: Bundle,
    model_version: str,
    job: RankJob,
    rows: np.ndarray,
    scores: np.ndarray,
    timing: dict[str, float],
    batch_jobs: int = 1,
    details: Details | None = None,
) -> RankOutcome:
    """The best `job.top_k` of the candidate `rows` by `scores` (ties in candidate order), with their items (and
    with `details`, their explanations)."""
    top = np.argsort(-scores, kind="stable")[: job.top_k]
    picked = rows[top].tolist()
    explained = None
    if details is not None:
        explained = [explanation(details, int(t), row, job.filters) for t, row in zip(top, picked, strict=True)]
    return RankOutcome(
        ids=[bundle.ids[r] for r in picked],
        scores=scores[top].tolist(),
        titles=[bundle.titles[r] for r in picked],
        attributes=[bundle.attributes[r] for r in picked],
        model_version=model_version,
        bundle_version=bundle.version,
        timing=timing,
        batch_jobs=batch_jobs,
        explanations=explained,
    )


def rerank_outcome(
    bundle: Bundle,
    model_version: str,
    job: RerankJob,
    scores: np.ndarray,
    timing: dict[str, float],
    batch_jobs: int = 1,
    details: Details | None = None,
) -> RerankOutcome:
    """The best `job.top_n` of the job's documents by `scores` (ties in request order), with the documents
    themselves when the request asked for them back (and with `details`, their explanations)."""
    top = np.argsort(-scores, kind="stable")[: job.top_n]
    indices, raw = top.tolist(), scores[top].tolist()
    explained = None
    if details is not None:
        explained = [explanation(details, t, None if t in job.texts else int(job.rows[t]), None) for t in indices]
    return RerankOutcome(
        indices=indices,
        scores=raw,
        relevance=[_sigmoid(score) for score in raw],
        documents=[_document(bundle, job.documents[t]) for t in indices] if job.return_documents else None,
        model_version=model_version,
        timing=timing,
        batch_jobs=batch_jobs,
        explanations=explained,
    )


def _document(bundle: Bundle, doc: str | DocumentRef) -> RerankDocument:
    """The document as given (its text, un-normalised), or for a catalog id the item's title and attributes."""
    if isinstance(doc, str):
        return RerankDocument(doc)
    if doc.text is not None:
        return RerankDocument(doc.text)
    row = bundle.row_of[doc.id or ""]
    return RerankDocument(bundle.titles[row], doc.id, bundle.attributes[row])
