"""The rerank APIs of existing clients, spoken by the real clients against a real service process: the cohere SDK
(ClientV2 on /v2/rerank, Client on /v1/rerank), LangChain's CohereRerank, and Jina- and TEI-shaped requests."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from typing import Any

import cohere
import pytest
from langchain_cohere import CohereRerank
from langchain_core.documents import Document

from .conftest import TinyPipeline
from .live_service import LiveService

pytestmark = pytest.mark.integration

QUERY = "green drink with mint"
DOCUMENTS = ["a pink gin cocktail in a coupe", "a green mojito with fresh mint", "black coffee", "rum and cola"]
LONG = " ".join(["mint"] * 400)  # over the encoder's 256 word pieces


@pytest.fixture(scope="module")
def service(tiny: TinyPipeline) -> Iterator[LiveService]:
    live = LiveService.start(tiny)
    yield live
    live.stop()


def post(service: LiveService, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, raw, _ = service.request("POST", path, body)
    return status, json.loads(raw)


def native_order(service: LiveService, documents: list[str]) -> list[int]:
    """The document order this service's own /rerank gives: what every other shape must give too."""
    status, body = post(service, "/rerank", {"query": QUERY, "documents": documents})
    assert status == 200
    return [r["index"] for r in body["results"]]


def model_version(service: LiveService) -> str:
    status, raw, _ = service.request("GET", "/health/ready")
    return json.loads(raw)["model_version"]


def test_cohere_client_v2_reranks_unchanged(service: LiveService) -> None:
    co = cohere.ClientV2(api_key="not-checked", base_url=service.url)
    response = co.rerank(model="default", query=QUERY, documents=DOCUMENTS, top_n=3)
    assert str(uuid.UUID(response.id)) == response.id
    assert [r.index for r in response.results] == native_order(service, DOCUMENTS)[:3]
    scores = [r.relevance_score for r in response.results]
    assert scores == sorted(scores, reverse=True) and all(0.0 < s < 1.0 for s in scores)
    assert response.meta is not None and response.meta.api_version is not None
    assert response.meta.api_version.version == "2"
    assert response.meta.billed_units is not None and response.meta.billed_units.search_units == 1
    assert response.meta.warnings is None  # nothing was cut
    full = co.rerank(model=f"fusion-ranker-{model_version(service)}", query=QUERY, documents=DOCUMENTS)
    assert sorted(r.index for r in full.results) == list(range(len(DOCUMENTS)))


def test_cohere_client_v1_reranks_and_returns_documents(service: LiveService) -> None:
    co = cohere.Client(api_key="not-checked", base_url=service.url)
    response = co.rerank(model=model_version(service), query=QUERY, documents=DOCUMENTS, top_n=2, return_documents=True)
    assert [r.index for r in response.results] == native_order(service, DOCUMENTS)[:2]
    for result in response.results:
        assert result.document is not None and result.document.text == DOCUMENTS[result.index]
        assert 0.0 < result.relevance_score < 1.0
    assert response.meta is not None and response.meta.api_version is not None
    assert response.meta.api_version.version == "1" and response.id


def test_cohere_v1_structured_documents_rank_on_rank_fields(service: LiveService) -> None:
    documents = [{"title": "black coffee", "shop": "a"}, {"title": "a green mojito with fresh mint", "shop": "b"}]
    co = cohere.Client(api_key="not-checked", base_url=service.url)
    response = co.rerank(query=QUERY, documents=documents, rank_fields=["title"], return_documents=True)
    texts = [f"title: {d['title']}" for d in documents]
    assert [r.index for r in response.results] == native_order(service, texts)
    top = response.results[0]
    assert top.document is not None and top.document.text == texts[top.index]
    assert top.document.shop == documents[top.index]["shop"]  # the object's own fields come back, as Cohere's do


def test_langchain_cohere_rerank_reorders_documents(service: LiveService) -> None:
    reranker = CohereRerank(cohere_api_key="not-checked", base_url=service.url, model="default", top_n=2)
    docs = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(DOCUMENTS)]
    compressed = reranker.compress_documents(docs, QUERY)
    assert [d.metadata["n"] for d in compressed] == native_order(service, DOCUMENTS)[:2]
    assert all(0.0 < d.metadata["relevance_score"] < 1.0 for d in compressed)


def test_unknown_model_is_404_in_cohere_shape(service: LiveService) -> None:
    co = cohere.ClientV2(api_key="not-checked", base_url=service.url)
    with pytest.raises(cohere.NotFoundError) as caught:
        co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCUMENTS)
    assert caught.value.status_code == 404
    assert "model" in caught.value.body["message"] and "rerank-v3.5" in caught.value.body["message"]
    status, body = post(service, "/v1/rerank", {"model": "nope", "query": QUERY, "documents": DOCUMENTS})
    assert status == 404 and body["field"] == "model"


