"""The rerank APIs that existing clients speak, translated to this service's rerank job and back.

- Cohere v2, `POST /v2/rerank`: string documents, `max_tokens_per_doc`; answers `{id, results, meta}`.
- Cohere v1 and Jina, `POST /v1/rerank`: one route and one answer that both clients read. Documents are strings or
  objects (`{"text": ...}`, or any fields with Cohere's `rank_fields`); the answer has Cohere v1's `id`, `results`
  and `meta` and Jina's `model` and `usage`, so neither client's fields need guessing from the body.
- Hugging Face TEI, `POST /rerank` with `texts` (this service's own `/rerank` has `documents`; the field tells the
  two apart): answers a bare list of `{index, score, text?}`.

Every shape ends in the engine's one rerank path (`RankingEngine.prepare_rerank`), so all of them rank alike. What
is cut is said: MiniLM reads a document's first MAX_TOKENS word pieces and BM25 all of it (up to the asked
`max_tokens_per_doc`); Cohere's answers list the documents cut in `meta.warnings`, and TEI refuses a text over the
limit unless `truncate` is set, as TEI does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictInt, StrictStr, Tag
from typing_extensions import TypedDict

from index.runtime.text_encoder import MAX_TOKENS, TextEncoder
from service.engine import RankingEngine
from service.errors import RequestError, UnknownModel
from service.outcomes import RerankOutcome
from service.protocol import RerankRequest
from service.settings import Settings

COHERE_DEFAULT_MAX_TOKENS = 4096  # Cohere v2's default max_tokens_per_doc
Timeout = Annotated[
    StrictInt | None,
    Field(ge=1, le=60_000, description="Deadline; a request still queued when it passes is answered 504."),
]


class InputTooLong(RequestError):
    """A text over the encoder's limit with truncation off (413, as TEI answers)."""

    status = 413


# -- requests ----------------------------------------------------------------------------------------------------


class CohereV2Request(BaseModel):
    """POST /v2/rerank, as Cohere's API reference and the `cohere` SDK's `ClientV2.rerank` send it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: StrictStr = Field(description="The served model's version, fusion-ranker-<version>, or the alias.")
    query: StrictStr
    documents: list[StrictStr] = Field(min_length=1)
    top_n: StrictInt | None = Field(None, ge=1, description="Return the best top_n; all documents when absent.")
    max_tokens_per_doc: StrictInt | None = Field(
        None, ge=1, description=f"Cut each document to this many word pieces (default {COHERE_DEFAULT_MAX_TOKENS})."
    )
    priority: StrictInt | None = Field(None, description="Accepted; requests are served in arrival order.")
    timeout_ms: Timeout = None


class V1RerankRequest(BaseModel):
    """POST /v1/rerank, as Cohere v1 (`cohere.Client.rerank`, LangChain's and LlamaIndex's Cohere rerankers) and
    Jina's rerank API send it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr | dict[StrictStr, Any]] = Field(min_length=1)
    top_n: StrictInt | None = Field(None, ge=1)
    return_documents: StrictBool = Field(False, description="Echo each document (as {'text': ...}, or its own fields).")
    rank_fields: list[StrictStr] | None = Field(
        None, min_length=1, description="For object documents: the fields ranked on, as 'field: value' lines."
    )
    max_chunks_per_doc: StrictInt | None = Field(
        None, ge=1, description="Accepted; documents are not chunked (MiniLM reads the first 256 word pieces)."
    )
    timeout_ms: Timeout = None


class TeiRerankRequest(BaseModel):
    """POST /rerank in Hugging Face text-embeddings-inference's shape (told apart by `texts`)."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    texts: list[StrictStr] = Field(min_length=1)
    raw_scores: StrictBool = Field(False, description="The ranker's raw scores instead of their logistic.")
    return_text: StrictBool = False
    truncate: StrictBool | None = Field(False, description=f"Cut texts over {MAX_TOKENS} word pieces instead of a 413.")
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"
    timeout_ms: Timeout = None


def _shape(body: Any) -> str:
    return "tei" if isinstance(body, dict) and "texts" in body else "native"


RerankBody = Annotated[
    Annotated[RerankRequest, Tag("native")] | Annotated[TeiRerankRequest, Tag("tei")], Discriminator(_shape)
]


# -- responses ---------------------------------------------------------------------------------------------------


class ScoredIndex(TypedDict):
    index: int
    relevance_score: float


class ApiMeta(TypedDict, total=False):
    """Cohere's `meta`: the API version, one search unit per request, and what was truncated."""

    api_version: dict[str, str]
    billed_units: dict[str, int]
    warnings: list[str]


class CohereV2Response(TypedDict):
    id: str
    results: list[ScoredIndex]
    meta: ApiMeta


class V1Result(TypedDict, total=False):
    index: int
    relevance_score: float
    document: dict[str, Any]


class V1Response(TypedDict):
    """Cohere v1's answer (`id`, `results`, `meta`) with Jina's `model` and `usage`."""

    id: str
    model: str
    results: list[V1Result]
    meta: ApiMeta
    usage: dict[str, int]


class TeiRank(TypedDict, total=False):
    index: int
    score: float
    text: str


