"""The HTTP API against a real app (TestClient runs the lifespan) over the toy bundle and model (tests/toy_artifacts.py:
the unit loop), and the served rankings against offline scoring: the toy model's (unit loop) and the trained tiny
model's evaluation (`artifacts`)."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel
from index.runtime.hybrid import SOURCES
from index.runtime.text_encoder import TextEncoder
from service.app import create_app
from service.engine import RankingEngine
from service.metrics import STAGES, Metrics
from service.outcomes import RankOutcome
from service.phase import Lifecycle, Phase
from service.protocol import RankedItem, RankRequest, RankResponse, RerankResponse
from training.dataset import CandidateSpace, load_dataset
from training.export import load_checkpoint, served_dataset
from training.train import FeatureTensors, score_lists

from .conftest import TinyPipeline, serving_settings
from .toy_artifacts import ToyArtifacts


@pytest.fixture(scope="module")
def client(toy: ToyArtifacts) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings(toy))) as c:
        yield c


@pytest.fixture(scope="module")
def tiny_client(tiny: TinyPipeline) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings(tiny))) as c:
        yield c


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["items"] == 300 and body["provider"] == "CPUExecutionProvider"
    assert body["synthetic"] is True


def test_rank_contract(client: TestClient) -> None:
    r = client.post("/rank", json={"query": "pink gin cocktail in a coupe", "top_k": 5})
    assert r.status_code == 200
    body = r.json()
    assert [x["rank"] for x in body["results"]] == [1, 2, 3, 4, 5]
    scores = [x["score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(set(x) == {"id", "score", "rank", "title", "attributes"} for x in body["results"])
    assert set(body["timing_ms"]) == set(STAGES)
    assert body["model_version"] and body["bundle_version"]
    assert "rank;dur=" in r.headers["server-timing"]


def test_filters_restrict_results(client: TestClient) -> None:
    r = client.post("/rank", json={"query": "a drink", "top_k": 5, "filters": {"glass": ["coupe", "flute"]}})
    assert r.status_code == 200
    assert r.json()["results"] and all(x["attributes"]["glass"] in ("coupe", "flute") for x in r.json()["results"])


def test_served_ranking_equals_offline_evaluation(tiny: TinyPipeline, tiny_client: TestClient) -> None:
    checkpoint = load_checkpoint(tiny.model / "checkpoint.pt")
    k = tiny.config.num_candidates
    dataset = served_dataset(checkpoint)
    assert dataset.space == "learned"
    test = dataset.splits["test"]
    offline = score_lists(checkpoint.ranker, FeatureTensors.of(dataset, torch.device("cpu")), test)
    for q in range(5):
        expected = [dataset.items[i].id for i in test.candidates[q][np.argsort(-offline[q], kind="stable")]]
        served = tiny_client.post("/rank", json={"query": test.query_texts[q], "top_k": k, "num_candidates": k})
        assert [x["id"] for x in served.json()["results"]] == expected


@pytest.mark.parametrize("sources", [("learned", "dense", "bm25"), ("dense", "bm25")])
@pytest.mark.parametrize("prior", ["rrf", "lexical"])
def test_hybrid_served_ranking_equals_offline_evaluation(
    tiny: TinyPipeline, tiny_client: TestClient, sources: tuple[str, ...], prior: str
) -> None:
    """Whatever sources and prior the model was given, the engine fuses and scores what the offline lists hold."""
    checkpoint = load_checkpoint(tiny.model / "checkpoint.pt")
    k = tiny.config.num_candidates
    dataset = served_dataset(checkpoint)
    dataset = dataset.with_candidates(dataclasses.replace(dataset.candidates, sources=sources, prior=prior), k)
    test = dataset.splits["test"]
    offline = score_lists(checkpoint.ranker, FeatureTensors.of(dataset, torch.device("cpu")), test)
    serving = tiny_client.app.state.rank.engines.serving
    engine = RankingEngine(serving.bundle, serving.model, serving.encoder, serving.settings, Metrics())
    engine.sources, engine.prior = sources, prior
    for q in range(5):
        expected = [dataset.items[i].id for i in test.candidates[q][np.argsort(-offline[q], kind="stable")]]
        request = RankRequest(query=test.query_texts[q], top_k=k, num_candidates=k)
        assert engine.serve_one(engine.prepare_rank(request)).ids == expected


@pytest.fixture(scope="module")
def toy_dataset(toy: ToyArtifacts):
    """The toy catalog's queries with the candidate lists training would make for them (dense + BM25 so far)."""
    return load_dataset(toy.data, TextEncoder(toy.encoder), num_candidates=TOY_K)


