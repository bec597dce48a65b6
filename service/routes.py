"""The HTTP routes (`router`): thin handlers that parse the body (pydantic), let the current engine validate it
into a job, run it with `AppState.serve`, and build the response body (protocol.py's shapes) from the typed outcome.

The ranking handlers return a `Response` themselves instead of a model for FastAPI to check and write: they set a
Server-Timing header, and FastAPI's response_model path (validate the body, then serialise it) costs several times
what orjson does (see protocol.py). So they declare `response_model=None`, and `responses={200: {"model": ...}}`
keeps the response shape in the OpenAPI schema.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask

from index.runtime.files import ArtifactError
from index.runtime.text_encoder import MAX_TOKENS
from service.auth import is_bearer
from service.engine import RankingEngine
from service.errors import AdminDenied, NotReady, error_response
from service.events import Feedback
from service.lifecycle import AppState
from service.logs import request_id_of
from service.outcomes import RankOutcome, RerankOutcome
from service.phase import Phase
from service.protocol import (
    CanaryRequest,
    FeedbackRequest,
    JSONBytes,
    RankedItem,
    RankRequest,
    RankResponse,
    ReloadRequest,
    RerankResponse,
    RerankResult,
    ShadowRequest,
)
from service.rerank_apis import (
    COHERE_DEFAULT_MAX_TOKENS,
    CohereV2Request,
    CohereV2Response,
    InputTooLong,
    RerankBody,
    TeiRank,
    TeiRerankRequest,
    V1RerankRequest,
    V1Response,
    check_model,
    cohere_v2_body,
    cut_documents,
    rerank_request,
    tei_body,
    v1_body,
    v1_texts,
)
from service.tracing import RequestTrace

router = APIRouter()


def _state(request: Request) -> AppState:
    return request.app.state.rank


def _engine_for(request: Request, query: str) -> RankingEngine:
    """The engine for this request: the canary's when one runs and takes the request's key (the X-Request-Key
    header, else the query text: one user, or one query, keeps meeting one model)."""
    return _state(request).engines.current(request.headers.get("x-request-key") or query)


async def _state_dependency(request: Request) -> AppState:
    # async, as every dependency here: FastAPI runs a plain-def dependency on its thread pool, a thread hop (and a
    # GIL hand-off) on every request
    return _state(request)


async def _admin(request: Request) -> AppState:
    state = _state(request)
    token = state.settings.admin_token
    if token is None:
        raise AdminDenied(403, "the admin API is disabled; set RANK_ADMIN_TOKEN to enable it")
    if not is_bearer(request.headers.get("authorization", ""), token.get_secret_value()):
        raise AdminDenied(401, "authorization: a valid 'Bearer <RANK_ADMIN_TOKEN>' header is required")
    return state


async def _data_plane(request: Request) -> AppState:
    """The state, once the request's API key is checked (when keys are set): before the body is validated, so a
    caller without a key learns that first."""
    state = _state(request)
    state.admit(request.headers.get("authorization", ""))
    return state


StateDep = Annotated[AppState, Depends(_state_dependency)]
DataPlaneDep = Annotated[AppState, Depends(_data_plane)]
AdminDep = Annotated[AppState, Depends(_admin)]


# -- outcome -> wire body (dict literals: mypy checks them against the TypedDicts, and they build fastest) ---------


def rank_body(outcome: RankOutcome, timing_ms: dict[str, float], request_id: str = "") -> RankResponse:
    """The /rank response body for an outcome and its final timing, under the request's id."""
    o = outcome
    results: list[RankedItem] = [
        {"id": item_id, "score": score, "rank": rank, "title": title, "attributes": attributes}
        for rank, (item_id, score, title, attributes) in enumerate(
            zip(o.ids, o.scores, o.titles, o.attributes, strict=True), start=1
        )
    ]
    if o.explanations is not None:
        for result, why in zip(results, o.explanations, strict=True):
            result["explanation"] = why
    return {
        "request_id": request_id,
        "results": results,
        "model_version": o.model_version,
        "bundle_version": o.bundle_version,
        "timing_ms": timing_ms,
    }


def rerank_body(outcome: RerankOutcome, timing_ms: dict[str, float]) -> RerankResponse:
    """The /rerank response body, in Cohere's shape: `document` only when it was asked for; text documents come
    back as `{"text"}`, catalog ids as `{"id", "text", "attributes"}`."""
    o = outcome
    results: list[RerankResult] = [
        {"index": index, "relevance_score": relevance} for index, relevance in zip(o.indices, o.relevance, strict=True)
    ]
    if o.documents is not None:
        for result, doc in zip(results, o.documents, strict=True):
            result["document"] = (
                {"text": doc.text} if doc.id is None else {"id": doc.id, "text": doc.text, "attributes": doc.attributes}
            )
    if o.explanations is not None:
        for result, why in zip(results, o.explanations, strict=True):
            result["explanation"] = why
    return {
        "id": str(uuid.uuid4()),
        "results": results,
        "model": f"fusion-ranker-{o.model_version}",
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}, "timing_ms": timing_ms},
    }


