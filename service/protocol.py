"""The wire format of the HTTP API: request models (pydantic, validated), response shapes, and the JSON response
class that writes them. The OpenAPI schema is generated from these.

Requests are pydantic models because they must be validated. Responses are `TypedDict`s: the service only writes
them, so there is nothing to validate; mypy checks every place that builds one, pydantic still generates their
OpenAPI schema, and orjson writes them as plain dicts. Measured on the 2-core machine, building and writing a /rank
body of 10 hits takes 5 us this way against 38 us as validated pydantic models written with `model_dump_json`
(44 us against 320 us for 100 hits), on a request that takes about 1 ms in all.
"""

from __future__ import annotations

from pathlib import Path
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,  # pydantic needs typing_extensions' TypedDict on Python 3.11
)

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator
from typing_extensions import TypedDict

FilterValue = StrictStr | list[StrictStr]
# Tags of the request shapes one route tells apart by their fields (service.rerank_apis.RerankBody); pydantic puts
# the tag in a validation error's location, and the error handler leaves it out of the field it names.
SHAPE_TAGS = frozenset({"native", "tei"})


class JSONBytes(Response):
    """A JSON response written by orjson (dicts, lists and the TypedDicts below)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


# -- requests ----------------------------------------------------------------------------------------------------


class RankRequest(BaseModel):
    """POST /rank: a query in, the best `top_k` catalog items out."""

    # Only what holds for every deployment is checked here. Limits that depend on settings (max_top_k,
    # max_candidates, and top_k <= num_candidates, whose default is a setting) are the engine's, in one place.
    model_config = ConfigDict(extra="forbid")

    query: StrictStr = Field(description="Free-text query; constraints are stated in words.")
    top_k: StrictInt = Field(10, ge=1, description="How many results to return; at most num_candidates.")
    num_candidates: StrictInt | None = Field(
        None, ge=1, description="How many candidates the retriever hands to the ranker (default from settings)."
    )
    filters: dict[StrictStr, FilterValue] | None = Field(
        None, description="Hard attribute filters, {attribute: value or [values]}; items must match all."
    )
    timeout_ms: StrictInt | None = Field(
        None, ge=1, le=60_000, description="Deadline; a request still queued when it passes is answered 504."
    )
    explain: bool = Field(
        False, description="Add each hit's explanation: sources, evidence, prior, residual, attention."
    )


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
    explain: bool = Field(False, description="Add each result's explanation: evidence, prior, residual, attention.")


class FeedbackRequest(BaseModel):
    """POST /feedback: what a user did with an item of a /rank answer."""

    model_config = ConfigDict(extra="forbid")

    request_id: StrictStr = Field(min_length=1, max_length=128, description="The /rank answer's request_id.")
    item_id: StrictStr = Field(min_length=1, max_length=512)
    event: Literal["click", "add_to_cart", "purchase"]
    dwell_ms: float | None = Field(None, ge=0.0, description="How long the user stayed on the item, when known.")


class ReloadRequest(BaseModel):
    """POST /admin/reload: new artifact locations; each defaults to the configured one (re-read from disk)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_dir: Path | None = None
    bundle_dir: Path | None = None


class CanaryRequest(BaseModel):
    """POST /admin/canary: start a canary of new artifacts (as for a reload), or, without paths, change the running
    canary's share."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    share: float = Field(ge=0.0, le=100.0, description="Percent of requests the canary serves.")
    model_dir: Path | None = None
    bundle_dir: Path | None = None


class ShadowRequest(BaseModel):
    """POST /admin/shadow: load new artifacts (as for a reload) as a shadow, or, without paths, change the loaded
    shadow's share."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    share: float = Field(100.0, ge=0.0, le=100.0, description="Percent of /rank requests the shadow also ranks.")
    model_dir: Path | None = None
    bundle_dir: Path | None = None


# -- responses ---------------------------------------------------------------------------------------------------

TimingMs = Annotated[
    dict[str, float],
    Field(description="Server time per stage in ms (queue, encode, retrieve, gather, rank, total), 4 decimals."),
]


class RankedItem(TypedDict):
    """One catalog item of a /rank answer."""

    id: str
    score: Annotated[float, Field(description="The ranker's score; higher is better.")]
    rank: Annotated[int, Field(description="1 for the best item.")]
    title: str
    attributes: dict[str, Any]
    explanation: NotRequired[Annotated[dict[str, Any], Field(description="With explain: why it ranks here.")]]


class RankResponse(TypedDict):
    """POST /rank's answer: the best items, best first."""

    request_id: Annotated[str, Field(description="This answer's id: POST /feedback names it (also X-Request-ID).")]
    results: list[RankedItem]
    model_version: str
    bundle_version: str
    timing_ms: TimingMs


class RerankResult(TypedDict):
    """One document of a /rerank answer."""

    index: Annotated[int, Field(description="Position of the document in the request's `documents`.")]
    relevance_score: Annotated[
        float, Field(description="Ranker score through a logistic: order-preserving, not calibrated.")
    ]
    document: NotRequired[
        Annotated[dict[str, Any], Field(description="Present when return_documents: the text (and id, attributes).")]
    ]
    explanation: NotRequired[Annotated[dict[str, Any], Field(description="With explain: why it ranks here.")]]


class ApiVersion(TypedDict):
    """Cohere's API version block; always "2"."""

    version: str


class BilledUnits(TypedDict):
    """Cohere's billing block; one search unit per request."""

    search_units: int


class RerankMeta(TypedDict):
    """Cohere's `meta` block, with the server's stage timing."""

    api_version: ApiVersion
    billed_units: BilledUnits
    timing_ms: TimingMs


class RerankResponse(TypedDict):
    """POST /rerank's answer, in Cohere's shape: the best `top_n` documents, best first."""

    id: Annotated[str, Field(description="A fresh UUID per response.")]
    results: list[RerankResult]
    model: str
    meta: RerankMeta