TOY_K = 30


@pytest.mark.parametrize("sources", [SOURCES, ("dense", "bm25"), ("learned",)])
@pytest.mark.parametrize("prior", ["rrf", "lexical", "dense"])
def test_served_ranking_equals_the_toy_models_offline_scores(
    toy: ToyArtifacts, toy_dataset, client: TestClient, sources: tuple[str, ...], prior: str
) -> None:
    """The unit loop's ranking check: the engine's candidates (FAISS, BM25, RRF, dense fill-up), evidence, gather
    and ranker call give, score for score, what the offline lists (training's own candidate generation) and a numpy
    reference of the toy ranker give, for every source set and prior a model may have."""
    serving = client.app.state.rank.engines.serving
    bundle: Bundle = serving.bundle
    model: ExportedModel = serving.model
    learned = CandidateSpace("learned", bundle.retrieval, model.project_queries)
    candidates = dataclasses.replace(toy_dataset.candidates, space=learned, sources=sources, prior=prior)
    test = toy_dataset.with_candidates(candidates, TOY_K).splits["test"]
    weights = toy.weights()
    engine = RankingEngine(bundle, model, serving.encoder, serving.settings, Metrics(), serving.document_encoder)
    engine.sources, engine.prior = sources, prior
    for q in range(len(test)):
        rows = test.candidates[q]
        owner = np.zeros(len(rows), np.int64)
        expected = weights.reference_scores(
            test.query_emb[q : q + 1],
            bundle.cand_kv[rows],
            bundle.text[rows],
            bundle.mask[rows],
            test.retrieval[q],
            test.evidence[q],
            owner,
        )
        request = RankRequest(query=test.query_texts[q], top_k=TOY_K, num_candidates=TOY_K)
        served = engine.serve_one(engine.prepare_rank(request))
        order = np.argsort(-expected, kind="stable")
        assert served.ids == [toy_dataset.items[i].id for i in rows[order]]
        assert served.scores == pytest.approx(expected[order].tolist(), abs=1e-5)


def test_zero_shot_served_ranking_is_the_offline_prior(toy: ToyArtifacts, toy_dataset) -> None:
    """Without a model the prior is the score: the served order is the offline zero-shot lists' prior order."""
    settings = serving_settings(toy, bundle_dir=toy.zero_shot_bundle, model_dir=toy.no_model)
    test = toy_dataset.splits["test"]
    with TestClient(create_app(settings)) as zero_shot:
        assert zero_shot.get("/health/ready").json()["model_version"] == "zero-shot"
        for q in range(len(test)):
            order = np.argsort(-test.evidence[q, :, 0], kind="stable")
            body = {"query": test.query_texts[q], "top_k": TOY_K, "num_candidates": TOY_K}
            served = zero_shot.post("/rank", json=body).json()
            assert [x["id"] for x in served["results"]] == [toy_dataset.items[i].id for i in test.candidates[q][order]]
            assert served["model_version"] == "zero-shot"


