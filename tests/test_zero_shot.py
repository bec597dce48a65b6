"""Zero-shot serving: a catalog with items only (no judgments, no trained model) is indexed and served with hybrid
retrieval (MiniLM dense + BM25, RRF), and what is served is what the offline zero-shot lists say."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.offline.bundle_writer import build_bundle
from index.runtime.bundle import Bundle
from index.runtime.files import ArtifactError
from index.runtime.text_encoder import TextEncoder
from service.app import create_app
from training.dataset import load_dataset

from .conftest import TinyPipeline, serving_settings


@pytest.fixture(scope="module")
def zero_shot_bundle(tiny: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zero_shot")
    (root / "no_model").mkdir()
    build_bundle(tiny.data, root / "no_model", tiny.encoder, root / "bundle")
    return root / "bundle"


@pytest.fixture(scope="module")
def zero_shot_client(tiny: TinyPipeline, zero_shot_bundle: Path) -> Iterator[TestClient]:
    settings = serving_settings(tiny, bundle_dir=zero_shot_bundle, model_dir=zero_shot_bundle.parent / "no_model")
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_zero_shot_bundle_holds_dense_and_bm25_indexes_and_no_model(zero_shot_bundle: Path) -> None:
    bundle = Bundle.load(zero_shot_bundle)
    assert bundle.model_version is None and bundle.retriever is None and bundle.cand_kv is None
    files = set(bundle.manifest["files"])
    assert "text.faiss" in files and any(name.startswith("lexical/") for name in files)
    assert not {"index.faiss", "cand_kv.npy", "retrieval.npy"} & files
    assert bundle.manifest["text"]["max_tokens"] == 256 and bundle.manifest["text"]["truncated"] == 0
    assert bundle.lexical.size == bundle.dense.size == bundle.size


def test_health_says_zero_shot(zero_shot_client: TestClient) -> None:
    ready = zero_shot_client.get("/health/ready").json()
    assert ready["model_version"] == "zero-shot" and ready["provider"] == "none"
    assert ready["candidate_sources"] == ["dense", "bm25"] and ready["prior"] == "rrf"


def test_zero_shot_served_ranking_equals_the_offline_zero_shot_lists(
    tiny: TinyPipeline, zero_shot_client: TestClient
) -> None:
    k = 30
    queries = TextEncoder(tiny.encoder, variant=serving_settings(tiny).query_encoder.value)  # as the service embeds
    dataset = load_dataset(
        tiny.data, TextEncoder(tiny.encoder), query_encoder=queries, num_candidates=k
    )  # dense + BM25
    test = dataset.splits["test"]
    for q in range(5):
        order = np.argsort(-test.evidence[q, :, 0], kind="stable")
        expected = [dataset.items[i].id for i in test.candidates[q][order]]
        served = zero_shot_client.post(
            "/rank", json={"query": test.query_texts[q], "top_k": k, "num_candidates": k}
        ).json()
        assert [x["id"] for x in served["results"]] == expected
        assert served["model_version"] == "zero-shot"


def test_zero_shot_filters_and_rerank(zero_shot_client: TestClient) -> None:
    r = zero_shot_client.post("/rank", json={"query": "a drink", "top_k": 5, "filters": {"glass": ["coupe"]}})
    assert r.status_code == 200 and r.json()["results"]
    assert all(x["attributes"]["glass"] == "coupe" for x in r.json()["results"])
    top = r.json()["results"][0]["id"]
    documents = ["a green cocktail with mint", {"id": top}, "blue"]
    body = zero_shot_client.post("/rerank", json={"query": "green mint cocktail", "documents": documents}).json()
    assert [x["index"] for x in body["results"]][0] == 0  # shares every word, and the closest meaning
    assert sorted(x["index"] for x in body["results"]) == [0, 1, 2]


def test_bundles_and_models_that_do_not_belong_together_are_refused(tiny: TinyPipeline, zero_shot_bundle: Path) -> None:
    from service.loading import load_engine
    from service.metrics import Metrics

    no_model = serving_settings(tiny, model_dir=zero_shot_bundle.parent / "no_model")  # the trained bundle
    with pytest.raises(ArtifactError, match="was built for model .* which is not there"):
        load_engine(no_model, Metrics())
    with_model = serving_settings(tiny, bundle_dir=zero_shot_bundle)  # the trained model
    with pytest.raises(ArtifactError, match="is zero-shot"):
        load_engine(with_model, Metrics())
