"""The service as a Ray Serve application: each replica runs the very FastAPI app `python -m service` runs
(`create_app`: the same routes, batcher, deadlines, quality gate and warm-up), behind Ray's HTTP proxy.

Chosen over "the engine as a deployment behind a FastAPI proxy deployment": that design adds a second actor hop per
request (proxy -> FastAPI replica -> engine replica), and the micro-batcher would then batch only what one FastAPI
replica forwards. With `@serve.ingress` a request makes one hop, proxy -> replica, and batches with the other
requests on that replica (BENCHMARKS.md, "Ray Serve", has the measured overhead).

What Ray Serve adds to each replica:
- readiness: Serve routes to a replica only after its constructor, the app's lifespan (load, check, warm) and
  `check_health` have passed, so a cold replica never answers;
- the `X-Replica` response header, naming the replica that answered;
- per-replica metrics: each replica serves its own Prometheus registry on a free port of its node and, when
  `RANK_RAY_TARGETS_DIR` is set, writes that address as a Prometheus `file_sd` target (deploy/ray/prometheus.yml);
- the hot swap: a new `user_config` ({model_dir, bundle_dir}) in a Serve config redeploy reaches every replica's
  `reconfigure`, which loads, checks and swaps the engine as POST /admin/reload does, one replica at a time; a
  replica whose reload is refused keeps serving the old model and Serve reports the deployment unhealthy.

Run it with `make serve-ray` (deploy/ray/serve.yaml). Importing this module needs the `ray` extra.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client import start_http_server
from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.errors import parse_body
from service.lifecycle import AppState
from service.phase import Phase
from service.protocol import RankRequest, RankResponse
from service.routes import rank_body
from service.settings import Settings

log = logging.getLogger("service")


def replica_name() -> str:
    """This replica's id as Ray Serve names it (unique within the deployment)."""
    return str(serve.get_replica_context().replica_id.unique_id)


class ReplicaHeader:
    """Adds `X-Replica: <id>` to every HTTP response, so a client or a load test can tell the replicas apart."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (b"x-replica", replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)


@dataclass
class ReplicaMetrics:
    """Where one replica serves its own registry, and the file_sd target file that announces it (if any)."""

    address: str
    target_file: Path | None

    @classmethod
    def start(cls, state: AppState, replica: str) -> ReplicaMetrics:
        settings = state.settings
        server, _ = start_http_server(0, addr=settings.host, registry=state.metrics.registry)
        address = f"{settings.host}:{server.server_address[1]}"
        target_file = None
        if settings.ray_targets_dir is not None:
            settings.ray_targets_dir.mkdir(parents=True, exist_ok=True)
            target_file = settings.ray_targets_dir / f"{replica}.json"
            tmp = target_file.with_suffix(".tmp")
            tmp.write_text(json.dumps([{"targets": [address], "labels": {"replica": replica}}]))
            tmp.replace(target_file)  # Prometheus never reads half a file
        log.info("replica %s: metrics on http://%s/metrics", replica, address)
        return cls(address, target_file)


def build_replica_app() -> FastAPI:
    """The app of one replica, built on the replica when it starts, with settings from its RANK_* environment (the
    Serve config's `runtime_env.env_vars`). Loading and warming happen next, in the app's lifespan. No gRPC server
    per replica: replicas on one node would contend for its port, and callers reach replicas through Ray's proxy."""
    app = create_app(Settings(grpc_port=0))
    replica = replica_name()
    app.add_middleware(ReplicaHeader, replica=replica)  # type: ignore[arg-type]
    app.state.replica_metrics = ReplicaMetrics.start(app.state.rank, replica)
    return app


@serve.deployment(
    # Defaults for a replica; deploy/ray/serve.yaml sets replicas, autoscaling and the rest per deployment.
    max_ongoing_requests=64,
    health_check_period_s=2,
    graceful_shutdown_timeout_s=10,
    logging_config={"enable_access_log": False},
)
@serve.ingress(build_replica_app)
class RankReplica:
    """One replica: the service's app, plus what Ray Serve calls on it (health, reconfigure, a handle method).
    serve.ingress builds the app after this class's constructor, so everything here reads it lazily."""

    app: FastAPI  # set by serve.ingress's wrapper
    serving: tuple[Path, Path] | None = None  # (model_dir, bundle_dir) once a reconfigure changed them

    def _state(self) -> AppState:
        state: AppState = self.app.state.rank
        return state

    async def check_health(self) -> None:
        """Serve's health probe: a replica that is not READY (starting, draining) gets no traffic."""
        phase = self._state().lifecycle.phase
        if phase is not Phase.READY:
            raise RuntimeError(f"replica {replica_name()} is {phase}")

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """A Serve config's `user_config`: {model_dir, bundle_dir}. New paths are loaded, checked and swapped in as
        a hot reload does (a refusal raises, and this replica keeps serving what it served); the paths it already
        serves are left alone (Serve calls this once at start, after the lifespan has loaded them)."""
        state = self._state()
        serving = self.serving or (state.settings.model_dir, state.settings.bundle_dir)
        wanted = (Path(config.get("model_dir", serving[0])), Path(config.get("bundle_dir", serving[1])))
        if wanted == serving:
            return
        swapped = await state.engines.reload(*wanted)
        self.serving = wanted
        log.info("replica %s: %s", replica_name(), swapped)

    async def rank(self, body: dict[str, Any]) -> RankResponse:
        """/rank without HTTP, for a caller holding a DeploymentHandle (`handle.rank.remote(body)`): no proxy hop
        and no JSON over HTTP. Bad input raises RequestError, naming the field, as /rank answers 422."""
        state = self._state()
        request = parse_body(RankRequest, body)
        engine = state.engines.current(request.query)
        outcome, timing_ms = await state.serve(engine, engine.prepare_rank(request), request.timeout_ms, "/rank")
        return rank_body(outcome, timing_ms, uuid.uuid4().hex)

    async def __del__(self) -> None:
        # Serve awaits this when it stops the replica; the wrapper's own __del__ (next in the MRO) runs the app's
        # shutdown, which finishes what the batchers hold.
        app = getattr(self, "app", None)  # None when the replica failed before its app was built
        metrics: ReplicaMetrics | None = getattr(app.state, "replica_metrics", None) if app is not None else None
        if metrics is not None and metrics.target_file is not None:
            metrics.target_file.unlink(missing_ok=True)
        parent = getattr(super(), "__del__", None)
        if parent is not None:
            await parent()


app = RankReplica.bind()  # type: ignore[attr-defined]  # serve.deployment's return type
