"""The set of engines behind the routes, in process over the toy artifacts (the unit loop): reload, rollback, canary
(split by a stable key, share changes, promotion) and a shadow that becomes the canary, each answered as the admin
API documents it. tests/test_reliability.py does the same under load against a real process with trained models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index.runtime.bundle import Bundle
from service.app import create_app

from .conftest import serving_settings
from .toy_artifacts import ToyArtifacts

TOKEN = "engines-test-token-0123456789"
ADMIN = {"authorization": f"Bearer {TOKEN}"}


def _version(model_dir: Path) -> str:
    return json.loads((model_dir / "model_card.json").read_text())["version"]


@pytest.fixture
def admin(toy: ToyArtifacts) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings(toy, admin_token=TOKEN))) as client:
        yield client


def _served(client: TestClient, query: str, key: str | None = None) -> str:
    headers = {"x-request-key": key} if key else {}
    r = client.post("/rank", json={"query": query, "top_k": 1}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


def test_reload_then_rollback_from_memory(admin: TestClient, toy: ToyArtifacts, toy_second, tmp_path: Path) -> None:
    model_a, model_b = _version(toy.model), _version(toy_second[0])
    assert model_a != model_b
    assert admin.post("/admin/rollback", headers=ADMIN).status_code == 409  # nothing replaced yet
    copy = tmp_path / "model-b"
    shutil.copytree(toy_second[0], copy)
    paths = {"model_dir": str(copy), "bundle_dir": str(copy / "bundle")}
    bundle_a, bundle_b = Bundle.load(toy.bundle).version, Bundle.load(toy_second[1]).version
    r = admin.post("/admin/reload", json=paths, headers=ADMIN)
    assert r.status_code == 200 and r.json() == {
        "status": "reloaded",
        "model_version": model_b,
        "bundle_version": bundle_b,
        "previous_model_version": model_a,
        "previous_bundle_version": bundle_a,
    }
    assert _served(admin, "gin") == model_b
    shutil.rmtree(copy)  # a rollback reads nothing from disk
    r = admin.post("/admin/rollback", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "rolled back"
    assert (r.json()["model_version"], r.json()["previous_model_version"]) == (model_a, model_b)
    assert _served(admin, "gin") == model_a
    r = admin.post("/admin/rollback", headers=ADMIN)  # and back again: the engine the rollback replaced
    assert r.status_code == 200 and r.json()["model_version"] == model_b and _served(admin, "gin") == model_b


def test_a_reload_that_does_not_load_is_refused_and_the_old_engine_keeps_serving(
    admin: TestClient, toy: ToyArtifacts, toy_second, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(toy_second[0], broken)
    (broken / "ranker.onnx").write_bytes((broken / "ranker.onnx").read_bytes()[:200])
    r = admin.post(
        "/admin/reload", json={"model_dir": str(broken), "bundle_dir": str(broken / "bundle")}, headers=ADMIN
    )
    assert r.status_code == 422
    body = r.json()
    assert body["error"].startswith("reload refused, still serving the old model: ")
    assert "checksum mismatch" in body["error"] and "ranker.onnx" in body["error"]
    assert body["model_version"] == _version(toy.model)
    assert _served(admin, "gin") == _version(toy.model)
    assert admin.post("/admin/reload", json={}).status_code == 401


def test_a_canary_splits_by_a_stable_key_then_promotion_and_rollback_end_it(
    admin: TestClient, toy: ToyArtifacts, toy_second
) -> None:
    model_a, model_b = _version(toy.model), _version(toy_second[0])
    assert admin.post("/admin/canary/promote", headers=ADMIN).status_code == 409
    assert admin.post("/admin/canary", json={"share": 30}, headers=ADMIN).status_code == 409  # none to change
    assert admin.get("/admin/canary", headers=ADMIN).json()["status"] == "no canary"
    paths = {"model_dir": str(toy_second[0]), "bundle_dir": str(toy_second[1])}
    r = admin.post("/admin/canary", json={"share": 50, **paths}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["canary_model_version"] == model_b and r.json()["model_version"] == model_a
    assert r.json() == admin.get("/admin/canary", headers=ADMIN).json() and r.json()["share"] == 50.0
    queries = [f"a gin drink number {i}" for i in range(40)]
    first = {q: _served(admin, q) for q in queries}
    assert set(first.values()) == {model_a, model_b}
    assert {q: _served(admin, q) for q in queries} == first  # one query keeps meeting one model
    assert len({_served(admin, q, key="user-7") for q in queries}) == 1  # the header decides instead of the query
    assert admin.post("/admin/canary", json={"share": 0}, headers=ADMIN).status_code == 200
    assert {_served(admin, q) for q in queries} == {model_a}
    assert admin.post("/admin/canary", json={"share": 100}, headers=ADMIN).status_code == 200
    assert {_served(admin, q) for q in queries} == {model_b}
    exposition = admin.get("/metrics").text
    for version in (model_a, model_b):
        assert f'rank_model_requests_total{{model_version="{version}",route="/rank"}}' in exposition
    r = admin.post("/admin/canary/promote", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "promoted" and r.json()["model_version"] == model_b
    assert {_served(admin, q) for q in queries} == {model_b}
    assert admin.post("/admin/canary", json={"share": 50, **paths}, headers=ADMIN).status_code == 200
    r = admin.post("/admin/rollback", headers=ADMIN)  # during a canary, rollback ends it
    assert r.status_code == 200 and r.json()["status"] == "canary ended"
    assert {_served(admin, q) for q in queries} == {model_b}
    r = admin.post("/admin/rollback", headers=ADMIN)  # then it undoes the promotion
    assert r.status_code == 200 and r.json()["model_version"] == model_a
    assert {_served(admin, q) for q in queries} == {model_a}


def test_a_loaded_shadow_becomes_the_canary_without_loading_again(
    admin: TestClient, toy: ToyArtifacts, toy_second
) -> None:
    model_a, model_b = _version(toy.model), _version(toy_second[0])
    paths = {"model_dir": str(toy_second[0]), "bundle_dir": str(toy_second[1])}
    r = admin.post("/admin/shadow", json=paths, headers=ADMIN)
    assert r.status_code == 200 and r.json()["shadow_model_version"] == model_b and r.json()["model_version"] == model_a
    assert _served(admin, "gin") == model_a  # the shadow never answers
    r = admin.post("/admin/canary", json={"share": 100}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["canary_model_version"] == model_b
    assert admin.get("/admin/shadow", headers=ADMIN).json() == {"status": "no shadow"}
    assert _served(admin, "gin") == model_b
    r = admin.post("/admin/rollback", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "canary ended" and _served(admin, "gin") == model_a
