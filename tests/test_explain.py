"""Explanations (`"explain": true`, service/explain.py) are faithful: read from the graph run that scored the hits,
prior + residual is the served score, attention sums to 1 over the modalities a hit has and is 0 for one it lacks,
and each source rank is that source's own search's. On the tiny trained pipeline (a real fusion ranker) and on the
toy zero-shot bundle; explain changes no ranking."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.schema import MODALITIES
from service.app import create_app
from service.engine import RankingEngine
from service.outcomes import RerankOutcome
from service.protocol import DocumentRef, RankRequest, RerankRequest

from .conftest import TinyPipeline, serving_settings
from .toy_artifacts import ToyArtifacts


@pytest.fixture(scope="module")
def client(tiny: TinyPipeline) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings(tiny))) as c:
        yield c


def own_ranks(engine: RankingEngine, query: str, depth: int) -> dict[str, dict[str, int]]:
    """Each source's own search for the served (normalised) query: item id -> 1-based rank."""
    bundle = engine.bundle
    vector = engine.encoder.cached(query)
    assert vector is not None  # the served request embedded it
    found = {
        "dense": bundle.dense.search(vector[None], depth)[1][0],
        "bm25": bundle.lexical.top(bundle.lexical.scores(query), depth)[1],
    }
    if engine.model is not None and bundle.retriever is not None:
        found["learned"] = bundle.retriever.search(engine.model.project_queries(vector[None]), depth)[1][0]
    return {name: {bundle.ids[r]: i + 1 for i, r in enumerate(rows) if r >= 0} for name, rows in found.items()}


def check_attention(why: dict) -> None:
    present = why["modalities"]
    weights = np.asarray([why["attention"][m] for m in MODALITIES])  # (T, H)
    assert np.allclose(weights.sum(axis=0), 1.0, atol=1e-5)
    for t, modality in enumerate(MODALITIES):
        if not present[modality]:
            assert np.all(weights[t] == 0.0), modality


def test_explanations_are_faithful_for_100_queries(tiny: TinyPipeline, client: TestClient) -> None:
    engine = client.app.state.rank.engines.serving
    texts = [json.loads(line)["text"] for line in (tiny.data / "queries.jsonl").read_text().splitlines()][:100]
    assert len(texts) == 100
    checked_sources = 0
    for i, text in enumerate(texts):
        body = {"query": text, "top_k": 5 + i % 5, "num_candidates": 40}
        plain = client.post("/rank", json=body).json()
        explained = client.post("/rank", json={**body, "explain": True}).json()
        # Explaining changes nothing about the answer.
        assert [(x["id"], x["score"]) for x in explained["results"]] == [
            (x["id"], x["score"]) for x in plain["results"]
        ]
        query = engine.prepare_rank(RankRequest(query=text)).query  # normalised, as served
        ranks = own_ranks(engine, query, 40)
        for hit in explained["results"]:
            why = hit["explanation"]
            assert why["prior"] + why["residual"] == pytest.approx(hit["score"], abs=1e-5)
            check_attention(why)
            for source, rank in why["sources"].items():
                assert rank == ranks[source].get(hit["id"]), (source, hit["id"])
                checked_sources += rank is not None
            assert why["rrf"] == pytest.approx(
                sum(1 / (60 + r) for s, r in why["sources"].items() if r and s in engine.sources)
            )
            assert why["prior_evidence"] == engine.prior and engine.prior in why["evidence"]
    assert checked_sources > 100  # sources found the hits: the rank check was not vacuous


def test_filters_are_named_and_rerank_is_explained_from_its_run(client: TestClient) -> None:
    engine = client.app.state.rank.engines.serving
    filtered = client.post(
        "/rank", json={"query": "a red drink", "top_k": 3, "filters": {"glass": "coupe"}, "explain": True}
    ).json()
    assert all(hit["explanation"]["filters"] == {"glass": ["coupe"]} for hit in filtered["results"])
    item = engine.bundle.ids[0]
    request = RerankRequest(
        query="gin and tonic", documents=["a gin fizz", DocumentRef(id=item), "black coffee"], explain=True
    )
    outcome = engine.serve_one(engine.prepare_rerank(request))
    assert isinstance(outcome, RerankOutcome) and outcome.explanations is not None
    for score, why in zip(outcome.scores, outcome.explanations, strict=True):
        assert why["prior"] + why["residual"] == pytest.approx(score, abs=1e-5)
        assert "sources" not in why  # the caller's documents: no candidate source found them
        check_attention(why)
    text_docs = [why for index, why in zip(outcome.indices, outcome.explanations, strict=True) if index != 1]
    assert all(why["modalities"] == {"image": False, "text": True, "attributes": False} for why in text_docs)
    body = client.post("/rerank", json={"query": "gin", "documents": ["gin", "tea"], "explain": True}).json()
    assert all("explanation" in result for result in body["results"])


def test_zero_shot_explanations_have_the_prior_as_the_score(toy: ToyArtifacts) -> None:
    settings = serving_settings(toy, bundle_dir=toy.zero_shot_bundle, model_dir=toy.no_model)
    with TestClient(create_app(settings)) as client:
        answer = client.post("/rank", json={"query": "gin", "top_k": 5, "explain": True}).json()
    for hit in answer["results"]:
        why = hit["explanation"]
        assert why["residual"] == 0.0 and "attention" not in why
        assert (
            why["prior"]
            == pytest.approx(hit["score"], abs=1e-6)
            == pytest.approx(why["evidence"][why["prior_evidence"]])
        )
