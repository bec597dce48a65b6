"""OpenTelemetry traces of the ranking requests, on when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the SDK and its OTLP/HTTP exporter read the other standard `OTEL_*`
variables themselves (service name, headers, sampler, batch delays). Off, nothing is imported and a request pays
one `is None` check.

A request is one SERVER span named by its route (the gRPC method path for gRPC calls), from the moment its job is
validated to its outcome, a child of the caller's W3C `traceparent` when one came with it, with one child span per
stage (`service.metrics.STAGES`, in the order a job
passes them). The stages run on the batchers' threads, where a batch's work is timed with one clock for all its
jobs (`service.timing.StageTimer`), so a child's duration is the stage's measured time, and the children are laid
end to end from the request's start in that order. The caller gets its span's `traceparent` back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.metrics import STAGES
from service.outcomes import Outcome

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
SERVICE_NAME = "fusion-rank"  # unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names it


@dataclass
class RequestTrace:
    """One request's span while it is served: `finish` it with the outcome, or `fail` it."""

    span: Span
    tracer: Tracer
    started_ns: int
    traceparent: str | None = None  # the span's, for the caller, once finished

    def finish(self, outcome: Outcome, timing_ms: Mapping[str, float]) -> None:
        """End the span with the model version, the batch's size and a child per stage, and keep its
        `traceparent` for the caller."""
        from opentelemetry.trace import set_span_in_context

        parent = set_span_in_context(self.span)
        at = self.started_ns
        for stage in STAGES[:-1]:  # every stage but "total", which is the request's own span
            took = int(timing_ms.get(stage, 0.0) * 1e6)
            self.tracer.start_span(stage, context=parent, start_time=at).end(end_time=at + took)
            at += took
        self.span.set_attributes(
            {
                "rank.model_version": outcome.model_version,
                "rank.batch.jobs": outcome.batch_jobs,
                "rank.results": len(outcome.scores),
            }
        )
        self.span.end()
        context = self.span.get_span_context()
        self.traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    def fail(self, error: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.record_exception(error)
        self.span.set_status(Status(StatusCode.ERROR, str(error)))
        self.span.end()


class Tracing:
    """The service's tracer provider, OTLP over HTTP with batched export."""

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME)})
        self.provider: TracerProvider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("service")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_environment(cls) -> Tracing | None:
        """Tracing when an OTLP endpoint is configured (and OTEL_SDK_DISABLED is not true), else None."""
        if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
            return None
        return cls() if any(os.environ.get(name) for name in ENDPOINT_VARIABLES) else None

    def start(self, route: str, carrier: Mapping[str, str]) -> RequestTrace:
        """A request's span, under the caller's `traceparent` in `carrier` (headers or gRPC metadata) if any."""
        from opentelemetry.trace import SpanKind

        started = time.time_ns()
        context = self._propagator.extract(carrier)
        span = self.tracer.start_span(route, context=context, kind=SpanKind.SERVER, start_time=started)
        return RequestTrace(span, self.tracer, started)

    def shutdown(self) -> None:
        """Export what is buffered, then stop."""
        self.provider.shutdown()
