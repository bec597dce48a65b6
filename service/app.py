"""The FastAPI application: `create_app(settings)` builds it; the lifespan loads, checks and warms the artifacts.

Routes are thin: they parse (pydantic), let the current `RankingEngine` validate, hand the job to the micro-batcher
and serialise with orjson. Every domain error maps to an HTTP status in `_install_error_handlers`, the one place
that does so. A hot swap (`POST /admin/reload` or SIGHUP) loads and validates a new engine beside the serving one
and replaces it in one assignment; work already queued finishes on the engine that validated it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import onnxruntime as ort
import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.data.readers import DataError
from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel, ModelCard
from index.runtime.faiss_index import gpu_available, set_search_threads
from index.runtime.files import ArtifactError
from index.runtime.ort_session import CPU, CUDA
from index.runtime.text_encoder import TextEncoder
from service.batcher import DeadlineExceeded, MicroBatcher, QueueFull, ShuttingDown
from service.metrics import Metrics
from service.protocol import RankRequest, RankResponse, RerankRequest, RerankResponse
from service.ranking import Job, RankingEngine, RequestError, Work, process_work
from service.settings import Device, Settings

log = logging.getLogger("service")


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class NotReady(RuntimeError):
    """The service is starting (or draining) and cannot answer ranking requests."""


class BodyTooLarge(ValueError):
    """The request body exceeds `max_body_bytes`."""


class AdminDenied(PermissionError):
    """The admin API is off, or the bearer token is missing or wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def resolve_providers(settings: Settings) -> list[str]:
    """Execution providers for the requested device; a CUDA request that cannot be met fails unless fallback is on."""
    if settings.device is Device.CPU:
        return [CPU]
    if CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    if settings.device is Device.CUDA and not settings.allow_cpu_fallback:
        raise ArtifactError("device=cuda was asked for, but onnxruntime has no CUDA provider (install the gpu extra)")
    return [CPU]


def check_quality_gate(card: ModelCard, min_ndcg: float, require_beats_baseline: bool) -> None:
    """Refuse a model whose recorded test metrics fall below the gate or below the text-cosine baseline."""
    test = card.raw.get("metrics", {}).get("test", {})
    fusion = test.get("fusion", {}).get("ndcg@10")
    if fusion is None:
        raise ArtifactError(f"model {card.version}: the model card records no test nDCG@10 for the quality gate")
    if fusion < min_ndcg:
        raise ArtifactError(f"model {card.version}: test nDCG@10 {fusion} is below the gate min_ndcg={min_ndcg}")
    baseline = test.get("text_cosine", {}).get("ndcg@10")
    if require_beats_baseline and baseline is not None and fusion < baseline:
        raise ArtifactError(f"model {card.version}: test nDCG@10 {fusion} is below the text-cosine baseline {baseline}")


def load_engine(
    settings: Settings, metrics: Metrics, *, model_dir: Path | None = None, bundle_dir: Path | None = None
) -> RankingEngine:
    """Load bundle, ranker and encoder; verify checksums, canary parity, the quality gate and that they belong
    together; then warm the request path. Raises ArtifactError (or DataError) saying what is wrong."""
    started = time.perf_counter()
    providers = resolve_providers(settings)
    ranker = ExportedModel(model_dir or settings.model_dir, providers=providers, threads=settings.ort_threads)
    if settings.device is Device.CUDA and ranker.providers[0] != CUDA and not settings.allow_cpu_fallback:
        raise ArtifactError(f"device=cuda was asked for, but the ranker runs on {ranker.providers[0]}")
    canary_diff = ranker.check_canaries()
    check_quality_gate(ranker.card, settings.min_ndcg, settings.require_beats_baseline)
    set_search_threads(settings.faiss_threads)
    use_gpu = settings.device is not Device.CPU and gpu_available()
    bundle = Bundle.load(bundle_dir or settings.bundle_dir, use_gpu=use_gpu)
    encoder = TextEncoder(
        settings.encoder_dir,
        cache_size=settings.query_cache_size,
        providers=providers,
        variant=settings.query_encoder.value,
    )
    if encoder.name != ranker.card.schema.text_encoder:
        raise ArtifactError(f"text encoder {encoder.name} is not the model's {ranker.card.schema.text_encoder}")
    engine = RankingEngine(bundle, ranker, encoder, settings, metrics)
    engine.warm(settings.warmup_queries)
    log.info(
        "loaded in %.1fs: model %s (canary diff %.1e), bundle %s (%d items, %s index on %s), ranker on %s",
        time.perf_counter() - started,
        ranker.version,
        canary_diff,
        bundle.version,
        bundle.size,
        bundle.manifest["index"]["params"]["kind"],
        bundle.retriever.device,
        ranker.providers[0],
    )
    return engine


