"""The gRPC API (service/rpc/): a real grpcio client against the server the app starts beside HTTP, on the toy
artifacts. Rank and Rerank answer what /rank and /rerank answer; the health service follows the service's life;
reflection lists the services; each failure has its status code and names the field; API keys hold here too."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from loadtests.process import free_port
from service.app import create_app
from service.lifecycle import AppState
from service.metrics import Metrics
from service.rpc import rank_pb2 as pb
from service.rpc import rank_pb2_grpc
from service.rpc.server import SERVICE, RpcServer, RpcStartError
from training.paths import ROOT

from .conftest import serving_settings
from .toy_artifacts import ToyArtifacts

KEY = "team-g:0123456789abcdef-grpc"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def served(toy: ToyArtifacts) -> Iterator[tuple[TestClient, grpc.Channel]]:
    """The app over HTTP (TestClient) and a channel to its gRPC server; without the result and candidate caches, so
    that each protocol's answer is computed, not one read from what the other left."""
    port = free_port()
    settings = serving_settings(toy, grpc_port=port, result_cache_size=0, candidate_cache_size=0)
    with (
        TestClient(create_app(settings)) as client,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield client, channel


def health(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def queries(toy: ToyArtifacts) -> list[str]:
    return [json.loads(line)["text"] for line in (toy.data / "queries.jsonl").read_text().splitlines()]


def test_rank_answers_what_http_answers_for_100_queries(toy: ToyArtifacts, served) -> None:
    client, channel = served
    stub = rank_pb2_grpc.RankerStub(channel)
    texts = (queries(toy) * 5)[:100]
    for i, text in enumerate(texts):
        body: dict[str, Any] = {"query": text, "top_k": 5 + i % 3, "num_candidates": 30 + 10 * (i % 2)}
        message = pb.RankRequest(query=text, top_k=body["top_k"], num_candidates=body["num_candidates"])
        if i % 10 == 0:
            body["filters"] = {"glass": ["coupe", "highball"]}
            message.filters["glass"].values.extend(["coupe", "highball"])
        if i % 10 == 5:
            body["explain"] = message.explain = True
        http = client.post("/rank", json=body).json()
        reply = stub.Rank(message, timeout=10)
        assert [(r.id, r.score, r.rank, r.title) for r in reply.results] == [
            (r["id"], r["score"], r["rank"], r["title"]) for r in http["results"]
        ]
        assert (reply.model_version, reply.bundle_version) == (http["model_version"], http["bundle_version"])
        if message.explain:
            explained = [MessageToDict(r.explanation) for r in reply.results]
            assert explained == [r["explanation"] for r in http["results"]]
        else:
            assert not any(r.HasField("explanation") for r in reply.results)
        assert set(reply.timing_ms) == set(http["timing_ms"])
    assert dict(reply.results[0].attributes) == http["results"][0]["attributes"]


def test_rerank_answers_what_http_answers_for_text_and_catalog_documents(toy: ToyArtifacts, served) -> None:
    client, channel = served
    stub = rank_pb2_grpc.RankerStub(channel)
    item_ids = [json.loads(line)["id"] for line in (toy.data / "items.jsonl").read_text().splitlines()][:3]
    for text in queries(toy)[:20]:
        documents: list[Any] = ["a gin fizz", {"id": item_ids[0]}, "hot coffee", {"id": item_ids[1]}]
        http = client.post(
            "/rerank", json={"query": text, "documents": documents, "top_n": 3, "return_documents": True}
        ).json()
        message = pb.RerankRequest(query=text, top_n=3, return_documents=True)
        for doc in documents:
            message.documents.append(pb.Document(text=doc) if isinstance(doc, str) else pb.Document(id=doc["id"]))
        reply = stub.Rerank(message, timeout=10)
        got = [(r.index, r.relevance_score, r.document.text, r.document.id) for r in reply.results]
        want = [
            (r["index"], r["relevance_score"], r["document"]["text"], r["document"].get("id", ""))
            for r in http["results"]
        ]
        assert got == want
        assert reply.model == http["model"]


@pytest.mark.parametrize(
    ("method", "message", "field"),
    [
        ("Rank", pb.RankRequest(query=""), "query"),
        ("Rank", pb.RankRequest(query="gin", top_k=0), "top_k"),
        ("Rank", pb.RankRequest(query="gin", top_k=50, num_candidates=20), "top_k"),
        (
            "Rank",
            pb.RankRequest(query="gin", filters={"no_such_attribute": pb.FilterValues(values=["red"])}),
            "filters.no_such_attribute",
        ),
        ("Rerank", pb.RerankRequest(query="gin"), "documents"),
        ("Rerank", pb.RerankRequest(query="gin", documents=[pb.Document()]), "documents.0"),
        ("Rerank", pb.RerankRequest(query="gin", documents=[pb.Document(id="no-such-item")]), "documents[0].id"),
    ],
)
def test_an_invalid_request_is_invalid_argument_naming_the_field(served, method: str, message, field: str) -> None:
    client, channel = served
    call = getattr(rank_pb2_grpc.RankerStub(channel), method)
    with pytest.raises(grpc.RpcError) as raised:
        call(message, timeout=10)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(f"{field}"), raised.value.details()
    # The same sentence as the HTTP answer's, for the same request.
    http = client.post(f"/{method.lower()}", json=_json(message)).json()
    assert raised.value.details() == http["error"]


def _json(message: Any) -> dict[str, Any]:
    """The JSON body of the same request (what a client of the HTTP API would send)."""
    body = MessageToDict(message, preserving_proto_field_name=True)
    body.setdefault("query", "")
    if isinstance(message, pb.RankRequest):
        body["filters"] = {k: v["values"] for k, v in body.get("filters", {}).items()} or None
        return {k: v for k, v in body.items() if v is not None}
    body["documents"] = [d.get("text", {"id": d["id"]} if "id" in d else {}) for d in body.get("documents", [])]
    return body


def test_the_reply_size_limit_is_the_body_limit(served) -> None:
    _, channel = served
    with pytest.raises(grpc.RpcError) as raised:
        rank_pb2_grpc.RankerStub(channel).Rank(pb.RankRequest(query="x" * 2_000_000), timeout=10)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_and_reflection(served) -> None:
    _, channel = served
    assert health(channel) == SERVING and health(channel, SERVICE) == SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
    names = {s.name for s in answer.list_services_response.service}
    assert names == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def test_health_is_not_serving_until_warm_and_while_draining_and_rank_is_unavailable(toy: ToyArtifacts) -> None:
    settings = serving_settings(toy, grpc_port=free_port())
    rpc = RpcServer(settings).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{rpc.port}") as channel:
            stub = rank_pb2_grpc.RankerStub(channel)
            assert health(channel) == NOT_SERVING  # listening, before any artifact is loaded
            with pytest.raises(grpc.RpcError) as raised:
                stub.Rank(pb.RankRequest(query="gin"), timeout=5)
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
            state = AppState(settings=settings, metrics=Metrics())
            rpc.attach(state)
            assert health(channel) == NOT_SERVING  # attached, still STARTING
            state.lifecycle.become_ready()
            assert health(channel) == SERVING and health(channel, SERVICE) == SERVING
            state.lifecycle.begin_drain()
            assert health(channel) == NOT_SERVING
            with pytest.raises(grpc.RpcError) as raised:
                stub.Rank(pb.RankRequest(query="gin"), timeout=5)
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in raised.value.details()
    finally:
        rpc.stop(0)


def test_a_taken_port_is_one_sentence_that_says_what_to_do(toy: ToyArtifacts) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RpcStartError, match="RANK_GRPC_PORT to a free port"):
            RpcServer(serving_settings(toy, grpc_port=port)).start()


def test_a_full_queue_is_resource_exhausted_and_a_passed_deadline_deadline_exceeded(
    toy: ToyArtifacts, served, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    app = create_app(serving_settings(toy, grpc_port=port, max_queue=1))
    inside, release = threading.Event(), threading.Event()
    with TestClient(app) as client, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        engine = app.state.rank.engines.serving
        score = engine.scoring_graph.run

        def held(*args: object, **kwargs: object) -> np.ndarray:
            if not inside.is_set():
                inside.set()
                release.wait(30)
            return score(*args, **kwargs)

        stub = rank_pb2_grpc.RankerStub(channel)
        stub.Rank(pb.RankRequest(query="gin", num_candidates=40), timeout=10)  # embedded now: no encode stage
        monkeypatch.setattr(engine.scoring_graph, "run", held)
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(stub.Rank, pb.RankRequest(query="gin", num_candidates=41), timeout=30)
            assert inside.wait(30)  # the ranking thread is held inside the first request's graph run
            queued = pool.submit(stub.Rank, pb.RankRequest(query="gin", num_candidates=42), timeout=0.3)
            while app.state.rank.batcher.depth < 1:
                threading.Event().wait(0.005)
            with pytest.raises(grpc.RpcError) as full:
                stub.Rank(pb.RankRequest(query="gin", num_candidates=43), timeout=10)
            assert full.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in full.value.details()
            with pytest.raises(grpc.RpcError) as late:
                queued.result(30)
            # The caller's deadline is the job's timeout_ms, so the queued job is dropped, not ranked late.
            assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            release.set()
            assert first.result(30).results
        assert client.get("/health/ready").status_code == 200


def test_api_keys_hold_for_grpc_and_are_counted_by_id(toy: ToyArtifacts) -> None:
    port = free_port()
    with (
        TestClient(create_app(serving_settings(toy, grpc_port=port, api_keys=KEY))) as client,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = rank_pb2_grpc.RankerStub(channel)
        for call, message in (
            (stub.Rank, pb.RankRequest(query="gin")),
            (stub.Rerank, pb.RerankRequest(query="gin", documents=[pb.Document(text="gin")])),
        ):
            with pytest.raises(grpc.RpcError) as missing:
                call(message, timeout=10)
            assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert missing.value.details().startswith("authorization:")
            with pytest.raises(grpc.RpcError) as wrong:
                call(message, timeout=10, metadata=[("authorization", "Bearer 0123456789abcdef-wrong")])
            assert wrong.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert call(message, timeout=10, metadata=[("authorization", "Bearer 0123456789abcdef-grpc")])
        exposition = client.get("/metrics").text
        assert 'rank_api_key_requests_total{key_id="team-g"} 2.0' in exposition
        assert "0123456789abcdef-grpc" not in exposition


def test_a_key_over_its_quota_is_resource_exhausted_with_retry_after(toy: ToyArtifacts) -> None:
    port = free_port()
    settings = serving_settings(toy, grpc_port=port, api_keys=KEY, key_rate_limit=0.5, key_rate_burst=1)
    with TestClient(create_app(settings)), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rank_pb2_grpc.RankerStub(channel)
        key = [("authorization", "Bearer 0123456789abcdef-grpc")]
        assert stub.Rank(pb.RankRequest(query="gin"), timeout=10, metadata=key)
        with pytest.raises(grpc.RpcError) as over:
            stub.Rank(pb.RankRequest(query="gin"), timeout=10, metadata=key)
        assert over.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over its quota" in over.value.details()
        assert dict(over.value.trailing_metadata())["retry-after"] in {"1", "2"}


def test_the_generated_modules_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the modules")
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I.",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        "service/rpc/rank.proto",
    ]
    subprocess.run(command, cwd=ROOT, check=True)
    for name in ("rank_pb2.py", "rank_pb2.pyi", "rank_pb2_grpc.py"):
        generated = (tmp_path / "service/rpc" / name).read_text()
        assert generated == (ROOT / "service/rpc" / name).read_text(), f"service/rpc/{name} is stale: run make proto"
