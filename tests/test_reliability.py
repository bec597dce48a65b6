"""Reliability against a real uvicorn process on 127.0.0.1: hot swaps under load, refused reloads, SIGTERM under
load, hostile input, and a schemathesis fuzz of the OpenAPI schema. Every load loop is bounded in time."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from loadtests.process import NotReady, start_service, stop_group, wait_ready
from service.app import create_app

from .conftest import TinyPipeline, serving_settings
from .live_service import serve_in_thread, tiny_env
from .toy_artifacts import ToyArtifacts

TOKEN = "test-token-0123456789abcdef"


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen


@dataclass
class Outcome:
    started: float
    status: int  # 0: the connection failed
    model_version: str | None


@dataclass
class LoadGenerator:
    """A few threads posting /rank to 127.0.0.1 until stopped (or 60 s at most)."""

    port: int
    threads: int = 4
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _loop(self) -> None:
        deadline = time.time() + 60
        while not self._stop.is_set() and time.time() < deadline:
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request(
                    "POST",
                    "/rank",
                    json.dumps({"query": "red gin sour", "top_k": 3}),
                    {"content-type": "application/json"},
                )
                response = conn.getresponse()
                body = json.loads(response.read())
                conn.close()
                self.outcomes.append(Outcome(started, response.status, body.get("model_version")))
            except (OSError, http.client.HTTPException):
                self.outcomes.append(Outcome(started, 0, None))
                time.sleep(0.01)

    def __enter__(self) -> LoadGenerator:
        self._workers = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(15)


def _start(tiny: TinyPipeline, **env: str) -> Server:
    variables = {**tiny_env(tiny), **env}
    service = start_service(variables)
    try:
        wait_ready(service.url, service.process, timeout=90, interval=0.2, request_timeout=2, name="the service")
    except NotReady as exc:
        stop_group(service.process, grace=0)
        raise AssertionError(f"{exc}\n{exc.output}") from None
    return Server(service.url, service.port, service.process)


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)


def _post(
    port: int,
    path: str,
    body: dict,
    token: str | None = TOKEN,
    extra: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
    headers.update(extra or {})
    conn.request(method, path, json.dumps(body) if method == "POST" else None, headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


@pytest.fixture
def server(tiny: TinyPipeline) -> Iterator[Server]:
    running = _start(tiny, RANK_ADMIN_TOKEN=TOKEN)
    yield running
    _stop(running)


def _version(model_dir: Path) -> str:
    return json.loads((model_dir / "model_card.json").read_text())["version"]


def test_two_swaps_under_load_fail_no_request(tiny: TinyPipeline, second_model, server: Server) -> None:
    model_a, model_b = _version(tiny.model), _version(second_model[0])
    assert model_a != model_b
    with LoadGenerator(server.port) as load:
        time.sleep(0.5)
        status, body = _post(
            server.port, "/admin/reload", {"model_dir": str(second_model[0]), "bundle_dir": str(second_model[1])}
        )
        assert status == 200 and body["model_version"] == model_b, body
        first_swap = time.perf_counter()
        time.sleep(0.5)
        second_started = time.perf_counter()
        status, body = _post(
            server.port, "/admin/reload", {"model_dir": str(tiny.model), "bundle_dir": str(tiny.bundle)}
        )
        assert status == 200 and body["model_version"] == model_a, body
        second_swap = time.perf_counter()
        time.sleep(0.5)
    outcomes = load.outcomes
    assert len(outcomes) > 50
    assert [o for o in outcomes if o.status != 200] == []
    assert {o.model_version for o in outcomes} == {model_a, model_b}
    assert {o.model_version for o in outcomes if first_swap < o.started < second_started} == {model_b}
    assert {o.model_version for o in outcomes if o.started > second_swap} == {model_a}


def test_rollback_serves_the_replaced_model_from_memory_under_load(
    tiny: TinyPipeline, second_model, server: Server, tmp_path: Path
) -> None:
    """Rollback swaps back to what the last swap replaced, with no failed request, even when that model's files
    are gone from disk (so it cannot have been read again)."""
    model_a, model_b = _version(tiny.model), _version(second_model[0])
    status, body = _post(server.port, "/admin/rollback", {})
    assert status == 409 and "nothing to roll back" in body["error"]
    copy = tmp_path / "model-b"
    shutil.copytree(second_model[0], copy)
    with LoadGenerator(server.port) as load:
        time.sleep(0.3)
        status, _ = _post(server.port, "/admin/reload", {"model_dir": str(copy), "bundle_dir": str(copy / "bundle")})
        assert status == 200
        status, _ = _post(server.port, "/admin/reload", {"model_dir": str(tiny.model), "bundle_dir": str(tiny.bundle)})
        assert status == 200
        shutil.rmtree(copy)
        status, body = _post(server.port, "/admin/rollback", {})
        assert status == 200 and body["status"] == "rolled back", body
        assert body["model_version"] == model_b and body["previous_model_version"] == model_a
        rolled_back = time.perf_counter()
        time.sleep(0.5)
        status, body = _post(server.port, "/admin/rollback", {})  # and back again
        assert status == 200 and body["model_version"] == model_a
    assert _post(server.port, "/admin/rollback", {}, token=None)[0] == 401
    outcomes = load.outcomes
    assert len(outcomes) > 30 and [o for o in outcomes if o.status != 200] == []
    assert model_b in {o.model_version for o in outcomes if o.started > rolled_back}


def test_canary_splits_by_a_stable_key_then_promotion_and_rollback_end_it(
    tiny: TinyPipeline, second_model, server: Server
) -> None:
    model_a, model_b = _version(tiny.model), _version(second_model[0])
    port = server.port

    def served(query: str, key: str | None = None) -> str:
        status, body = _post(port, "/rank", {"query": query, "top_k": 1}, extra={"x-request-key": key} if key else None)
        assert status == 200, body
        return body["model_version"]

    assert _post(port, "/admin/canary/promote", {})[0] == 409
    assert _post(port, "/admin/canary", {"share": 30})[0] == 409  # no canary to change
    paths = {"model_dir": str(second_model[0]), "bundle_dir": str(second_model[1])}
    status, body = _post(port, "/admin/canary", {"share": 50, **paths})
    assert status == 200 and body["canary_model_version"] == model_b and body["model_version"] == model_a
    queries = [f"a gin drink number {i}" for i in range(40)]
    first = {q: served(q) for q in queries}
    assert set(first.values()) == {model_a, model_b}
    assert {q: served(q) for q in queries} == first  # one query keeps meeting one model
    by_key = {served(q, key="user-7") for q in queries}
    assert len(by_key) == 1  # the header, when given, decides instead of the query
    assert _post(port, "/admin/canary", {"share": 0})[0] == 200 and {served(q) for q in queries} == {model_a}
    assert _post(port, "/admin/canary", {"share": 100})[0] == 200 and {served(q) for q in queries} == {model_b}
    _post(port, "/admin/canary", {"share": 50})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    exposition = conn.getresponse().read().decode()
    for version in (model_a, model_b):
        assert f'rank_model_requests_total{{model_version="{version}",route="/rank"}}' in exposition
    status, body = _post(port, "/admin/canary/promote", {})
    assert status == 200 and body["status"] == "promoted" and body["model_version"] == model_b
    assert {served(q) for q in queries} == {model_b}
    status, body = _post(port, "/admin/canary", {"share": 50, **paths})
    assert status == 200
    status, body = _post(port, "/admin/rollback", {})  # during a canary, rollback ends it
    assert status == 200 and body["status"] == "canary ended" and {served(q) for q in queries} == {model_b}
    status, body = _post(port, "/admin/rollback", {})  # then it undoes the promotion
    assert status == 200 and body["model_version"] == model_a and {served(q) for q in queries} == {model_a}


def test_a_shadow_scores_live_traffic_without_serving_it_then_becomes_the_canary(
    tiny: TinyPipeline, second_model, server: Server
) -> None:
    model_a, model_b = _version(tiny.model), _version(second_model[0])
    port = server.port
    paths = {"model_dir": str(second_model[0]), "bundle_dir": str(second_model[1])}
    with LoadGenerator(port) as load:
        time.sleep(0.3)
        status, body = _post(port, "/admin/shadow", paths)
        assert status == 200 and body["shadow_model_version"] == model_b and body["model_version"] == model_a
        time.sleep(1.5)
        status, shadow = _post(port, "/admin/shadow", {}, method="GET")
    assert status == 200 and shadow["compared"] > 10 and shadow["failed"] == 0, shadow
    for figure in ("overlap_at_10", "rbo", "top1"):
        assert 0.0 <= shadow["mean"][figure] <= 1.0
    assert -1.0 <= shadow["mean"]["kendall_tau"] <= 1.0
    outcomes = load.outcomes
    assert len(outcomes) > 30 and [o for o in outcomes if o.status != 200] == []
    assert {o.model_version for o in outcomes} == {model_a}  # the shadow never answered a request
    # the loaded shadow starts serving as the canary without being read from disk again; the shadow ends
    status, body = _post(port, "/admin/canary", {"share": 100})
    assert status == 200 and body["canary_model_version"] == model_b, body
    assert _post(port, "/admin/shadow", {}, method="GET")[1] == {"status": "no shadow"}
    assert _post(port, "/rank", {"query": "gin", "top_k": 1})[1]["model_version"] == model_b
    status, body = _post(port, "/admin/rollback", {})
    assert status == 200 and body["status"] == "canary ended"


def test_corrupt_reload_is_refused_and_the_old_model_keeps_serving(
    tiny: TinyPipeline, second_model, server: Server, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(second_model[0], broken)
    (broken / "ranker.onnx").write_bytes((broken / "ranker.onnx").read_bytes()[:2048])
    status, body = _post(server.port, "/admin/reload", {"model_dir": str(broken), "bundle_dir": str(broken / "bundle")})
    assert status == 422
    assert "checksum mismatch" in body["error"] and "ranker.onnx" in body["error"]
    assert body["model_version"] == _version(tiny.model)
    status, body = _post(server.port, "/rank", {"query": "gin", "top_k": 1})
    assert status == 200 and body["model_version"] == _version(tiny.model)


def test_reload_needs_the_token(server: Server) -> None:
    assert _post(server.port, "/admin/reload", {}, token=None)[0] == 401
    assert _post(server.port, "/admin/reload", {}, token="wrong-token-0123456789")[0] == 401


def test_admin_api_is_off_without_a_token(toy: ToyArtifacts) -> None:
    with TestClient(create_app(serving_settings(toy))) as client:
        r = client.post("/admin/reload", headers={"authorization": "Bearer anything-at-all-here"})
        assert r.status_code == 403 and "RANK_ADMIN_TOKEN" in r.json()["error"]


def test_a_weak_admin_token_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="admin_token"):
        from service.settings import Settings

        Settings(admin_token="changeme")


def test_sigterm_under_load_fails_no_request_accepted_before_it(tiny: TinyPipeline) -> None:
    running = _start(tiny, RANK_DRAIN_SECONDS="1", RANK_SHUTDOWN_GRACE_SECONDS="5")
    try:
        with LoadGenerator(running.port) as load:
            time.sleep(0.7)
            signalled = time.perf_counter()
            running.process.send_signal(signal.SIGTERM)
            running.process.wait(15)
            stopped = time.perf_counter()
        # A request sent in the last instant before the signal may reach the server after the drain began: it is
        # refused with a clean 503, never accepted. Anything sent 100 ms earlier (latency here is a few ms) was
        # accepted, and must have succeeded.
        accepted = [o for o in load.outcomes if o.started < signalled - 0.1]
        assert len(accepted) > 20
        assert [o for o in accepted if o.status != 200] == []
        assert all(o.status in (200, 503) for o in load.outcomes if o.started < signalled)
        after = [o for o in load.outcomes if o.started > signalled]
        assert any(o.status == 503 for o in after)  # drained: refused with 503 while still listening
        assert all(o.status in (200, 503, 0) for o in after)  # 0: refused connection once the socket closed
        # uvicorn re-raises the SIGTERM it captured once its graceful shutdown is done: the conventional status.
        assert running.process.returncode in (0, -signal.SIGTERM) and stopped - signalled < 1 + 5 + 3
    finally:
        _stop(running)


@pytest.fixture(scope="module")
def client(toy: ToyArtifacts) -> Iterator[TestClient]:
    with TestClient(create_app(serving_settings(toy, max_body_bytes=10_000))) as c:
        yield c


def test_body_over_the_limit_gets_413(client: TestClient) -> None:
    r = client.post("/rank", content=json.dumps({"query": "x" * 20_000}), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["error"]


def test_chunked_body_over_the_limit_gets_413(client: TestClient) -> None:
    chunks = (b'{"query": "' + b"y" * 4000 for _ in range(5))
    r = client.post("/rank", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413


@pytest.fixture(scope="module")
def limited_url(toy: ToyArtifacts) -> Iterator[str]:
    """The app with its default 1 MB body limit behind a real uvicorn on a free 127.0.0.1 port, in a thread."""
    with serve_in_thread(create_app(serving_settings(toy))) as url:
        yield url


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_that_sends_its_whole_body_first_reads_the_413(limited_url: str, chunked: bool) -> None:
    """Python's urllib writes the whole body before it reads the answer; a service that answered without reading the
    body closed the socket on unread bytes and the client saw a connection reset instead of the 413."""
    import urllib.error
    import urllib.request

    body = json.dumps({"query": "gin " * 1_250_000}).encode()  # 5 MB: more than the socket buffers hold
    data: bytes | Iterator[bytes] = (body[i : i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    request = urllib.request.Request(f"{limited_url}/rank", data=data, headers={"content-type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(request, timeout=10)
    assert caught.value.code == 413 and "body" in json.loads(caught.value.read())["error"]


def test_a_client_that_waits_for_100_continue_gets_the_413_without_sending(limited_url: str) -> None:
    """curl and others ask first (Expect: 100-continue) for large bodies: they get the 413 and never upload."""
    host, port = limited_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("POST", "/rank")
    for name, value in (
        ("content-type", "application/json"),
        ("content-length", "5000000"),
        ("expect", "100-continue"),
    ):
        connection.putheader(name, value)
    connection.endheaders()  # no body sent
    response = connection.getresponse()
    assert response.status == 413 and "body" in json.loads(response.read())["error"]
    connection.close()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[" * 4000 + b"]" * 4000, 400),
        (b'{"query": {"a": {"b": {"c": [[[[1]]]]}}}}', 422),
        (json.dumps({"query": "gin", "top_k": 2**70}).encode(), 422),
        (
            json.dumps({"query": "\u202e\u05e9\u05dc\u05d5\u05dd \U0001f378 \u0645\u0631\u062d\u0628\u0627"}).encode(),
            200,
        ),
        (json.dumps({"query": "\u0007\u0008\u200b\ufeff"}).encode(), 422),
        (json.dumps({"query": "\ud83c"}).encode(), 422),
        (json.dumps({"query": "gin", "documents": ["a"]}).encode(), 422),
        (b'{"query": "gin", "query": "rum"}', 200),
        (b"\xff\xfe not utf-8", 422),
    ],
)
def test_hostile_bodies_get_clear_answers(client: TestClient, body: bytes, status: int) -> None:
    r = client.post("/rank", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    if status >= 400:
        assert r.json()["error"]


def test_too_many_rerank_documents_is_422(client: TestClient) -> None:
    r = client.post("/rerank", json={"query": "gin", "documents": ["d"] * 1001})
    assert r.status_code in (413, 422)


@pytest.fixture(scope="module")
def fuzz_server(tiny: TinyPipeline) -> Iterator[Server]:
    running = _start(tiny)
    yield running
    _stop(running)


def test_fuzzed_requests_never_get_5xx(fuzz_server: Server) -> None:
    """Requests generated from the service's own OpenAPI schema (valid and invalid), 40 per operation."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            nonlocal calls
            response = case.call(timeout=30)
            calls += 1
            # 504 is the documented answer to a deadline (timeout_ms) that passed before ranking; fuzzing sends 1 ms
            expired = response.status_code == 504 and isinstance(case.body, dict) and "timeout_ms" in case.body
            assert response.status_code < 500 or expired, (
                f"{case.method} {case.path} {case.body!r} -> {response.status_code}"
            )

        check()
    assert calls >= 100
