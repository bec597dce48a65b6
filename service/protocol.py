"""Request and response models of the HTTP API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

FilterValue = StrictStr | list[StrictStr]


class RankRequest(BaseModel):
    """POST /rank: a query in, the best `top_k` catalog items out."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr = Field(description="Free-text query; constraints are stated in words.")
    top_k: StrictInt = Field(10, ge=1, description="How many results to return.")
    num_candidates: StrictInt | None = Field(
        None, ge=1, description="How many candidates the retriever hands to the ranker (default from settings)."
    )
    filters: dict[StrictStr, FilterValue] | None = Field(
        None, description="Hard attribute filters, {attribute: value or [values]}; items must match all."
    )
    timeout_ms: StrictInt | None = Field(
        None, ge=1, le=60_000, description="Deadline; a request still queued when it passes is answered 504."
    )

    @model_validator(mode="after")
    def _top_k_within_candidates(self) -> RankRequest:
        if self.num_candidates is not None and self.top_k > self.num_candidates:
            raise ValueError(f"top_k ({self.top_k}) must not exceed num_candidates ({self.num_candidates})")
        return self


class RankedItem(BaseModel):
    id: str
    score: float
    rank: int
    title: str
    attributes: dict[str, Any]


class RankResponse(BaseModel):
    results: list[RankedItem]
    model_version: str
    bundle_version: str
    timing_ms: dict[str, float]


class DocumentRef(BaseModel):
    """A rerank document given as a catalog id (stored features are used) or as text (encoded on the fly)."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = None
    text: StrictStr | None = None

    @model_validator(mode="after")
    def _one_of(self) -> DocumentRef:
        if (self.id is None) == (self.text is None):
            raise ValueError("a document object needs exactly one of 'id' or 'text'")
        return self


class RerankRequest(BaseModel):
    """POST /rerank, in the shape Cohere and Jina rerank clients send."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    documents: list[StrictStr | DocumentRef] = Field(min_length=1)
    top_n: StrictInt | None = Field(None, ge=1, description="Return the best top_n; all documents when absent.")
    return_documents: bool = False
    model: StrictStr | None = Field(None, description="Accepted for client compatibility; the served model answers.")
    timeout_ms: StrictInt | None = Field(
        None, ge=1, le=60_000, description="Deadline; a request still queued when it passes is answered 504."
    )


class RerankResult(BaseModel):
    index: int
    relevance_score: float = Field(description="Ranker score through a logistic: order-preserving, not calibrated.")
    document: dict[str, Any] | None = None


class RerankResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    results: list[RerankResult]
    model: str
    meta: dict[str, Any]