def test_rerank_in_cohere_shape(client: TestClient) -> None:
    ids = client.post("/rank", json={"query": "green drink", "top_k": 3}).json()["results"]
    documents = [{"id": ids[2]["id"]}, "a green cocktail with mint", {"text": "blue drink"}, {"id": ids[0]["id"]}]
    r = client.post(
        "/rerank", json={"query": "green drink", "documents": documents, "top_n": 3, "return_documents": True}
    )
    assert r.status_code == 200
    body = r.json()
    assert len(body["results"]) == 3 and set(body) >= {"id", "results", "meta"}
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert sorted({x["index"] for x in body["results"]}) == sorted(x["index"] for x in body["results"])
    for x in body["results"]:
        doc = documents[x["index"]]
        if isinstance(doc, str):
            assert x["document"] == {"text": doc}
        elif "id" in doc:
            assert x["document"]["id"] == doc["id"]
    plain = client.post("/rerank", json={"query": "green drink", "documents": ["a", "b"]}).json()
    assert len(plain["results"]) == 2 and "document" not in plain["results"][0]


def test_cache_misses_are_encoded_off_the_ranking_thread(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """MiniLM runs on the encode threads only (queries on one, /rerank texts on another), and ranks as the inline
    path does."""
    engine = client.app.state.rank.engines.serving
    threads: list[str] = []
    encode = engine.encoder.encode

    def spy(texts: list[str], *args: object, **kwargs: object) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return encode(texts)

    monkeypatch.setattr(engine.encoder, "encode", spy)
    fresh = f"a never seen query {uuid.uuid4()}"
    body = client.post("/rank", json={"query": fresh, "top_k": 5}).json()
    assert client.post("/rerank", json={"query": "gin", "documents": ["a mint drink", "rum"]}).status_code == 200
    assert threads == ["encode-stage", "document-stage"]
    assert body["timing_ms"]["encode"] > 0
    inline = engine.serve_one(engine.prepare_rank(RankRequest(query=fresh, top_k=5)))
    assert [x["id"] for x in body["results"]] == inline.ids


def test_a_query_being_encoded_does_not_hold_up_cached_ones(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No head-of-line blocking: while a never-seen query is stuck in MiniLM, a cached one is answered."""
    engine = client.app.state.rank.engines.serving
    client.post("/rank", json={"query": "a cached gin", "top_k": 3})
    release, entered = threading.Event(), threading.Event()
    encode = engine.encoder.encode

    def stuck(texts: list[str], *args: object, **kwargs: object) -> np.ndarray:
        entered.set()
        release.wait(30)
        return encode(texts)

    monkeypatch.setattr(engine.encoder, "encode", stuck)
    statuses: list[int] = []
    miss = threading.Thread(
        target=lambda: statuses.append(client.post("/rank", json={"query": f"new {uuid.uuid4()}"}).status_code)
    )
    miss.start()
    try:
        assert entered.wait(30)
        assert client.post("/rank", json={"query": "a cached gin", "top_k": 3}).status_code == 200
        assert not statuses  # the miss is still being encoded
    finally:
        release.set()
        miss.join(30)
    assert statuses == [200]


def test_a_burst_of_never_seen_queries_leaves_cached_ones_one_ranker_call_of_waiting(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight misses, each encode call stuck 0.25 s in MiniLM, arrive together; cached requests sent meanwhile wait for
    the ranking thread at most about one ranker call (the batch in front of them, plus thread-scheduling slack),
    never for an encode."""
    engine = client.app.state.rank.engines.serving
    cached = ["a cached gin", "a cached rum", "a cached mint"]
    for query in cached:
        assert client.post("/rank", json={"query": query, "top_k": 3}).status_code == 200
    encode = engine.encoder.encode

    def slow(texts: list[str], *args: object, **kwargs: object) -> np.ndarray:
        time.sleep(0.25)
        return encode(texts)

    monkeypatch.setattr(engine.encoder, "encode", slow)
    with ThreadPoolExecutor(8) as pool:
        misses = [pool.submit(client.post, "/rank", json={"query": f"new {uuid.uuid4()}"}) for _ in range(8)]
        time.sleep(0.05)  # the misses are in MiniLM now
        hits = [client.post("/rank", json={"query": query, "top_k": 3}).json() for query in cached * 3]
        assert not all(miss.done() for miss in misses)  # the hits were answered while misses were encoding
        statuses = [miss.result().status_code for miss in misses]
    assert statuses == [200] * 8
    one_ranker_call = max(hit["timing_ms"]["rank"] for hit in hits)
    assert max(hit["timing_ms"]["queue"] for hit in hits) <= one_ranker_call + 25.0  # an encode would be 250


def test_minilm_takes_the_idle_threads_only_while_no_other_stage_has_work(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone, a query miss's or /rerank documents' MiniLM call is offered the idle threads (how many that is, is
    RANK_ENCODER_IDLE_THREADS's business); while the ranking thread works, the ranking thread keeps its core."""
    engine = client.app.state.rank.engines.serving
    assert engine.model is not None and engine.document_encoder is not engine.encoder
    calls: list[tuple[str, bool]] = []
    score = engine.scoring_graph.run
    ranking, release = threading.Event(), threading.Event()

    def recording(name: str, encode: Any) -> Any:
        def recorded(texts: list[str], *args: object, idle: bool = False, **kwargs: object) -> np.ndarray:
            calls.append((name, idle))
            return encode(texts, *args, idle=idle, **kwargs)

        return recorded

    def held(*args: object, **kwargs: object) -> np.ndarray:
        if not release.is_set():
            ranking.set()
            release.wait(30)
        return score(*args, **kwargs)

    def requests() -> list[tuple[str, dict]]:
        texts = [f"a gin fizz {uuid.uuid4()}", "a rum punch"]
        return [("/rank", {"query": f"new {uuid.uuid4()}"}), ("/rerank", {"query": "a cached gin", "documents": texts})]

    assert client.post("/rank", json={"query": "a cached gin"}).status_code == 200
    monkeypatch.setattr(engine.encoder, "encode", recording("query", engine.encoder.encode))
    monkeypatch.setattr(engine.document_encoder, "encode", recording("documents", engine.document_encoder.encode))
    for path, body in requests():
        assert client.post(path, json=body).status_code == 200
    assert calls == [("query", True), ("documents", True)]
    monkeypatch.setattr(engine.scoring_graph, "run", held)
    with ThreadPoolExecutor(3) as pool:
        # A cached query at a depth not served yet: no MiniLM, but not in the result cache either, so it is ranked.
        busy = pool.submit(client.post, "/rank", json={"query": "a cached gin", "num_candidates": 90})
        assert ranking.wait(30)  # the ranking thread is in a ranker call
        sent = [pool.submit(client.post, path, json=body) for path, body in requests()]
        deadline = time.monotonic() + 30
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        assert [r.result(30).status_code for r in [busy, *sent]] == [200, 200, 200]
    assert sorted(calls[2:]) == [("documents", False), ("query", False)]


def test_int8_misses_are_encoded_one_at_a_time_each_answered_when_its_own_is_done(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The int8 graph embeds one text per call, so a burst of misses is taken one by one: the first is not held
    until the last is encoded (with a batch of four, every one would report the whole batch's encode)."""
    engine = client.app.state.rank.engines.serving
    assert engine.encoder.variant == "int8"
    calls: list[int] = []
    encode = engine.encoder.encode

    def slow(texts: list[str], *args: object, **kwargs: object) -> np.ndarray:
        calls.append(len(texts))
        time.sleep(0.2)
        return encode(texts)

    monkeypatch.setattr(engine.encoder, "encode", slow)
    with ThreadPoolExecutor(4) as pool:
        misses = [pool.submit(client.post, "/rank", json={"query": f"new {uuid.uuid4()}"}) for _ in range(4)]
        bodies = [miss.result().json() for miss in misses]
    assert calls == [1, 1, 1, 1]
    encodes = sorted(body["timing_ms"]["encode"] for body in bodies)
    assert encodes[0] < 400 and encodes[-1] < 400  # each its own encode (200 ms), never the batch's 800


def test_the_service_sets_the_gil_switch_interval_it_is_configured_with(toy: ToyArtifacts) -> None:
    """Python's default (5 ms) lets the event loop hold the GIL that long while the ranking thread waits; the
    service shortens it when it starts its threads."""
    settings = serving_settings(toy, switch_interval_us=300)
    before = sys.getswitchinterval()
    try:
        with TestClient(create_app(settings)):
            assert sys.getswitchinterval() == pytest.approx(300e-6)
    finally:
        sys.setswitchinterval(before)


def _keys(shape: type) -> set[str]:
    return set(shape.__required_keys__) | set(shape.__optional_keys__)  # type: ignore[attr-defined]


def test_bodies_have_exactly_the_documented_shapes(client: TestClient) -> None:
    """The response TypedDicts are not checked at run time (that is their point); this is where they are."""
    rank = client.post("/rank", json={"query": "gin", "top_k": 3}).json()
    TypeAdapter(RankResponse).validate_python(rank, strict=True)
    assert set(rank) == _keys(RankResponse)
    assert all(set(x) == _keys(RankedItem) - {"explanation"} for x in rank["results"])  # only with explain
    explained = client.post("/rank", json={"query": "gin", "top_k": 3, "explain": True}).json()
    TypeAdapter(RankResponse).validate_python(explained, strict=True)
    assert all(set(x) == _keys(RankedItem) for x in explained["results"])
    rerank = client.post(
        "/rerank", json={"query": "gin", "documents": ["a", {"id": rank["results"][0]["id"]}], "return_documents": True}
    ).json()
    TypeAdapter(RerankResponse).validate_python(rerank, strict=True)
    assert set(rerank) == _keys(RerankResponse)
    assert rerank["meta"]["api_version"] == {"version": "2"} and rerank["meta"]["billed_units"] == {"search_units": 1}
    assert rerank["model"].startswith("fusion-ranker-") and len(rerank["id"]) == 36


def test_openapi_documents_the_response_shapes(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()

    def ok(path: str) -> dict:
        return schema["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]

    assert ok("/rank") == {"$ref": "#/components/schemas/RankResponse"}
    for path, name in (("/v1/rerank", "V1Response"), ("/v2/rerank", "CohereV2Response")):
        assert ok(path) == {"$ref": f"#/components/schemas/{name}"}
    shapes = ok("/rerank")["anyOf"]
    assert {"$ref": "#/components/schemas/RerankResponse"} in shapes
    assert {"type": "array", "items": {"$ref": "#/components/schemas/TeiRank"}} in shapes


def test_rerank_of_ids_agrees_with_rank(tiny_client: TestClient) -> None:
    """On the trained model; the toy one may not agree: a candidate's evidence is computed within its own list (100
    candidates for /rank, the 5 documents here), and the toy's score is mostly that prior."""
    client = tiny_client
    ranked = client.post("/rank", json={"query": "whiskey sour", "top_k": 5}).json()["results"]
    reversed_docs = [{"id": x["id"]} for x in reversed(ranked)]
    reranked = client.post("/rerank", json={"query": "whiskey sour", "documents": reversed_docs}).json()["results"]
    assert [reversed_docs[x["index"]]["id"] for x in reranked] == [x["id"] for x in ranked]


BAD_REQUESTS = [
    ("/rank", {"query": ""}, "query"),
    ("/rank", {"query": "   \u0000\u200b  "}, "query"),
    ("/rank", {"query": "x" * 10_000}, "query"),
    ("/rank", {"query": "gin", "top_k": 0}, "top_k"),
    ("/rank", {"query": "gin", "top_k": 20, "num_candidates": 10}, "top_k"),
    ("/rank", {"query": "gin", "num_candidates": 5000}, "num_candidates"),
    ("/rank", {"query": "gin", "filters": {"flavour": "sweet"}}, "filters.flavour"),
    ("/rank", {"query": "gin", "filters": {"glass": "bucket"}}, "filters.glass"),
    ("/rank", {"query": 42}, "query"),
    ("/rank", {"query": "gin", "top_k": "3"}, "top_k"),
    ("/rank", {"query": "gin", "extra": 1}, "extra"),
    ("/rank", {}, "query"),
    ("/rerank", {"query": "gin", "documents": []}, "documents"),
    ("/rerank", {"query": "gin", "documents": [{"id": "nope"}]}, "documents[0].id"),
    ("/rerank", {"query": "gin", "documents": [{"id": "a", "text": "b"}]}, "documents"),
    ("/rerank", {"query": "gin", "documents": ["ok", ""]}, "documents[1]"),
    ("/rerank", {"query": "gin", "documents": ["a"], "top_n": 0}, "top_n"),
]


@pytest.mark.parametrize(("route", "body", "field"), BAD_REQUESTS)
def test_bad_requests_get_4xx_naming_the_field(client: TestClient, route: str, body: dict, field: str) -> None:
    r = client.post(route, json=body)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.json()["error"]


@pytest.mark.parametrize("body", [{"top_k": 20, "num_candidates": 10}, {"top_k": 100, "num_candidates": 99}])
def test_top_k_over_num_candidates_is_422_naming_top_k(client: TestClient, body: dict) -> None:
    r = client.post("/rank", json={"query": "gin", **body})
    assert r.status_code == 422
    assert r.json()["field"] == "top_k"
    assert r.json()["error"] == f"top_k: ({body['top_k']}) must not exceed num_candidates ({body['num_candidates']})"


@pytest.mark.parametrize("raw", [b"not json", b'{"query": ', b"[1, 2]", b""])
def test_non_json_bodies_get_4xx(client: TestClient, raw: bytes) -> None:
    r = client.post("/rank", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    assert r.json()["error"]


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/rank", json={"query": "gin", "top_k": 1})
    client.post("/rank", json={"query": ""})
    text = client.get("/metrics").text
    assert 'rank_stage_seconds_bucket{le="5e-05",route="/rank",stage="rank"}' in text
    assert 'rank_http_requests_total{route="/rank",status="200"}' in text
    assert 'rank_http_requests_total{route="/rank",status="422"}' in text
    assert "rank_model_info{" in text and 'provider="CPUExecutionProvider"' in text


def test_served_time_is_split_by_whether_minilm_ran(client: TestClient) -> None:
    registry = client.app.state.rank.metrics.registry

    def served(encoded: str) -> float:
        version = client.app.state.rank.engines.serving.model_version
        labels = {"route": "/rank", "encoded": encoded, "model_version": version}
        return registry.get_sample_value("rank_served_seconds_count", labels) or 0.0

    before = served("yes"), served("no")
    query = "a query no other test sends, so the first call encodes it"
    assert client.post("/rank", json={"query": query}).status_code == 200
    assert client.post("/rank", json={"query": query}).status_code == 200
    assert (served("yes"), served("no")) == (before[0] + 1, before[1] + 1)


def test_a_repeated_query_is_answered_from_the_result_cache_and_ranks_exactly_the_same(client: TestClient) -> None:
    registry = client.app.state.rank.metrics.registry

    def lookups() -> tuple[float, ...]:  # (result hits, result misses, candidate hits, candidate misses) so far
        return tuple(
            registry.get_sample_value(f"rank_{cache}_cache_total", {"result": r}) or 0.0
            for cache in ("result", "candidate")
            for r in ("hit", "miss")
        )

    def moved(**by: float) -> tuple[float, ...]:
        return tuple(b + by.get(name, 0.0) for b, name in zip(before, ("rh", "rm", "ch", "cm"), strict=True))

    query = "a query for the result cache, sent by no other test"
    before = lookups()
    first = client.post("/rank", json={"query": query, "top_k": 10, "num_candidates": 40}).json()
    assert lookups() == moved(rm=1, cm=1)
    again = client.post("/rank", json={"query": query, "top_k": 10, "num_candidates": 40}).json()
    assert lookups() == moved(rh=1, rm=1, cm=1)  # a result hit looks up no candidates
    assert [(x["id"], x["score"]) for x in again["results"]] == [(x["id"], x["score"]) for x in first["results"]]
    assert set(again["timing_ms"]) == set(STAGES)
    # top_k is cut from every candidate's scores, so a shorter list is the same answer's head.
    head = client.post("/rank", json={"query": query, "top_k": 3, "num_candidates": 40}).json()
    assert lookups() == moved(rh=2, rm=1, cm=1)
    assert [x["id"] for x in head["results"]] == [x["id"] for x in first["results"][:3]]
    # Another depth is another candidate list; a filtered request is never looked up (its rows depend on the filter).
    client.post("/rank", json={"query": query, "top_k": 10, "num_candidates": 50})
    assert lookups() == moved(rh=2, rm=2, cm=2)
    filtered = client.post("/rank", json={"query": query, "top_k": 3, "filters": {"glass": "coupe"}})
    assert filtered.status_code == 200 and lookups() == moved(rh=2, rm=2, cm=2)
    assert all(x["attributes"]["glass"] == "coupe" for x in filtered.json()["results"])


def test_a_result_cache_miss_with_known_candidates_reuses_them(toy: ToyArtifacts, client: TestClient) -> None:
    served = client.app.state.rank.engines.serving  # reuse the loaded artifacts: only the setting is under test
    metrics = Metrics()
    settings = serving_settings(toy, result_cache_size=0)
    engine = RankingEngine(served.bundle, served.model, served.encoder, settings, metrics, served.document_encoder)
    request = RankRequest(query="a query for the candidate cache alone", top_k=10)
    outcomes = [engine.serve_one(engine.prepare_rank(request)) for _ in range(2)]
    assert isinstance(outcomes[0], RankOutcome) and isinstance(outcomes[1], RankOutcome)
    assert (outcomes[0].ids, outcomes[0].scores) == (outcomes[1].ids, outcomes[1].scores)
    count = metrics.registry.get_sample_value
    assert (
        count("rank_candidate_cache_total", {"result": "hit"}),
        count("rank_candidate_cache_total", {"result": "miss"}),
    ) == (1, 1)
    assert not count("rank_result_cache_total", {"result": "hit"})


def test_without_the_caches_every_lookup_misses_and_rankings_do_not_change(
    toy: ToyArtifacts, client: TestClient
) -> None:
    cached = client.app.state.rank.engines.serving  # reuse the loaded artifacts: only the settings are under test
    metrics = Metrics()
    settings = serving_settings(toy, candidate_cache_size=0, result_cache_size=0)
    uncached = RankingEngine(cached.bundle, cached.model, cached.encoder, settings, metrics, cached.document_encoder)
    request = RankRequest(query="another query for the candidate cache", top_k=10)
    for _ in range(2):  # the second pass: a hit in the cached engine, a miss in the other
        with_cache = cached.serve_one(cached.prepare_rank(request))
        without = uncached.serve_one(uncached.prepare_rank(request))
        assert isinstance(with_cache, RankOutcome) and isinstance(without, RankOutcome)
        assert (with_cache.ids, with_cache.scores) == (without.ids, without.scores)
    count = metrics.registry.get_sample_value
    assert count("rank_candidate_cache_total", {"result": "miss"}) == 2
    assert not count("rank_candidate_cache_total", {"result": "hit"})
    assert not count("rank_result_cache_total", {"result": "hit"})


def test_a_query_log_warms_the_query_cache_and_an_unreadable_one_does_not_stop_the_start(
    toy: ToyArtifacts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "queries.log"  # JSONL and plain lines; a line without text and one too long to be a query
    log.write_text('{"text": "  Pink   gin in a coupe "}\n\nsmoky mezcal sour\n{"id": "q9"}\n' + "x" * 9000 + "\n")
    app = create_app(serving_settings(toy, warm_queries_file=log))
    with caplog.at_level(logging.INFO, logger="service"), TestClient(app) as client:
        registry = client.app.state.rank.metrics.registry
        version = client.app.state.rank.engines.serving.model_version

        def served(encoded: str) -> float:
            labels = {"route": "/rank", "encoded": encoded, "model_version": version}
            return registry.get_sample_value("rank_served_seconds_count", labels) or 0.0

        for query in ("Pink gin  in a coupe", "smoky mezcal sour"):  # normalised as requests are
            assert client.post("/rank", json={"query": query}).status_code == 200
        assert (served("yes"), served("no")) == (0, 2)
        assert client.post("/rank", json={"query": "a query not in the log"}).status_code == 200
        assert served("yes") == 1
    assert "2 queries embedded" in caplog.text and "1 lines were not a valid query" in caplog.text

    caplog.clear()
    app = create_app(serving_settings(toy, warm_queries_file=tmp_path / "missing.log"))
    with caplog.at_level(logging.WARNING, logger="service"), TestClient(app) as client:
        assert client.get("/health/ready").status_code == 200
    assert "query cache starts cold" in caplog.text and "missing.log" in caplog.text


def test_not_ready_until_started(toy: ToyArtifacts) -> None:
    client = TestClient(create_app(serving_settings(toy)))  # no context manager: the lifespan has not run
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "starting"
    assert client.post("/rank", json={"query": "gin"}).status_code == 503


def test_lifecycle_is_one_state_machine_that_drives_the_ready_gauge() -> None:
    metrics = Metrics()
    lifecycle = Lifecycle(metrics.ready)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("rank_ready")

    assert lifecycle.phase is Phase.STARTING and gauge() == 0
    assert lifecycle.become_ready() and lifecycle.phase is Phase.READY and gauge() == 1
    assert lifecycle.begin_drain() and lifecycle.phase is Phase.DRAINING and gauge() == 0
    assert not lifecycle.begin_drain()  # a second SIGTERM: already draining
    assert not lifecycle.become_ready() and lifecycle.phase is Phase.DRAINING  # nothing leaves DRAINING
    early = Lifecycle(Metrics().ready)
    assert early.begin_drain() and not early.become_ready()  # a stop during start-up wins


def test_after_shutdown_readiness_says_draining(client: TestClient) -> None:
    app = create_app(client.app.state.rank.settings, engine=client.app.state.rank.engines.serving, metrics=Metrics())
    with TestClient(app) as running:
        assert running.get("/health/ready").status_code == 200
    after = TestClient(app)  # the lifespan has run its shutdown
    ready = after.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert after.post("/rank", json={"query": "gin"}).json()["error"] == "the service is shutting down"
    assert "rank_ready 0.0" in after.get("/metrics").text


def test_warm_up_starts_whatever_the_catalog_titles_look_like(client: TestClient) -> None:
    """Warm-up sends catalog titles as queries; a catalog whose titles are longer than a query may be (10,000
    characters against the 8,192 limit) must still start."""
    serving = client.app.state.rank.engines.serving
    long_titles = dataclasses.replace(serving.bundle, titles=["gin " * 2500] * serving.bundle.size)
    engine = RankingEngine(long_titles, serving.model, serving.encoder, serving.settings, Metrics())
    assert len(long_titles.titles[0]) == 10_000 > serving.settings.max_query_chars
    engine.warm(3)


def test_cli_refuses_missing_artifacts_with_one_sentence(tmp_path) -> None:
    """No model card means zero-shot serving, which still needs a bundle: the missing bundle is the sentence."""
    args = ["--model-dir", str(tmp_path), "--bundle-dir", str(tmp_path / "bundle")]
    done = subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no bundle at" in done.stderr and "Traceback" not in done.stderr