def test_jina_shape(service: LiveService) -> None:
    body = {
        "model": "default",
        "query": QUERY,
        "documents": [{"text": DOCUMENTS[0]}, DOCUMENTS[1], {"text": DOCUMENTS[2]}],
        "top_n": 2,
        "return_documents": True,
    }
    status, answer = post(service, "/v1/rerank", body)
    assert status == 200
    assert answer["model"] == f"fusion-ranker-{model_version(service)}"
    assert isinstance(answer["usage"]["total_tokens"], int) and answer["usage"]["total_tokens"] > len(DOCUMENTS)
    assert [r["index"] for r in answer["results"]] == native_order(service, DOCUMENTS[:3])[:2]
    for result in answer["results"]:
        assert result["document"]["text"] == DOCUMENTS[result["index"]]
        assert set(result) == {"index", "relevance_score", "document"}


def test_tei_shape(service: LiveService) -> None:
    status, ranks = post(service, "/rerank", {"query": QUERY, "texts": DOCUMENTS, "return_text": True})
    assert status == 200 and isinstance(ranks, list)
    assert [r["index"] for r in ranks] == native_order(service, DOCUMENTS)
    assert all(set(r) == {"index", "score", "text"} and r["text"] == DOCUMENTS[r["index"]] for r in ranks)
    status, raw = post(service, "/rerank", {"query": QUERY, "texts": DOCUMENTS, "raw_scores": True})
    assert status == 200 and all(set(r) == {"index", "score"} for r in raw)
    by_index = {r["index"]: r["score"] for r in ranks}
    for r in raw:  # raw scores are the logits of the default ones
        assert by_index[r["index"]] == pytest.approx(1.0 / (1.0 + math.exp(-r["score"])), abs=1e-6)


def test_truncation_is_honoured_and_said(service: LiveService) -> None:
    status, body = post(service, "/rerank", {"query": QUERY, "texts": [DOCUMENTS[0], LONG]})
    assert status == 413 and body["field"] == "texts[1]" and "truncate" in body["error"]
    status, body = post(service, "/rerank", {"query": QUERY, "texts": [DOCUMENTS[0], LONG], "truncate": True})
    assert status == 200 and len(body) == 2
    co = cohere.ClientV2(api_key="not-checked", base_url=service.url)
    response = co.rerank(model="default", query=QUERY, documents=[DOCUMENTS[0], LONG], max_tokens_per_doc=20)
    assert response.meta is not None and response.meta.warnings is not None
    assert any("[1]" in w and "20 word pieces" in w for w in response.meta.warnings)
    default = co.rerank(model="default", query=QUERY, documents=[DOCUMENTS[0], LONG])
    assert default.meta is not None and default.meta.warnings is not None
    assert any("[1]" in w and "256" in w for w in default.meta.warnings)  # the encoder reads only the start


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v2/rerank", {"model": "default", "query": QUERY, "documents": DOCUMENTS, "top_n": 0}, "top_n"),
        ("/v2/rerank", {"model": "default", "query": QUERY, "documents": DOCUMENTS, "top_n": -2}, "top_n"),
        ("/v2/rerank", {"model": "default", "query": QUERY, "documents": []}, "documents"),
        ("/v2/rerank", {"model": "default", "query": QUERY, "documents": [1, 2]}, "documents.0"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCUMENTS}, "model"),
        ("/v2/rerank", {"model": "default", "query": 3, "documents": DOCUMENTS}, "query"),
        ("/v1/rerank", {"query": QUERY, "documents": [{"title": "no text"}]}, "documents[0]"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "return_documents": "yes"}, "return_documents"),
        ("/rerank", {"query": QUERY, "texts": []}, "texts"),
        ("/rerank", {"query": QUERY, "texts": DOCUMENTS, "documents": DOCUMENTS}, "documents"),
        ("/rerank", {"query": QUERY, "texts": DOCUMENTS, "truncation_direction": "up"}, "truncation_direction"),
    ],
)
def test_bad_input_in_each_shape_is_4xx_naming_the_field(
    service: LiveService, path: str, body: dict[str, Any], field: str
) -> None:
    status, answer = post(service, path, body)
    assert 400 <= status < 500, answer
    assert answer["field"] == field or answer["field"].startswith(f"{field}."), answer
    assert answer["message"] == answer["error"]
