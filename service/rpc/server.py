"""`RpcServer`: the gRPC API beside HTTP in the same process. `Ranker.Rank` and `Ranker.Rerank` run through the
very `AppState.serve` the HTTP routes use (engine, canary routing, batchers, deadlines, caches, shadow), and answer
the standard health service (`grpc.health.v1`: NOT_SERVING until warm-up ends and again while draining, following
the service's `Lifecycle`) and server reflection, so that grpcurl, grpc_health_probe and Kubernetes' gRPC probe
work without the .proto.

The server runs on an event loop of its own, on its own thread, started before the artifacts load (so the health
service answers NOT_SERVING while they load and warm) and handed the `AppState` once it exists (`attach`). A
handler awaits the batchers as an HTTP handler does: a batcher answers each request on the loop that asked.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.auth import KeyDenied, QuotaExceeded, retry_after_header
from service.batcher import DeadlineExceeded, QueueFull, ShuttingDown
from service.errors import NotReady, RequestError
from service.lifecycle import AppState
from service.logs import request_id_of
from service.phase import Phase
from service.rpc import convert, rank_pb2_grpc
from service.rpc import rank_pb2 as pb
from service.settings import Settings
from service.tracing import RequestTrace

log = logging.getLogger("service")

SERVICE = pb.DESCRIPTOR.services_by_name["Ranker"].full_name  # "fusion_rank.v1.Ranker"
T = TypeVar("T")


class RpcStartError(RuntimeError):
    """The gRPC server could not listen (its port taken, most often); one sentence that says what to do."""


def metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's metadata (keys are lower case in gRPC), text values only."""
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


def send_traceparent(context: grpc.aio.ServicerContext, trace: RequestTrace | None) -> None:
    """The request span's `traceparent` back to the caller, in the reply's trailing metadata."""
    if trace is not None and trace.traceparent is not None:
        context.set_trailing_metadata((("traceparent", trace.traceparent),))


class RankerServicer(rank_pb2_grpc.RankerServicer):
    """Rank and Rerank on the HTTP API's path; errors become gRPC status codes (`_answer`)."""

    def __init__(self, state: Callable[[], AppState | None]) -> None:
        self._state = state

    async def Rank(self, request: pb.RankRequest, context: grpc.aio.ServicerContext) -> pb.RankResponse:  # noqa: N802
        async def rank(state: AppState) -> pb.RankResponse:
            body = convert.rank_request(request, convert.timeout_ms(context.time_remaining()))
            engine = state.engines.current(request.request_key or body.query)
            job = engine.prepare_rank(body)
            called = metadata(context)
            trace = state.trace(f"/{SERVICE}/Rank", called)
            outcome, timing_ms = await state.serve(engine, job, body.timeout_ms, f"/{SERVICE}/Rank", trace)
            send_traceparent(context, trace)
            if state.engines.shadow is not None:
                await state.after_rank(engine, body, job.query, outcome)
            shown, explored = state.explore(outcome)
            request_id, _ = request_id_of(called)
            state.log_impression(request_id, engine, job.query, shown, explored)
            return convert.rank_reply(shown, timing_ms, request_id)

        return await self._answer(context, rank)

    async def Rerank(  # noqa: N802
        self, request: pb.RerankRequest, context: grpc.aio.ServicerContext
    ) -> pb.RerankResponse:
        async def rerank(state: AppState) -> pb.RerankResponse:
            body = convert.rerank_request(request, convert.timeout_ms(context.time_remaining()))
            engine = state.engines.current(request.request_key or body.query)
            job = engine.prepare_rerank(body)
            trace = state.trace(f"/{SERVICE}/Rerank", metadata(context))
            outcome, timing_ms = await state.serve(engine, job, body.timeout_ms, f"/{SERVICE}/Rerank", trace)
            send_traceparent(context, trace)
            return convert.rerank_reply(outcome, timing_ms)

        return await self._answer(context, rerank)

    async def _answer(self, context: grpc.aio.ServicerContext, handle: Callable[[AppState], Awaitable[T]]) -> T:
        """`handle` the request once the service is up and the caller's API key (when keys are set) is checked;
        each way a request can fail maps to its status code, with the HTTP answer's sentence as the details."""
        state = self._state()
        try:
            if state is None:
                raise NotReady("the service is not ready")
            state.admit(metadata(context).get("authorization", ""))
            return await handle(state)
        except KeyDenied as denied:
            code = grpc.StatusCode.UNAUTHENTICATED if denied.status == 401 else grpc.StatusCode.PERMISSION_DENIED
            await context.abort(code, str(denied))
        except QuotaExceeded as exc:
            retry = (("retry-after", retry_after_header(exc.retry_after_s)),)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), trailing_metadata=retry)
        except RequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except QueueFull as exc:
            state.metrics.rejections.labels("queue_full").inc()  # type: ignore[union-attr]
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry shortly")
        except DeadlineExceeded as exc:
            state.metrics.deadline_drops.inc()  # type: ignore[union-attr]
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"timeout_ms: {exc}")
        except (NotReady, ShuttingDown) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except Exception:
            log.exception("unhandled error in a gRPC call")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")
        raise AssertionError("context.abort returned")  # it raises; this line is never reached


class RpcServer:
    """A grpc.aio server on its own thread and event loop, serving `RankerServicer`, health and reflection."""

    def __init__(self, settings: Settings) -> None:
        self.address = f"{settings.host}:{settings.grpc_port}"
        self._max_message = settings.max_body_bytes
        self._state: AppState | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc", daemon=True)
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self.port = 0

    def start(self) -> RpcServer:
        """Listen (health NOT_SERVING until `attach`ed to a ready service); RpcStartError when it cannot."""
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        except Exception as exc:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise RpcStartError(
                f"cannot serve gRPC on {self.address} ({exc}); set RANK_GRPC_PORT to a free port, or 0 to turn gRPC off"
            ) from None
        log.info("gRPC on %s (%s, health, reflection)", self.address.rsplit(":", 1)[0] + f":{self.port}", SERVICE)
        return self

    async def _start(self) -> int:
        # The HTTP body limit is the message limit too: a bigger request gets RESOURCE_EXHAUSTED from gRPC itself.
        options = [("grpc.max_receive_message_length", self._max_message), ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options)
        rank_pb2_grpc.add_RankerServicer_to_server(RankerServicer(lambda: self._state), server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        port = server.add_insecure_port(self.address)
        await server.start()
        self._server = server
        await self._set(Phase.STARTING)
        return port

    async def _set(self, phase: Phase) -> None:
        assert self._health is not None
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if phase is Phase.READY
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE):  # "" is the whole server, as grpc_health_probe and Kubernetes ask by default
            await self._health.set(name, status)

    def attach(self, state: AppState) -> None:
        """Serve `state`'s engines; the health service follows its lifecycle from now on."""
        self._state = state
        state.lifecycle.watch(lambda phase: asyncio.run_coroutine_threadsafe(self._set(phase), self._loop))
        asyncio.run_coroutine_threadsafe(self._set(state.lifecycle.phase), self._loop).result(10)

    def stop(self, grace: float = 5.0) -> None:
        """Finish in-flight calls (up to `grace` seconds), then stop the loop and its thread."""
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result(grace + 5)
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
