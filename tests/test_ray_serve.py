"""The service on Ray Serve (service/ray_deployment.py, deploy/ray/serve.yaml): two replicas of the real app on a
local Ray started by this process, serving the tiny artifacts. Skipped, saying why, without the `ray` extra."""

from __future__ import annotations

import http.client
import importlib
import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]' (CI installs it)")

from loadtests.bench.ray_cluster import CONFIG, RayServe, load_config, replica_id  # noqa: E402
from loadtests.process import free_port  # noqa: E402
from service.errors import RequestError  # noqa: E402
from service.settings import Settings  # noqa: E402

from .conftest import TinyPipeline  # noqa: E402
from .live_service import tiny_env  # noqa: E402

pytestmark = pytest.mark.integration

QUERY = {"query": "pink cocktail in a coupe glass", "top_k": 5}


def post(url: str, body: dict[str, Any], path: str = "/rank") -> tuple[int, dict[str, Any], dict[str, str]]:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def get(url: str) -> tuple[int, str]:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        conn.request("GET", parsed.path or "/")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def answers_by_replica(url: str, want: int, tries: int = 200) -> dict[str, dict[str, Any]]:
    """POST QUERY until `want` distinct replicas have answered; their bodies by X-Replica."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(tries):
        status, body, headers = post(url, QUERY)
        assert status == 200, body
        seen[headers["x-replica"]] = body
        if len(seen) >= want:
            return seen
    raise AssertionError(f"only replicas {sorted(seen)} answered in {tries} requests")


@pytest.fixture(scope="module")
def ray_serve(tiny: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayServe]:
    env = {k: v for k, v in tiny_env(tiny).items() if k.startswith("RANK_") or k == "OMP_NUM_THREADS"}
    env["RANK_RAY_TARGETS_DIR"] = str(tmp_path_factory.mktemp("ray-targets"))
    with RayServe.start(port=free_port(), replicas=2, env=env, num_cpus=2) as started:
        yield started


def test_serve_config_names_the_app_and_only_real_settings() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = load_config()
    ServeDeploySchema.model_validate(config)  # what `serve run` / `serve deploy` accept
    application = config["applications"][0]
    module, _, attribute = application["import_path"].partition(":")
    assert type(getattr(importlib.import_module(module), attribute)).__name__ == "Application"
    fields = {f"RANK_{name.upper()}" for name in Settings.model_fields}
    env_vars = application["runtime_env"]["env_vars"]
    assert set(env_vars) <= fields, f"{CONFIG} sets variables no Settings field reads: {set(env_vars) - fields}"
    deployment = application["deployments"][0]
    assert set(deployment.get("user_config") or {}) <= {"model_dir", "bundle_dir"}
    # Serve waits for a stopping replica's requests as long as the plain service waits for its in-flight ones.
    assert deployment["graceful_shutdown_timeout_s"] == Settings.model_fields["shutdown_grace_seconds"].default


def test_two_replicas_answer_alike_and_name_themselves(ray_serve: RayServe, tiny: TinyPipeline) -> None:
    status, _ = get(f"{ray_serve.url}/health/ready")
    assert status == 200
    bodies = answers_by_replica(ray_serve.url, 2)
    assert set(bodies) == {replica_id(name) for name in ray_serve.replicas()}
    rankings = [[(r["id"], round(r["score"], 5)) for r in body["results"]] for body in bodies.values()]
    assert len(rankings[0]) == 5 and rankings[0] == rankings[1]
    card = json.loads((tiny.model / "model_card.json").read_text())
    assert {body["model_version"] for body in bodies.values()} == {card["version"]}


def test_each_replica_serves_its_own_metrics(ray_serve: RayServe) -> None:
    answers_by_replica(ray_serve.url, 2)
    targets_dir = Path(ray_serve.env["RANK_RAY_TARGETS_DIR"])
    targets = [json.loads(p.read_text())[0] for p in sorted(targets_dir.glob("*.json"))]
    assert {t["labels"]["replica"] for t in targets} == {replica_id(n) for n in ray_serve.replicas()}
    for target in targets:
        status, text = get(f"http://{target['targets'][0]}/metrics")
        assert status == 200
        # Both replicas have just answered /rank; each one's registry counts its own requests.
        assert re.search(r'^rank_model_requests_total\{[^}]*route="/rank"[^}]*\} [1-9]', text, re.M), text[:500]


def test_a_deployment_handle_ranks_as_http_does_and_names_a_bad_field(ray_serve: RayServe) -> None:
    _, over_http, _ = post(ray_serve.url, QUERY)
    by_handle = ray_serve.handle().rank.remote(QUERY).result()
    assert [r["id"] for r in by_handle["results"]] == [r["id"] for r in over_http["results"]]
    with pytest.raises(RequestError, match="query"):
        ray_serve.handle().rank.remote({"query": "", "top_k": 5}).result()


def test_a_new_user_config_swaps_the_model_on_every_replica_in_place(
    ray_serve: RayServe, second_model: tuple[Path, Path]
) -> None:
    before = ray_serve.replicas()
    model_dir, bundle_dir = second_model
    ray_serve.deploy(user_config={"model_dir": str(model_dir), "bundle_dir": str(bundle_dir)})
    version = json.loads((model_dir / "model_card.json").read_text())["version"]
    bodies = answers_by_replica(ray_serve.url, 2)
    assert {body["model_version"] for body in bodies.values()} == {version}
    assert ray_serve.replicas() == before  # reconfigured in place, not restarted


def test_a_killed_replica_loses_no_request_sent_after_it_died_and_is_replaced(ray_serve: RayServe) -> None:
    victim, survivor = ray_serve.replicas()
    ray_serve.kill(victim)
    # Sequential requests are never in flight at the kill: every one of them must be answered, by the survivor
    # until Serve has replaced the dead replica.
    deadline = time.monotonic() + 120
    answered_by: set[str] = set()
    replacement: list[str] = []
    while time.monotonic() < deadline and not replacement:
        status, body, headers = post(ray_serve.url, QUERY)
        assert status == 200, body
        answered_by.add(headers["x-replica"])
        replacement = [r for r in answered_by if r not in {replica_id(victim), replica_id(survivor)}]
    assert replica_id(victim) not in answered_by
    assert replacement, "Serve did not replace the killed replica within 120 s"
    assert victim not in ray_serve.wait_replicas(2, without=victim)