def _with_server_timing(
    body: Any, timing_ms: dict[str, float], outcome: RankOutcome | RerankOutcome, trace: RequestTrace | None
) -> Response:
    """The JSON response with its stage times in `Server-Timing` and the version that served it in
    `X-Model-Version` (in a header too, so a client of any of the rerank shapes, and a load generator, can read
    it without parsing the body); with tracing on, the request span's `traceparent`."""
    server_timing = ", ".join(f"{stage};dur={ms:.3f}" for stage, ms in timing_ms.items())
    headers = {"Server-Timing": server_timing, "X-Model-Version": outcome.model_version}
    if trace is not None and trace.traceparent is not None:
        headers["traceparent"] = trace.traceparent
    return JSONBytes(body, headers=headers)


# -- handlers ------------------------------------------------------------------------------------------------------


@router.post(
    "/rank",
    response_model=None,
    responses={200: {"model": RankResponse}},
    summary="Rank catalog items for a query",
)
async def rank(body: RankRequest, request: Request, state: DataPlaneDep) -> Response:
    engine = _engine_for(request, body.query)
    job = engine.prepare_rank(body)
    trace = state.trace("/rank", request.headers)
    outcome, timing_ms = await state.serve(engine, job, body.timeout_ms, "/rank", trace)
    shown, explored = state.explore(outcome)  # the shadow compares with the model's own order, not the swap
    request_id, made_here = request_id_of(request.headers)
    response = _with_server_timing(rank_body(shown, timing_ms, request_id), timing_ms, shown, trace)
    if made_here:  # no access line gave it one (RANK_ACCESS_LOG off): the answer carries its id itself
        response.headers["x-request-id"] = request_id
    state.log_impression(request_id, engine, job.query, shown, explored)
    if state.engines.shadow is not None:  # after the response is sent: the client never waits for the shadow
        response.background = BackgroundTask(state.after_rank, engine, body, job.query, outcome)
    return response


@router.post(
    "/rerank",
    response_model=None,
    responses={200: {"model": RerankResponse | list[TeiRank]}},
    summary="Rerank given documents: this service's shape (`documents`), or TEI's (`texts`, answered as TEI does)",
)
async def rerank(body: RerankBody, request: Request, state: DataPlaneDep) -> Response:
    engine = _engine_for(request, body.query)
    if isinstance(body, TeiRerankRequest):
        return await _tei_rerank(body, engine, state, request)
    job = engine.prepare_rerank(body)
    trace = state.trace("/rerank", request.headers)
    outcome, timing_ms = await state.serve(engine, job, body.timeout_ms, "/rerank", trace)
    return _with_server_timing(rerank_body(outcome, timing_ms), timing_ms, outcome, trace)


async def _tei_rerank(body: TeiRerankRequest, engine: RankingEngine, state: AppState, request: Request) -> Response:
    from_end = body.truncation_direction.lower() == "left"
    cut = cut_documents(engine.encoder, body.texts, MAX_TOKENS, "texts", from_end)
    if cut.cut and not body.truncate:
        at = cut.cut[0]
        raise InputTooLong(
            f"texts[{at}]", f"is {cut.counts[at]} word pieces long; the limit is {MAX_TOKENS}: set truncate: true"
        )
    outcome, timing_ms, trace = await _rerank_texts(
        engine, state, body.query, cut.texts, None, body.timeout_ms, "/rerank", request
    )
    return _with_server_timing(tei_body(body, outcome), timing_ms, outcome, trace)


async def _rerank_texts(
    engine: RankingEngine,
    state: AppState,
    query: str,
    texts: list[str],
    top_n: int | None,
    timeout_ms: int | None,
    route: str,
    request: Request,
) -> tuple[RerankOutcome, dict[str, float], RequestTrace | None]:
    """Serve plain-text documents through the one rerank path, for the other APIs' shapes; with the request's
    trace when tracing is on."""
    job = engine.prepare_rerank(rerank_request(query, texts, top_n, timeout_ms))
    trace = state.trace(route, request.headers)
    outcome, timing_ms = await state.serve(engine, job, timeout_ms, route, trace)
    return outcome, timing_ms, trace


@router.post(
    "/v2/rerank",
    response_model=None,
    responses={200: {"model": CohereV2Response}},
    summary="Rerank documents in Cohere's v2 API shape (the cohere SDK's ClientV2.rerank)",
)
async def cohere_v2_rerank(body: CohereV2Request, request: Request, state: DataPlaneDep) -> Response:
    engine = _engine_for(request, body.query)
    check_model(engine, state.settings, body.model)
    limit = body.max_tokens_per_doc or COHERE_DEFAULT_MAX_TOKENS
    cut = cut_documents(engine.encoder, body.documents, limit, "documents")
    outcome, timing_ms, trace = await _rerank_texts(
        engine, state, body.query, cut.texts, body.top_n, body.timeout_ms, "/v2/rerank", request
    )
    return _with_server_timing(cohere_v2_body(outcome, cut.warnings()), timing_ms, outcome, trace)


