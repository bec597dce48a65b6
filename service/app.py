"""The FastAPI application: `create_app(settings)` wires the pieces together and nothing else.

Where each role lives: protocol.py (wire format), routes.py and rerank_apis.py (handlers and the other rerank APIs'
shapes), engine.py (the request path's coordinator) with its steps: jobs.py (validated requests), encoding.py
(MiniLM), caches.py, retrieval.py (candidates), scoring.py (gather and ranker), outcomes.py (typed results);
batcher.py (micro-batching), lifecycle.py (`AppState`: the batchers and one request's way through them), phase.py
(starting/ready/draining), engines.py (the serving, previous, canary and shadow engines, and the swaps), shadow.py,
loading.py (loading and checking artifacts), errors.py (domain errors and the one error -> HTTP map), middleware.py
(metrics, body limit), logs.py (text or JSON logs, the access line), tracing.py (OpenTelemetry), explain.py (why a
hit ranks), workbench.py and ui/ (the relevance workbench at /ui) with judgments.py (its grades), auth.py (API keys
and quotas), metrics.py, settings.py; rpc/ (the gRPC API beside HTTP, on the same `AppState`); __main__.py runs it
under uvicorn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.auth import KeyQuotas
from service.engine import RankingEngine
from service.errors import install_error_handlers
from service.events import EventLog
from service.lifecycle import AppState
from service.loading import load_engine
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.routes import router
from service.rpc.server import RpcServer
from service.settings import Settings
from service.tracing import Tracing
from service.workbench import router as workbench


def create_app(
    settings: Settings | None = None,
    engine: RankingEngine | None = None,
    metrics: Metrics | None = None,
    rpc: RpcServer | None = None,
) -> FastAPI:
    """Build the app. Pass a pre-loaded `engine` (with the `metrics` it reports to) to skip loading in the
    lifespan, as the CLI and tests do, and a started `rpc` server to serve gRPC from (the CLI starts it before
    loading); without one, the lifespan starts gRPC itself when `settings.grpc_port` is set."""
    settings = settings or Settings()
    metrics = metrics or Metrics()
    quotas = KeyQuotas(settings.key_rate_limit, settings.key_rate_burst) if settings.key_rate_limit else None
    state = AppState(
        settings=settings,
        metrics=metrics,
        api_keys=settings.parsed_api_keys(),
        quotas=quotas,
        tracing=Tracing.from_environment(),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server = rpc or (RpcServer(settings).start() if settings.grpc_port else None)
        if settings.log_dir is not None:
            state.events = EventLog(
                settings.log_dir,
                metrics,
                max_queue=settings.log_queue,
                segment_records=settings.log_segment_records,
                segment_seconds=settings.log_segment_seconds,
            )
        if server is not None:
            server.attach(state)
        try:
            state.start(engine or load_engine(settings, metrics))
            yield
        finally:
            state.stop()
            if server is not None:
                server.stop(settings.shutdown_grace_seconds)
            if state.tracing is not None:
                state.tracing.shutdown()  # export what is buffered

    app = FastAPI(
        title="Fusion ranking service",
        summary="Query in, best catalog items out: FAISS candidates scored by an ONNX multimodal fusion ranker.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.rank = state
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)  # type: ignore[arg-type]
    access_log = settings.access_log if settings.access_log is not None else settings.log_format == "json"
    app.add_middleware(MetricsMiddleware, metrics=metrics, access_log=access_log)  # type: ignore[arg-type]
    install_error_handlers(app, metrics)
    app.include_router(router)
    app.include_router(workbench)
    return app
