"""Between rank.proto's messages and the service's own types: a request becomes the pydantic model the HTTP route
validates (so one set of rules, and one wording of each error, serves both protocols), and an outcome becomes a
reply with the fields the JSON answer has."""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf.struct_pb2 import Struct

from service.errors import parse_body
from service.outcomes import RankOutcome, RerankOutcome
from service.protocol import RankRequest, RerankRequest
from service.rpc import rank_pb2 as pb

MAX_TIMEOUT_MS = 60_000  # the JSON field's bound (protocol.RankRequest.timeout_ms)


def timeout_ms(seconds_left: float | None) -> int | None:
    """The request's `timeout_ms` from the time left before the caller's gRPC deadline (None: no deadline)."""
    if seconds_left is None:
        return None
    return max(1, min(MAX_TIMEOUT_MS, int(seconds_left * 1000.0)))


def rank_request(message: pb.RankRequest, timeout: int | None) -> RankRequest:
    """The /rank request a Rank message asks for; RequestError naming the field when it is invalid."""
    fields: dict[str, Any] = {"query": message.query, "timeout_ms": timeout, "explain": message.explain}
    for name in ("top_k", "num_candidates"):
        if message.HasField(name):
            fields[name] = getattr(message, name)
    if message.filters:
        fields["filters"] = {name: list(allowed.values) for name, allowed in message.filters.items()}
    return parse_body(RankRequest, fields)


def _document(document: pb.Document) -> str | dict[str, str]:
    kind = document.WhichOneof("kind")
    return document.text if kind == "text" else {"id": document.id} if kind == "id" else {}


def rerank_request(message: pb.RerankRequest, timeout: int | None) -> RerankRequest:
    """The /rerank request a Rerank message asks for; RequestError naming the field when it is invalid."""
    fields: dict[str, Any] = {
        "query": message.query,
        "documents": [_document(d) for d in message.documents],
        "return_documents": message.return_documents,
        "timeout_ms": timeout,
        "explain": message.explain,
    }
    if message.HasField("top_n"):
        fields["top_n"] = message.top_n
    return parse_body(RerankRequest, fields)


def _struct(values: dict[str, Any] | None) -> Struct | None:
    if values is None:
        return None
    struct = Struct()
    struct.update(values)
    return struct


def rank_reply(outcome: RankOutcome, timing_ms: dict[str, float], request_id: str) -> pb.RankResponse:
    """The Rank reply: the /rank answer's fields."""
    o = outcome
    explanations = o.explanations if o.explanations is not None else [None] * len(o.ids)
    return pb.RankResponse(
        results=[
            pb.RankedItem(
                id=item_id,
                score=score,
                rank=rank,
                title=title,
                attributes=_struct(attributes),
                explanation=_struct(why),
            )
            for rank, (item_id, score, title, attributes, why) in enumerate(
                zip(o.ids, o.scores, o.titles, o.attributes, explanations, strict=True), start=1
            )
        ],
        model_version=o.model_version,
        bundle_version=o.bundle_version,
        timing_ms=timing_ms,
        request_id=request_id,
    )


def rerank_reply(outcome: RerankOutcome, timing_ms: dict[str, float]) -> pb.RerankResponse:
    """The Rerank reply: the /rerank answer's fields (`document` only when return_documents asked for it)."""
    o = outcome
    documents = o.documents if o.documents is not None else [None] * len(o.indices)
    explanations = o.explanations if o.explanations is not None else [None] * len(o.indices)
    return pb.RerankResponse(
        id=str(uuid.uuid4()),
        results=[
            pb.RerankResult(
                index=index,
                relevance_score=relevance,
                document=None
                if doc is None
                else pb.ReturnedDocument(text=doc.text, id=doc.id or "", attributes=_struct(doc.attributes)),
                explanation=_struct(why),
            )
            for index, relevance, doc, why in zip(o.indices, o.relevance, documents, explanations, strict=True)
        ],
        model=f"fusion-ranker-{o.model_version}",
        timing_ms=timing_ms,
    )
