"""What a request becomes once validated: a job (`RankJob`, `RerankJob`), with the MiniLM embeddings made for it
(`Embedded`), and the validation that makes one (`JobValidator`, `normalize_query`).

Requests are validated on the event loop, against the settings' limits and the catalog of the engine that will
serve them; a RequestError names the field that is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from index.runtime.bundle import Bundle
from index.runtime.query_text import normalize_text
from service.errors import RequestError
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
    explain: bool = False  # the request asked why each hit ranks where it does
    filters: Mapping[str, list[str]] | None = None  # the filters `allowed` was made from, for explanations

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
    explain: bool = False

    @property
    def size(self) -> int:
        return len(self.documents)


Job = RankJob | RerankJob


def normalize_query(text: str, max_chars: int, field_name: str = "query") -> str:
    """NFKC-normalise, drop control characters and collapse whitespace; refuse empty or over-long text."""
    if len(text) > max_chars:
        raise RequestError(field_name, f"is {len(text)} characters long; the limit is {max_chars}")
    text = normalize_text(text)
    if not text:
        raise RequestError(field_name, "must contain some text")
    return text


class JobValidator:
    """Turns requests into jobs for one bundle's catalog under the settings' limits (filters become row masks)."""

    def __init__(self, bundle: Bundle, settings: Settings) -> None:
        self.bundle, self.settings = bundle, settings
        self._codes = self._categorical_codes()

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
        filters = {k: [v] if isinstance(v, str) else list(v) for k, v in (request.filters or {}).items()}
        query = normalize_query(request.query, s.max_query_chars)
        return RankJob(query, request.top_k, num_candidates, allowed, explain=request.explain, filters=filters or None)

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
        return RerankJob(
            query, request.documents, rows, texts, top_n, request.return_documents, explain=request.explain
        )