class ReloadRequest(BaseModel):
    """POST /admin/reload: new artifact locations; each defaults to the configured one (re-read from disk)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_dir: Path | None = None
    bundle_dir: Path | None = None


@dataclass
class AppState:
    """Everything the routes need, typed, on `app.state.rank`."""

    settings: Settings
    metrics: Metrics
    engine: RankingEngine | None = None
    batcher: MicroBatcher[Work, dict[str, Any]] | None = None
    ready: bool = False
    draining: bool = False
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def publish(self, engine: RankingEngine) -> None:
        """Make `engine` the one that serves new requests (one assignment: atomic for the handlers)."""
        self.engine = engine
        self.metrics.info.info(
            {
                "model_version": engine.ranker.version,
                "bundle_version": engine.bundle.version,
                "provider": engine.ranker.providers[0],
                "index": str(engine.bundle.manifest["index"]["params"]["kind"]),
            }
        )

    def current(self) -> RankingEngine:
        if self.draining:
            raise NotReady("the service is shutting down")
        if not self.ready or self.engine is None:
            raise NotReady("the service is not ready")
        return self.engine

    def begin_drain(self) -> None:
        """Readiness off and new requests refused with 503; in-flight ones still finish."""
        self.draining = True
        self.metrics.ready.set(0)

    async def reload(self, model_dir: Path | None = None, bundle_dir: Path | None = None) -> dict[str, str]:
        """Load and validate new artifacts beside the serving ones, then switch. Raises (keeping the old engine
        serving) when anything about the new artifacts is wrong."""
        async with self.reload_lock:
            old = self.current()
            new = await asyncio.to_thread(
                load_engine, self.settings, self.metrics, model_dir=model_dir, bundle_dir=bundle_dir
            )
            self.publish(new)
            log.info(
                "swapped model %s -> %s, bundle %s -> %s",
                old.ranker.version,
                new.ranker.version,
                old.bundle.version,
                new.bundle.version,
            )
            return {
                "status": "reloaded",
                "model_version": new.ranker.version,
                "bundle_version": new.bundle.version,
                "previous_model_version": old.ranker.version,
                "previous_bundle_version": old.bundle.version,
            }

    async def serve(self, engine: RankingEngine, job: Job, timeout_ms: int | None, route: str) -> Response:
        """Run a job through the batcher (or inline when batching is off), time it, and build the response."""
        started = time.perf_counter()
        deadline = started + timeout_ms / 1000.0 if timeout_ms else None
        if self.batcher is not None:
            body = await self.batcher.submit(Work(engine, job), deadline)
        else:
            body = engine.serve_one(job)
        timing = body["timing_ms"] if "timing_ms" in body else body["meta"]["timing_ms"]
        timing["total"] = (time.perf_counter() - started) * 1000.0
        for stage, ms in timing.items():
            self.metrics.stage_seconds.labels(route, stage).observe(ms / 1000.0)
            timing[stage] = round(ms, 4)
        server_timing = ", ".join(f"{stage};dur={ms:.3f}" for stage, ms in timing.items())
        return JSONBytes(body, headers={"Server-Timing": server_timing})


def _state(request: Request) -> AppState:
    return request.app.state.rank


def _engine(request: Request) -> RankingEngine:
    return _state(request).current()


def _admin(request: Request) -> AppState:
    state = _state(request)
    token = state.settings.admin_token
    if token is None:
        raise AdminDenied(403, "the admin API is disabled; set RANK_ADMIN_TOKEN to enable it")
    given = request.headers.get("authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {token.get_secret_value()}".encode()):
        raise AdminDenied(401, "authorization: a valid 'Bearer <RANK_ADMIN_TOKEN>' header is required")
    return state


EngineDep = Annotated[RankingEngine, Depends(_engine)]
AdminDep = Annotated[AppState, Depends(_admin)]


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


class BodyLimitMiddleware:
    """Refuses bodies over `limit` bytes: by Content-Length before reading, or while streaming a chunked body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _error(413, f"body: larger than the {self.limit}-byte limit")(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(f"body: larger than the {self.limit}-byte limit")
            return message

        await self.app(scope, limited, send)


def _error(code: int, message: str, **extra: Any) -> JSONBytes:
    return JSONBytes({"error": message, **extra}, status_code=code)


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        details = []
        for err in exc.errors():
            bad_json = err.get("type") == "json_invalid"
            field_name = "body" if bad_json else _field_of(tuple(err.get("loc", ())))
            details.append({"field": field_name, "message": "is not valid JSON" if bad_json else err.get("msg")})
        first = details[0] if details else {"field": "body", "message": "is invalid"}
        return _error(422, f"{first['field']}: {first['message']}", field=first["field"], errors=details)

    @app.exception_handler(RequestError)
    async def _bad_request(_: Request, exc: RequestError) -> Response:
        return _error(422, str(exc), field=exc.field, errors=[{"field": exc.field, "message": exc.message}])

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Response:
        if isinstance(exc.__cause__, BodyTooLarge):  # raised while FastAPI streamed the body in
            return _error(413, str(exc.__cause__))
        detail = "body: could not be parsed" if exc.status_code == 400 else str(exc.detail)
        return _error(exc.status_code, detail)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> Response:
        return _error(413, str(exc))

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

    @app.exception_handler(AdminDenied)
    async def _denied(_: Request, exc: AdminDenied) -> Response:
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return _error(500, "internal error; see the service log")


def _install_sighup(state: AppState) -> None:
    """SIGHUP reloads the configured artifacts (only possible when the loop runs in the main thread)."""

    async def reload() -> None:
        try:
            await state.reload()
        except (ArtifactError, DataError, FileNotFoundError, ValueError, NotReady) as exc:
            log.error("SIGHUP reload refused, still serving the old model: %s", exc)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
    except (RuntimeError, ValueError, NotImplementedError):
        log.debug("SIGHUP reload not installed (event loop not in the main thread)")


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
        state.publish(engine or load_engine(settings, metrics))
        if settings.batching:
            batcher: MicroBatcher[Work, dict[str, Any]] = MicroBatcher(
                process_work,
                lambda work: work.size,
                max_batch=settings.max_batch,
                max_delay_us=settings.max_delay_us,
                max_queue=settings.max_queue,
            )
            batcher.start()
            metrics.queue_depth.set_function(lambda: batcher.depth)
            state.batcher = batcher
        _install_sighup(state)
        state.ready = True
        metrics.ready.set(1)
        yield
        state.begin_drain()
        if state.batcher is not None:
            state.batcher.close()

    app = FastAPI(
        title="Fusion ranking service",
        summary="Query in, best catalog items out: FAISS candidates scored by an ONNX multimodal fusion ranker.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.rank = state
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)  # type: ignore[arg-type]
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # type: ignore[arg-type]
    _install_error_handlers(app)

    @app.post("/rank", response_model=RankResponse, summary="Rank catalog items for a query")
    async def rank(body: RankRequest, engine: EngineDep) -> Response:
        return await state.serve(engine, engine.prepare_rank(body), body.timeout_ms, "/rank")

    @app.post("/rerank", response_model=RerankResponse, summary="Rerank given documents (Cohere/Jina shape)")
    async def rerank(body: RerankRequest, engine: EngineDep) -> Response:
        return await state.serve(engine, engine.prepare_rerank(body), body.timeout_ms, "/rerank")

    @app.post("/admin/reload", summary="Load, validate and warm new artifacts, then switch to them atomically")
    async def admin_reload(admin: AdminDep, body: ReloadRequest | None = None) -> Response:
        request = body or ReloadRequest()
        try:
            return JSONBytes(await admin.reload(request.model_dir, request.bundle_dir))
        except (ArtifactError, DataError, FileNotFoundError, ValueError) as exc:
            serving = admin.current()
            return _error(
                422,
                f"reload refused, still serving the old model: {exc}",
                model_version=serving.ranker.version,
                bundle_version=serving.bundle.version,
            )

    @app.get("/health/live", summary="Liveness: the process answers")
    async def live() -> Response:
        return JSONBytes({"status": "alive"})

    @app.get("/health/ready", summary="Readiness: artifacts loaded and warm")
    async def ready() -> Response:
        try:
            e = state.current()
        except NotReady as exc:
            return _error(503, str(exc), status="draining" if state.draining else "starting")
        return JSONBytes(
            {
                "status": "ready",
                "model_version": e.ranker.version,
                "bundle_version": e.bundle.version,
                "items": e.bundle.size,
                "provider": e.ranker.providers[0],
                "retriever_device": e.bundle.retriever.device,
                "synthetic": bool(e.ranker.card.raw.get("dataset", {}).get("synthetic", False)),
            }
        )

    @app.get("/metrics", summary="Prometheus exposition")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