@router.post(
    "/v1/rerank",
    response_model=None,
    responses={200: {"model": V1Response}},
    summary="Rerank documents in Cohere's v1 or Jina's API shape (one answer carries both's fields)",
)
async def v1_rerank(body: V1RerankRequest, request: Request, state: DataPlaneDep) -> Response:
    engine = _engine_for(request, body.query)
    check_model(engine, state.settings, body.model)
    cut = cut_documents(engine.encoder, v1_texts(body), COHERE_DEFAULT_MAX_TOKENS, "documents")
    outcome, timing_ms, trace = await _rerank_texts(
        engine, state, body.query, cut.texts, body.top_n, body.timeout_ms, "/v1/rerank", request
    )
    tokens = cut.tokens + int(engine.encoder.token_counts([body.query])[0])
    body_out = v1_body(body, outcome, cut.texts, tokens, cut.warnings())
    return _with_server_timing(body_out, timing_ms, outcome, trace)


@router.post(
    "/feedback",
    status_code=202,
    summary="What a user did with a shown item (a click, an add to cart, a purchase), for learning from traffic",
)
async def feedback(body: FeedbackRequest, state: DataPlaneDep) -> Response:
    if state.events is None:
        return error_response(409, "feedback is not logged here: set RANK_LOG_DIR to keep it")
    event = Feedback(body.request_id, body.item_id, body.event, body.dwell_ms, time.time())
    return JSONBytes({"logged": state.events.offer(event)}, status_code=202)


@router.post("/admin/reload", summary="Load, validate and warm new artifacts, then switch to them atomically")
async def admin_reload(admin: AdminDep, body: ReloadRequest | None = None) -> Response:
    request = body or ReloadRequest()
    change = admin.engines.reload(request.model_dir, request.bundle_dir)
    return await _loading(admin, change, "reload refused, still serving the old model")


async def _loading(admin: AppState, change: Awaitable[Mapping[str, object]], refusal: str) -> Response:
    """The answer of an admin change that loads artifacts; 422 with `refusal`, the reason and the versions still
    serving when they do not load."""
    try:
        return JSONBytes(await change)
    except (ArtifactError, FileNotFoundError, ValueError) as exc:
        serving = admin.engines.current()
        message = f"{refusal}: {exc}"
        return error_response(422, message, model_version=serving.model_version, bundle_version=serving.bundle.version)


@router.post(
    "/admin/rollback",
    summary="Serve the model and bundle the last swap replaced again, from memory; 409 when there is none",
)
async def admin_rollback(admin: AdminDep) -> Response:
    return JSONBytes(await admin.engines.rollback())


@router.post("/admin/canary", summary="Serve a share of requests with new artifacts, or change the canary's share")
async def admin_canary(admin: AdminDep, body: CanaryRequest) -> Response:
    change = admin.engines.start_canary(body.share, body.model_dir, body.bundle_dir)
    return await _loading(admin, change, "canary refused, still serving the old model alone")


@router.get("/admin/canary", summary="The running canary: its versions and share")
async def admin_canary_status(admin: AdminDep) -> Response:
    return JSONBytes(admin.engines.canary_status())


@router.post(
    "/admin/shadow", summary="Load new artifacts as a shadow that also ranks live /rank traffic, or change its share"
)
async def admin_shadow(admin: AdminDep, body: ShadowRequest) -> Response:
    change = admin.engines.start_shadow(body.share, body.model_dir, body.bundle_dir)
    return await _loading(admin, change, "shadow refused, nothing changed")


@router.get("/admin/shadow", summary="The shadow's figures: agreement with the served lists, its own time, shed work")
async def admin_shadow_status(admin: AdminDep) -> Response:
    return JSONBytes(admin.engines.shadow_status())


@router.delete("/admin/shadow", summary="Unload the shadow; answers its final figures")
async def admin_shadow_stop(admin: AdminDep) -> Response:
    return JSONBytes(await admin.engines.stop_shadow())


@router.post("/admin/canary/promote", summary="The canary serves every request; the old model is kept for rollback")
async def admin_promote(admin: AdminDep) -> Response:
    return JSONBytes(await admin.engines.promote())


@router.get("/health/live", summary="Liveness: the process answers")
async def live() -> Response:
    return JSONBytes({"status": "alive"})


@router.get("/health/ready", summary="Readiness: artifacts loaded and warm")
async def ready(state: StateDep) -> Response:
    try:
        e = state.engines.current()
    except NotReady as exc:
        status = "draining" if state.lifecycle.phase is Phase.DRAINING else "starting"
        return error_response(503, str(exc), status=status)
    return JSONBytes(
        {
            "status": "ready",
            "model_version": e.model_version,
            "bundle_version": e.bundle.version,
            "items": e.bundle.size,
            "provider": e.provider,
            "retriever_device": e.bundle.dense.device,
            "candidate_sources": list(e.sources),
            "prior": e.prior,
            "synthetic": e.synthetic,
        }
    )


@router.get("/metrics", summary="Prometheus exposition")
def prometheus(state: StateDep) -> Response:
    # Plain def, so FastAPI runs it on its thread pool: rendering the registry takes about 10 ms here, and on the
    # event loop every request arriving meanwhile would wait for it (a p99 spike per scrape).
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
