"""OpenTelemetry traces (service/tracing.py), exported over OTLP/HTTP to a real receiver in the test
(loadtests/otlp_sink.py, which decodes the protobuf it gets): a request span under the caller's W3C traceparent,
with a child per stage and the model version and batch size as attributes, over HTTP and gRPC; nothing when the
OTEL variables are unset."""

from __future__ import annotations

import grpc
import pytest
from fastapi.testclient import TestClient

from loadtests.otlp_sink import OtlpSink
from loadtests.process import free_port
from service.app import create_app
from service.metrics import STAGES
from service.rpc import rank_pb2 as pb
from service.rpc import rank_pb2_grpc
from service.rpc.server import SERVICE

from .conftest import serving_settings
from .toy_artifacts import ToyArtifacts

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


def test_requests_are_traced_under_the_callers_traceparent_with_a_span_per_stage(
    toy: ToyArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    with OtlpSink() as sink:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "ranker-under-test")
        app = create_app(serving_settings(toy, grpc_port=port))
        with TestClient(app) as client, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = client.post("/rank", json={"query": "gin", "top_k": 3}, headers={"traceparent": TRACEPARENT})
            assert answer.status_code == 200
            version, trace_id, span_id, flags = answer.headers["traceparent"].split("-")
            assert (version, trace_id, flags) == ("00", TRACE_ID, "01") and span_id != CALLER_SPAN
            rerank = client.post("/rerank", json={"query": "gin", "documents": ["gin fizz", "coffee"]})
            assert rerank.status_code == 200 and rerank.headers["traceparent"].split("-")[1] != TRACE_ID  # a new trace
            stub = rank_pb2_grpc.RankerStub(channel)
            _, call = stub.Rank.with_call(pb.RankRequest(query="rum"), metadata=[("traceparent", TRACEPARENT)])
            grpc_traceparent = dict(call.trailing_metadata())["traceparent"]
            assert grpc_traceparent.split("-")[1] == TRACE_ID
            assert client.post("/rank", json={"query": ""}).status_code == 422  # invalid, never served: no span
        # The app's shutdown exported what its batch processor held.
        spans = sink.spans()

    assert {resource["service.name"] for resource, _ in spans} == {"ranker-under-test"}
    by_id = {span.span_id.hex(): span for _, span in spans}
    requests = [span for _, span in spans if span.name.startswith("/")]  # stage spans are named without a slash
    assert sorted(span.name for span in requests) == sorted(["/rank", "/rerank", f"/{SERVICE}/Rank"])
    for request in requests:
        children = [span for _, span in spans if span.parent_span_id == request.span_id]
        assert [child.name for child in sorted(children, key=lambda s: s.start_time_unix_nano)] == list(STAGES[:-1])
        assert all(request.start_time_unix_nano <= c.start_time_unix_nano for c in children)
        assert all(c.end_time_unix_nano <= request.end_time_unix_nano for c in children)
        attributes = {a.key: a.value for a in request.attributes}
        assert attributes["rank.model_version"].string_value == app.state.rank.engines.serving.model_version
        assert attributes["rank.batch.jobs"].int_value >= 1
    http_rank = next(span for span in requests if span.name == "/rank")
    assert http_rank.trace_id.hex() == TRACE_ID and http_rank.parent_span_id.hex() == CALLER_SPAN
    assert http_rank.span_id.hex() == span_id and http_rank.kind == http_rank.SPAN_KIND_SERVER
    assert by_id[grpc_traceparent.split("-")[2]].name == f"/{SERVICE}/Rank"


def test_without_an_otlp_endpoint_nothing_is_traced(toy: ToyArtifacts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    app = create_app(serving_settings(toy))
    assert app.state.rank.tracing is None
    with TestClient(app) as client:
        answer = client.post("/rank", json={"query": "gin"}, headers={"traceparent": TRACEPARENT})
        assert answer.status_code == 200 and "traceparent" not in answer.headers
