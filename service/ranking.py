"""The request path: query encoding -> candidate retrieval -> feature gather -> ONNX ranker -> top-k.

`RankingEngine` owns the loaded artifacts (bundle, ranker, text encoder) and does the work of `/rank` and
`/rerank`; the HTTP layer only parses, calls and serialises. Bad input raises `RequestError` naming the field.
"""

from __future__ import annotations

import math
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index.bundle import Bundle
from index.ranker_runtime import OnnxRanker
from index.text_encoder import TextEncoder
from service.metrics import Metrics
from service.protocol import DocumentRef, RankRequest, RerankRequest
from service.settings import Settings


class RequestError(ValueError):
    """A request that cannot be served as asked; `field` names the offending part of the body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class StageTimer:
    """Wall time per request stage, in milliseconds."""

    started: float = field(default_factory=time.perf_counter)
    last: float = 0.0
    ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.last = self.started

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = (now - self.last) * 1000.0
        self.last = now

    def finish(self) -> dict[str, float]:
        self.ms["total"] = (time.perf_counter() - self.started) * 1000.0
        return {k: round(v, 4) for k, v in self.ms.items()}


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


class RankingEngine:
    """Serves ranking requests from one bundle + one ranker + one text encoder."""

    def __init__(
        self, bundle: Bundle, ranker: OnnxRanker, encoder: TextEncoder, settings: Settings, metrics: Metrics
    ) -> None:
        bundle.check_compatible(ranker.card)
        self.bundle, self.ranker, self.encoder = bundle, ranker, encoder
        self.settings, self.metrics = settings, metrics
        self._codes = self._categorical_codes()
        schema = bundle.schema
        # What a text-only rerank document looks like on the image/attribute side: no image, nothing known.
        self._no_image = np.zeros((1, schema.image_dim), dtype=np.float32)
        self._no_attrs = schema.encode_attributes([{}])

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
                raise RequestError(
                    f"filters.{name}", f"unknown value {unknown or values}; known: {', '.join(cat.values)}"
                )
            mask &= np.isin(self._codes[name], [cat.values.index(v) for v in values])
        return mask

    def _encode(self, text: str) -> np.ndarray:
        before = self.encoder.cache_hits
        vector = self.encoder.encode_query(text)
        self.metrics.cache.labels("hit" if self.encoder.cache_hits > before else "miss").inc()
        return vector

    def rank(self, request: RankRequest) -> dict[str, Any]:
        s = self.settings
        num_candidates = request.num_candidates or s.default_candidates
        if num_candidates > s.max_candidates:
            raise RequestError("num_candidates", f"is {num_candidates}; the limit is {s.max_candidates}")
        if request.top_k > s.max_top_k:
            raise RequestError("top_k", f"is {request.top_k}; the limit is {s.max_top_k}")
        if request.top_k > num_candidates:
            raise RequestError("top_k", f"({request.top_k}) must not exceed num_candidates ({num_candidates})")
        allowed = self._filter_mask(request.filters) if request.filters else None
        text = normalize_query(request.query, s.max_query_chars)

        timer = StageTimer()
        query = self._encode(text)[None, :]  # (1, text_dim)
        timer.lap("encode")
        _, rows = self.bundle.retriever.search(query, num_candidates, allowed=allowed)
        rows = rows[0][rows[0] >= 0]
        timer.lap("retrieve")
        cand_kv, cand_text = self.bundle.cand_kv[rows], self.bundle.text[rows]
        timer.lap("gather")
        scores = (
            self.ranker.score(query, cand_kv, cand_text, np.zeros(len(rows), dtype=np.int64))
            if len(rows)
            else np.zeros(0, np.float32)
        )
        timer.lap("rank")
        top = np.argsort(-scores, kind="stable")[: request.top_k]
        b = self.bundle
        results = [
            {
                "id": b.ids[r],
                "score": float(scores[t]),
                "rank": i + 1,
                "title": b.titles[r],
                "attributes": b.attributes[r],
            }
            for i, (t, r) in enumerate(zip(top, rows[top].tolist()))
        ]
        timing = timer.finish()
        self._observe("/rank", timing, len(rows))
        return {
            "results": results,
            "model_version": self.ranker.version,
            "bundle_version": b.version,
            "timing_ms": timing,
        }

    def rerank(self, request: RerankRequest) -> dict[str, Any]:
        s = self.settings
        if len(request.documents) > s.max_documents:
            raise RequestError("documents", f"has {len(request.documents)} entries; the limit is {s.max_documents}")
        text = normalize_query(request.query, s.max_query_chars)
        timer = StageTimer()
        query = self._encode(text)[None, :]
        timer.lap("encode")
        cand_kv, cand_text = self._document_features(request.documents)
        timer.lap("gather")
        scores = self.ranker.score(query, cand_kv, cand_text, np.zeros(len(cand_kv), dtype=np.int64))
        timer.lap("rank")
        top = np.argsort(-scores, kind="stable")[: request.top_n or len(scores)]
        results = []
        for t in top.tolist():
            result: dict[str, Any] = {"index": t, "relevance_score": _sigmoid(float(scores[t]))}
            if request.return_documents:
                result["document"] = self._document_body(request.documents[t])
            results.append(result)
        timing = timer.finish()
        self._observe("/rerank", timing, len(scores))
        return {
            "id": str(uuid.uuid4()),
            "results": results,
            "model": f"fusion-ranker-{self.ranker.version}",
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}, "timing_ms": timing},
        }

    def _document_features(self, documents: list[str | DocumentRef]) -> tuple[np.ndarray, np.ndarray]:
        """cand_kv and text rows for rerank documents: stored rows for ids, on-the-fly encoding for text."""
        b = self.bundle
        rows = np.zeros(len(documents), dtype=np.int64)
        texts: dict[int, str] = {}
        for i, doc in enumerate(documents):
            if isinstance(doc, str) or doc.text is not None:
                raw = doc if isinstance(doc, str) else doc.text
                texts[i] = normalize_query(raw or "", self.settings.max_query_chars, f"documents[{i}]")
            elif doc.id not in b.row_of:
                raise RequestError(f"documents[{i}].id", f"unknown catalog id {doc.id!r}")
            else:
                rows[i] = b.row_of[doc.id]
        cand_kv, cand_text = b.cand_kv[rows], b.text[rows]
        if texts:
            order = list(texts)
            emb = self.encoder.encode([texts[i] for i in order])
            n = len(order)
            kv = self.ranker.encode_candidates(emb, np.repeat(self._no_image, n, 0), np.repeat(self._no_attrs, n, 0))
            cand_kv[order], cand_text[order] = kv, emb
        return cand_kv, cand_text

    def _document_body(self, doc: str | DocumentRef) -> dict[str, Any]:
        if isinstance(doc, str):
            return {"text": doc}
        if doc.text is not None:
            return {"text": doc.text}
        row = self.bundle.row_of[doc.id or ""]
        return {"id": doc.id, "text": self.bundle.titles[row], "attributes": self.bundle.attributes[row]}

    def _observe(self, route: str, timing: dict[str, float], candidates: int) -> None:
        for stage, ms in timing.items():
            self.metrics.stage_seconds.labels(route, stage).observe(ms / 1000.0)
        self.metrics.candidates.observe(candidates)

    def warm(self, queries: int) -> None:
        """Run the whole path a few times so first requests do not pay for lazy initialisation."""
        for i in range(queries):
            self.rank(RankRequest(query=f"warm-up query {i} {self.bundle.titles[i % self.bundle.size]}", top_k=1))
        self.rerank(RerankRequest(query="warm-up", documents=["warm-up document", DocumentRef(id=self.bundle.ids[0])]))
