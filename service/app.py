"""The FastAPI application: `create_app(settings)` builds it; the lifespan loads, checks and warms the artifacts.

Routes are thin: they parse (pydantic), call `RankingEngine`, and serialise with orjson. Every domain error maps to
an HTTP status in `_install_error_handlers`, the one place that does so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import onnxruntime as ort
import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.bundle import Bundle
from index.ranker_runtime import ArtifactError, OnnxRanker
from index.retriever import gpu_available
from index.runtime import CPU, CUDA
from index.text_encoder import TextEncoder
from service.batcher import DeadlineExceeded, MicroBatcher, QueueFull, ShuttingDown
from service.metrics import Metrics
from service.protocol import RankRequest, RankResponse, RerankRequest, RerankResponse
from service.ranking import Job, RankingEngine, RequestError, job_size
from service.settings import Device, Settings

log = logging.getLogger("service")


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class NotReady(RuntimeError):
    """The service is starting (or stopping) and cannot answer ranking requests yet."""


@dataclass
class AppState:
    """Everything the routes need, typed, on `app.state.rank`."""

    settings: Settings
    metrics: Metrics
    engine: RankingEngine | None = None
    batcher: MicroBatcher[Job, dict[str, Any]] | None = None
    ready: bool = False
    provider: str = "none"

    async def serve(self, job: Job, timeout_ms: int | None, route: str) -> Response:
        """Run a job through the batcher (or inline when batching is off), time it, and build the response."""
        started = time.perf_counter()
        deadline = started + timeout_ms / 1000.0 if timeout_ms else None
        if self.batcher is not None:
            body = await self.batcher.submit(job, deadline)
        else:
            assert self.engine is not None
            body = self.engine.serve_one(job)
        timing = body["timing_ms"] if "timing_ms" in body else body["meta"]["timing_ms"]
        timing["total"] = (time.perf_counter() - started) * 1000.0
        for stage, ms in timing.items():
            self.metrics.stage_seconds.labels(route, stage).observe(ms / 1000.0)
            timing[stage] = round(ms, 4)
        server_timing = ", ".join(f"{stage};dur={ms:.3f}" for stage, ms in timing.items())
        return JSONBytes(body, headers={"Server-Timing": server_timing})


def resolve_providers(settings: Settings) -> list[str]:
    """Execution providers for the requested device; a CUDA request that cannot be met fails unless fallback is on."""
    if settings.device is Device.CPU:
        return [CPU]
    if CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    if settings.device is Device.CUDA and not settings.allow_cpu_fallback:
        raise ArtifactError("device=cuda was asked for, but onnxruntime has no CUDA provider (install the gpu extra)")
    return [CPU]


def load_engine(settings: Settings, metrics: Metrics) -> RankingEngine:
    """Load bundle, ranker and encoder, check they belong together, and warm the request path."""
    started = time.perf_counter()
    providers = resolve_providers(settings)
    ranker = OnnxRanker(settings.model_dir, providers=providers, threads=settings.ort_threads)
    if settings.device is Device.CUDA and ranker.providers[0] != CUDA and not settings.allow_cpu_fallback:
        raise ArtifactError(f"device=cuda was asked for, but the ranker runs on {ranker.providers[0]}")
    use_gpu = settings.device is not Device.CPU and gpu_available()
    bundle = Bundle.load(settings.bundle_dir, use_gpu=use_gpu)
    encoder = TextEncoder(settings.encoder_dir, cache_size=settings.query_cache_size, providers=providers)
    if encoder.name != ranker.card.schema.text_encoder:
        raise ArtifactError(f"text encoder {encoder.name} is not the model's {ranker.card.schema.text_encoder}")
    engine = RankingEngine(bundle, ranker, encoder, settings, metrics)
    engine.warm(settings.warmup_queries)
    log.info(
        "ready in %.1fs: model %s, bundle %s (%d items, %s index on %s), ranker on %s",
        time.perf_counter() - started,
        ranker.version,
        bundle.version,
        bundle.size,
        bundle.manifest["index"]["params"]["kind"],
        bundle.retriever.device,
        ranker.providers[0],
    )
    return engine


def _state(request: Request) -> AppState:
    return request.app.state.rank


def _engine(request: Request) -> RankingEngine:
    state = _state(request)
    if not state.ready or state.engine is None:
        raise NotReady("the service is not ready")
    return state.engine


EngineDep = Annotated[RankingEngine, Depends(_engine)]


class MetricsMiddleware:
    """Counts requests by route and status, times them, and tracks in-flight requests (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.metrics.route_label(scope["path"])
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


def _error(code: int, message: str, **extra: Any) -> JSONBytes:
    return JSONBytes({"error": message, **extra}, status_code=code)


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        details = []
        for err in errors:
            loc = tuple(err.get("loc", ()))
            field = "body" if err.get("type") == "json_invalid" else _field_of(loc)
            message = "is not valid JSON" if err.get("type") == "json_invalid" else err.get("msg", "is invalid")
            details.append({"field": field, "message": message})
        first = details[0] if details else {"field": "body", "message": "is invalid"}
        return _error(422, f"{first['field']}: {first['message']}", field=first["field"], errors=details)

    @app.exception_handler(RequestError)
    async def _bad_request(_: Request, exc: RequestError) -> Response:
        return _error(422, str(exc), field=exc.field, errors=[{"field": exc.field, "message": exc.message}])

    @app.exception_handler(NotReady)
    async def _not_ready(_: Request, exc: NotReady) -> Response:
        return _error(503, str(exc))

    @app.exception_handler(ShuttingDown)
    async def _shutting_down(_: Request, exc: ShuttingDown) -> Response:
        return _error(503, str(exc))

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull) -> Response:
        _state(request).metrics.rejections.labels("queue_full").inc()
        response = _error(429, f"{exc}; retry shortly")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(DeadlineExceeded)
    async def _deadline(request: Request, exc: DeadlineExceeded) -> Response:
        _state(request).metrics.deadline_drops.inc()
        return _error(504, f"timeout_ms: {exc}")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return _error(500, "internal error; see the service log")


