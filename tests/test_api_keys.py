"""API keys on the data plane (service/auth.py): RANK_API_KEYS makes /rank, /rerank and the Cohere, Jina and TEI
routes want `Authorization: Bearer <key>`; health, metrics and the admin API are unaffected; counted per key id."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import cohere
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import ApiKeys
from service.settings import SettingsError, load_settings

from .conftest import serving_settings
from .live_service import serve_in_thread
from .toy_artifacts import ToyArtifacts

TEAM_A = "team-a:0123456789abcdef-team-a"
BARE = "fedcba9876543210-no-id"
ROUTES = [
    ("/rank", {"query": "gin"}),
    ("/rerank", {"query": "gin", "documents": ["gin and tonic", "coffee"]}),
    ("/rerank", {"query": "gin", "texts": ["gin and tonic", "coffee"]}),  # TEI's shape
    ("/v2/rerank", {"model": "default", "query": "gin", "documents": ["gin and tonic", "coffee"]}),
    ("/v1/rerank", {"model": "default", "query": "gin", "documents": ["gin and tonic", "coffee"]}),
]


@pytest.fixture(scope="module")
def client(toy: ToyArtifacts) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings(toy, api_keys=f"{TEAM_A},{BARE}"))) as c:
        yield c


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_every_data_plane_route_wants_a_key(client: TestClient, path: str, body: dict) -> None:
    missing = client.post(path, json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["field"] == "authorization" and "Bearer <key>" in missing.json()["message"]
    wrong = client.post(path, json=body, headers={"authorization": "Bearer 0123456789abcdef-wrong"})
    assert wrong.status_code == 403 and wrong.json()["error"] == "authorization: the API key is not valid"
    right = client.post(path, json=body, headers={"authorization": "bearer 0123456789abcdef-team-a"})
    assert right.status_code == 200, right.text


def test_the_key_is_checked_before_the_body(client: TestClient) -> None:
    assert client.post("/rank", json={"query": ""}).status_code == 401  # not the 422 an empty query gets


def test_health_and_metrics_stay_open_and_count_by_key_id_never_by_key(client: TestClient) -> None:
    assert client.get("/health/ready").status_code == 200
    client.post("/rank", json={"query": "rum"}, headers={"authorization": f"Bearer {BARE}"})
    exposition = client.get("/metrics").text
    bare_id = ApiKeys.parse(BARE, None).keys[0][1]  # type: ignore[union-attr]
    assert f'rank_api_key_requests_total{{key_id="{bare_id}"}}' in exposition
    assert 'rank_api_key_requests_total{key_id="team-a"}' in exposition
    assert 'key_id="missing"' in exposition and 'key_id="invalid"' in exposition
    assert "0123456789abcdef" not in exposition and BARE not in exposition


def test_a_key_never_appears_in_the_logs(toy: ToyArtifacts, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(serving_settings(toy, api_keys=TEAM_A, access_log=True))) as c:
        for key in ("0123456789abcdef-team-a", "0123456789abcdef-wrong-one"):
            c.post("/rank", json={"query": "gin"}, headers={"authorization": f"Bearer {key}"})
    assert "POST /rank" in caplog.text  # the access lines were written
    assert "0123456789abcdef" not in caplog.text


def test_without_keys_nothing_is_asked(toy: ToyArtifacts) -> None:
    with TestClient(create_app(serving_settings(toy))) as c:
        assert c.post("/rank", json={"query": "gin"}).status_code == 200


def test_keys_from_a_file_and_bad_keys_stop_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# one per line\nops:aaaaaaaaaaaaaaaaaaaa\n\nbbbbbbbbbbbbbbbbbbbb\n")
    parsed = load_settings(api_keys_file=keys).parsed_api_keys()
    assert parsed is not None and [key_id for _, key_id in parsed.keys][0] == "ops" and len(parsed.keys) == 2
    monkeypatch.setenv("RANK_API_KEYS", "ops:short")
    with pytest.raises(SettingsError, match="API key 1 \\(id ops\\) is shorter than 16 characters"):
        load_settings()
    monkeypatch.setenv("RANK_API_KEYS", "x:aaaaaaaaaaaaaaaaaaaa,x:bbbbbbbbbbbbbbbbbbbb")
    with pytest.raises(SettingsError, match="API key id 'x' is given twice"):
        load_settings()


def test_a_key_over_its_quota_gets_429_with_retry_after_and_other_keys_do_not(toy: ToyArtifacts) -> None:
    settings = serving_settings(toy, api_keys=f"{TEAM_A},{BARE}", key_rate_limit=0.5, key_rate_burst=2)
    team_a = {"authorization": "Bearer 0123456789abcdef-team-a"}
    with TestClient(create_app(settings)) as c:
        assert [c.post("/rank", json={"query": "gin"}, headers=team_a).status_code for _ in range(2)] == [200, 200]
        over = c.post("/rerank", json={"query": "gin", "documents": ["gin"]}, headers=team_a)
        assert over.status_code == 429 and over.json()["field"] == "authorization"
        assert "'team-a' is over its quota of 0.5 requests/s" in over.json()["error"]
        assert 1 <= int(over.headers["retry-after"]) <= 2  # one request's worth of tokens at 0.5/s: about 2 s
        assert c.post("/rank", json={"query": "gin"}, headers={"authorization": f"Bearer {BARE}"}).status_code == 200
        assert 'rank_rejections_total{reason="key_quota"} 1.0' in c.get("/metrics").text
    with pytest.raises(SettingsError, match="key_rate_limit is a quota per API key, but no API key is set"):
        load_settings(key_rate_limit=5)


@pytest.fixture(scope="module")
def keyed_url(toy: ToyArtifacts) -> Iterator[str]:
    """The app with keys behind a real uvicorn on a free 127.0.0.1 port, in a thread, for real client SDKs."""
    with serve_in_thread(create_app(serving_settings(toy, api_keys=TEAM_A))) as url:
        yield url


def test_the_cohere_sdk_passes_its_api_key_through_unchanged(keyed_url: str) -> None:
    documents = ["a gin and tonic", "black coffee", "a negroni"]
    right = cohere.ClientV2(api_key="0123456789abcdef-team-a", base_url=keyed_url)
    assert len(right.rerank(model="default", query="gin", documents=documents, top_n=2).results) == 2
    wrong = cohere.ClientV2(api_key="0123456789abcdef-other", base_url=keyed_url)
    with pytest.raises(cohere.ForbiddenError):
        wrong.rerank(model="default", query="gin", documents=documents)