# -- translation -------------------------------------------------------------------------------------------------


def served_names(engine: RankingEngine, settings: Settings) -> list[str]:
    """The names a request's `model` may give: the alias, the version, and fusion-ranker-<version>."""
    version = engine.model_version
    return [settings.model_alias, version, f"fusion-ranker-{version}"]


def check_model(engine: RankingEngine, settings: Settings, name: str | None) -> None:
    """UnknownModel (404, as Cohere answers) unless `name` is absent or one of `served_names`."""
    names = served_names(engine, settings)
    if name is not None and name not in names:
        raise UnknownModel(f"model: {name!r} not found; this service serves {', '.join(repr(n) for n in names)}")


@dataclass(frozen=True)
class Cut:
    """Documents cut to `limit` word pieces, and each one's word pieces before the cut."""

    texts: list[str]
    counts: np.ndarray
    limit: int

    @property
    def cut(self) -> list[int]:
        """Indices of the documents that were cut."""
        return [i for i, n in enumerate(self.counts) if n > self.limit]

    @property
    def tokens(self) -> int:
        """Word pieces kept in all."""
        return int(self.counts.clip(max=self.limit).sum())

    def warnings(self) -> list[str]:
        """What Cohere's `meta.warnings` says: the documents cut to the limit, and those the text encoder reads only
        the start of."""
        out = []
        if self.cut:
            out.append(f"documents {self.cut} were truncated to {self.limit} word pieces")
        long = [i for i, n in enumerate(self.counts) if min(int(n), self.limit) > MAX_TOKENS]
        if long:
            out.append(
                f"documents {long} are over {MAX_TOKENS} word pieces: the text encoder reads their first "
                f"{MAX_TOKENS}, BM25 all of them"
            )
        return out


def cut_documents(encoder: TextEncoder, texts: list[str], limit: int, field: str, from_end: bool = False) -> Cut:
    """`texts` cut to `limit` word pieces (keeping their start, or their end); RequestError naming `field[i]` for a
    document left without text."""
    cut, counts = encoder.cut(texts, limit, from_end)
    empty = [i for i, text in enumerate(cut) if not text.strip()]
    if empty:
        raise RequestError(f"{field}[{empty[0]}]", "must contain some text")
    return Cut(cut, counts, limit)


def v1_texts(request: V1RerankRequest) -> list[str]:
    """The text of each v1/Jina document: a string as given, an object's `text`, or its `rank_fields` as
    'field: value' lines (Cohere ranks structured documents as YAML-like text)."""
    texts = []
    for i, doc in enumerate(request.documents):
        if isinstance(doc, str):
            texts.append(doc)
        elif request.rank_fields:
            lines = [f"{name}: {doc[name]}" for name in request.rank_fields if doc.get(name) is not None]
            if not lines:
                raise RequestError(f"documents[{i}]", f"has none of the rank_fields {request.rank_fields}")
            texts.append("\n".join(lines))
        elif isinstance(doc.get("text"), str):
            texts.append(doc["text"])
        else:
            raise RequestError(f"documents[{i}]", "an object document needs a string 'text' field, or give rank_fields")
    return texts


def rerank_request(query: str, texts: list[str], top_n: int | None, timeout_ms: int | None) -> RerankRequest:
    """The engine's request for plain-text documents."""
    return RerankRequest(query=query, documents=list(texts), top_n=top_n, timeout_ms=timeout_ms)


def meta(version: str, warnings: list[str]) -> ApiMeta:
    body: ApiMeta = {"api_version": {"version": version}, "billed_units": {"search_units": 1}}
    if warnings:
        body["warnings"] = warnings
    return body


def cohere_v2_body(outcome: RerankOutcome, warnings: list[str]) -> CohereV2Response:
    results: list[ScoredIndex] = [
        {"index": i, "relevance_score": r} for i, r in zip(outcome.indices, outcome.relevance, strict=True)
    ]
    return {"id": str(uuid.uuid4()), "results": results, "meta": meta("2", warnings)}


def v1_body(
    request: V1RerankRequest, outcome: RerankOutcome, texts: list[str], tokens: int, warnings: list[str]
) -> V1Response:
    results: list[V1Result] = []
    for i, relevance in zip(outcome.indices, outcome.relevance, strict=True):
        result: V1Result = {"index": i, "relevance_score": relevance}
        if request.return_documents:
            doc = request.documents[i]
            result["document"] = {"text": texts[i]} if isinstance(doc, str) else {"text": texts[i], **doc}
        results.append(result)
    return {
        "id": str(uuid.uuid4()),
        "model": f"fusion-ranker-{outcome.model_version}",
        "results": results,
        "meta": meta("1", warnings),
        "usage": {"total_tokens": tokens},
    }


def tei_body(request: TeiRerankRequest, outcome: RerankOutcome) -> list[TeiRank]:
    scores = outcome.scores if request.raw_scores else outcome.relevance
    ranks: list[TeiRank] = []
    for i, score in zip(outcome.indices, scores, strict=True):
        rank: TeiRank = {"index": i, "score": score}
        if request.return_text:
            rank["text"] = request.texts[i]
        ranks.append(rank)
    return ranks