def create_app(
    settings: Settings | None = None, engine: RankingEngine | None = None, metrics: Metrics | None = None
) -> FastAPI:
    """Build the app. Pass a pre-loaded `engine` (with the `metrics` it reports to) to skip loading in the
    lifespan, as the CLI and tests do."""
    settings = settings or Settings()
    metrics = metrics or Metrics()
    state = AppState(settings=settings, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.engine = engine or load_engine(settings, metrics)
        state.provider = state.engine.ranker.providers[0]
        if settings.batching:
            state.batcher = MicroBatcher(
                state.engine.process_batch,
                job_size,
                max_batch=settings.max_batch,
                max_delay_us=settings.max_delay_us,
                max_queue=settings.max_queue,
            )
            state.batcher.start()
            batcher = state.batcher
            metrics.queue_depth.set_function(lambda: batcher.depth)
        metrics.info.info(
            {
                "model_version": state.engine.ranker.version,
                "bundle_version": state.engine.bundle.version,
                "provider": state.provider,
                "index": str(state.engine.bundle.manifest["index"]["params"]["kind"]),
            }
        )
        state.ready = True
        metrics.ready.set(1)
        yield
        state.ready = False
        metrics.ready.set(0)
        if state.batcher is not None:
            state.batcher.close()

    app = FastAPI(
        title="Fusion ranking service",
        summary="Query in, best catalog items out: FAISS candidates scored by an ONNX multimodal fusion ranker.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.rank = state
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # type: ignore[arg-type]
    _install_error_handlers(app)

    @app.post("/rank", response_model=RankResponse, summary="Rank catalog items for a query")
    async def rank(body: RankRequest, engine: EngineDep) -> Response:
        return await state.serve(engine.prepare_rank(body), body.timeout_ms, "/rank")

    @app.post("/rerank", response_model=RerankResponse, summary="Rerank given documents (Cohere/Jina shape)")
    async def rerank(body: RerankRequest, engine: EngineDep) -> Response:
        return await state.serve(engine.prepare_rerank(body), body.timeout_ms, "/rerank")

    @app.get("/health/live", summary="Liveness: the process answers")
    async def live() -> Response:
        return JSONBytes({"status": "alive"})

    @app.get("/health/ready", summary="Readiness: artifacts loaded and warm")
    async def ready(request: Request) -> Response:
        s = _state(request)
        if not s.ready or s.engine is None:
            return _error(503, "not ready", status="starting")
        e = s.engine
        return JSONBytes(
            {
                "status": "ready",
                "model_version": e.ranker.version,
                "bundle_version": e.bundle.version,
                "items": e.bundle.size,
                "provider": s.provider,
                "retriever_device": e.bundle.retriever.device,
                "synthetic": bool(e.ranker.card.raw.get("dataset", {}).get("synthetic", False)),
            }
        )

    @app.get("/metrics", summary="Prometheus exposition")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
