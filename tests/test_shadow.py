"""Shadow scoring: the agreement figures against hand-computed cases, and the service's shadow path (a candidate
ranks live /rank requests after their responses, is shed first, and never serves a response)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.agreement import agreement, kendall_tau, overlap_at_k, rank_biased_overlap
from service.app import create_app

from .conftest import serving_settings
from .toy_artifacts import ToyArtifacts

TOKEN = "shadow-test-token-0123456789"
ADMIN = {"authorization": f"Bearer {TOKEN}"}

# -- the figures, by hand ------------------------------------------------------------------------------------------


def test_overlap_at_k_counts_shared_items_in_both_prefixes() -> None:
    a = [str(i) for i in range(10)]
    b = ["0", "1", "2", "x", "y", "5", "6", "z", "8", "9"]
    assert overlap_at_k(a, b, 10) == 0.7
    assert overlap_at_k(a, list(reversed(a)), 10) == 1.0  # same set, any order
    assert overlap_at_k(a, b, 3) == 1.0
    assert overlap_at_k(["a", "b"], ["b", "c", "d"], 10) == 0.5  # capped at the shorter list: 1 of 2


def test_rank_biased_overlap_matches_hand_computation() -> None:
    # [1,2,3] vs [1,3,2], p = 0.9: X1 = 1, X2 = 1, X3 = 3
    # (0.1/0.9) * (1/1 * 0.9 + 1/2 * 0.81 + 3/3 * 0.729) + 3/3 * 0.729 = 0.226 + 0.729
    expected = (0.1 / 0.9) * (0.9 + 0.405 + 0.729) + 0.729
    assert rank_biased_overlap(["1", "2", "3"], ["1", "3", "2"], 0.9) == pytest.approx(expected)
    assert rank_biased_overlap(list("abcdefghij"), list("abcdefghij")) == pytest.approx(1.0)
    assert rank_biased_overlap(list("abc"), list("xyz")) == 0.0
    # a swap at the top costs more than the same swap at the bottom
    top = rank_biased_overlap(list("abcdefghij"), list("bacdefghij"))
    bottom = rank_biased_overlap(list("abcdefghij"), list("abcdefghji"))
    assert top < bottom < 1.0
    with pytest.raises(ValueError, match="p must be"):
        rank_biased_overlap(["a"], ["a"], 1.0)


def test_kendall_tau_on_the_common_items() -> None:
    assert kendall_tau(list("abcd"), list("abcd")) == 1.0
    assert kendall_tau(list("abcd"), list("dcba")) == -1.0
    # a b c d vs b a c d: 1 discordant pair of 6 -> (5 - 1) / 6
    assert kendall_tau(list("abcd"), list("bacd")) == pytest.approx(4 / 6)
    # only a, c, d are common; their orders a c d vs d c a -> -1
    assert kendall_tau(list("abcd"), list("xdca")) == -1.0
    assert kendall_tau(list("ab"), list("xa")) is None  # one common item: no pair


def test_agreement_bundles_the_four_figures() -> None:
    found = agreement(list("abc"), list("acb"))
    assert found.top1 and found.overlap_at_10 == 1.0 and found.kendall_tau == pytest.approx(1 / 3)
    assert not agreement(list("abc"), list("bac")).top1


# -- the service's shadow ------------------------------------------------------------------------------------------


@pytest.fixture
def admin_client(toy: ToyArtifacts, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    overrides = getattr(request, "param", {})
    with TestClient(create_app(serving_settings(toy, admin_token=TOKEN, **overrides))) as client:
        yield client


def _shadow_after(client: TestClient, compared: int, seconds: float = 20.0) -> dict:
    """GET /admin/shadow until it has `compared` pairs (the shadow runs after the responses, on its own task)."""
    deadline = time.time() + seconds
    while True:
        status = client.get("/admin/shadow", headers=ADMIN).json()
        if status.get("compared", 0) + status.get("shed", 0) >= compared or time.time() > deadline:
            return status
        time.sleep(0.05)


def test_a_shadow_of_the_serving_artifacts_agrees_fully_and_never_serves(
    admin_client: TestClient, toy: ToyArtifacts
) -> None:
    client = admin_client
    assert client.get("/admin/shadow", headers=ADMIN).json() == {"status": "no shadow"}
    assert client.delete("/admin/shadow", headers=ADMIN).status_code == 409
    assert client.post("/admin/shadow", json={"share": 50}, headers=ADMIN).status_code == 409  # none to change
    assert client.post("/admin/shadow", json={}).status_code == 401
    paths = {"model_dir": str(toy.model), "bundle_dir": str(toy.bundle)}
    loaded = client.post("/admin/shadow", json=paths, headers=ADMIN)
    assert loaded.status_code == 200 and loaded.json()["share"] == 100.0, loaded.text
    queries = [f"gin sour number {i}" for i in range(12)]
    for query in queries:
        r = client.post("/rank", json={"query": query, "top_k": 10})
        assert r.status_code == 200
    status = _shadow_after(client, len(queries))
    assert status["compared"] == len(queries) and status["shed"] == 0 and status["failed"] == 0, status
    # the same model over the same bundle ranks every request identically: each figure is exactly 1
    assert status["mean"] == {"overlap_at_10": 1.0, "rbo": 1.0, "kendall_tau": 1.0, "top1": 1.0}
    assert status["shadow_total_ms"]["p50"] > 0
    exposition = client.get("/metrics").text
    assert 'rank_shadow_requests_total{model_version="' in exposition and 'outcome="compared"' in exposition
    assert 'figure="rbo"' in exposition and "rank_shadow_stage_seconds_bucket" in exposition
    stopped = client.delete("/admin/shadow", headers=ADMIN).json()
    assert stopped["status"] == "shadow stopped" and stopped["compared"] == len(queries)
    client.post("/rank", json={"query": "one more after the stop"})
    assert client.get("/admin/shadow", headers=ADMIN).json() == {"status": "no shadow"}


@pytest.mark.parametrize("admin_client", [{"shadow_max_queue": 0}], indirect=True)
def test_shadow_work_is_shed_when_the_queue_is_long(admin_client: TestClient, toy: ToyArtifacts) -> None:
    """With no room allowed (shadow_max_queue = 0) every shadow request is shed, and real ones are all served."""
    client = admin_client
    paths = {"model_dir": str(toy.model), "bundle_dir": str(toy.bundle)}
    assert client.post("/admin/shadow", json={"share": 100, **paths}, headers=ADMIN).status_code == 200
    for i in range(5):
        assert client.post("/rank", json={"query": f"a shed query {i}"}).status_code == 200
    status = _shadow_after(client, 5)
    assert (status["compared"], status["shed"], status["failed"]) == (0, 5, 0)


def test_shadow_share_picks_a_stable_subset(admin_client: TestClient, toy: ToyArtifacts) -> None:
    client = admin_client
    paths = {"model_dir": str(toy.model), "bundle_dir": str(toy.bundle)}
    assert client.post("/admin/shadow", json={"share": 0, **paths}, headers=ADMIN).status_code == 200
    for i in range(5):
        client.post("/rank", json={"query": f"unshadowed {i}"})
    time.sleep(0.3)
    assert client.get("/admin/shadow", headers=ADMIN).json()["compared"] == 0
    assert client.post("/admin/shadow", json={"share": 100}, headers=ADMIN).json()["share"] == 100.0
    client.post("/rank", json={"query": "shadowed now"})
    assert _shadow_after(client, 1)["compared"] == 1
