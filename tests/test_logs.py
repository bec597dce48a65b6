"""Structured logs (service/logs.py): RANK_LOG_FORMAT=json makes every event one JSON object on one line, with the
request id on lines logged while a request is served, and one access line per request."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from loadtests.process import request_json, start_service, wait_ready
from service.app import create_app
from service.logs import REQUEST_ID, configure_logging

from .conftest import serving_settings
from .toy_artifacts import ToyArtifacts


@pytest.fixture
def json_stream() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines into a buffer; pytest's own handlers and level are put back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def _events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_event_is_one_json_line_with_its_traceback_inside(json_stream: io.StringIO) -> None:
    token = REQUEST_ID.set("req-7")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logging.getLogger("service").exception("scoring failed for %s", "gin")
    finally:
        REQUEST_ID.reset(token)
    logging.getLogger("service").warning("no request here")
    first, second = _events(json_stream)
    assert first["level"] == "error" and first["logger"] == "service" and first["message"] == "scoring failed for gin"
    assert first["request_id"] == "req-7" and "ValueError: bad\nvalue" in first["error"]
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert "request_id" not in second and second["level"] == "warning"


def test_json_logs_write_an_access_line_per_request_with_its_id_route_status_and_model(
    toy: ToyArtifacts, json_stream: io.StringIO
) -> None:
    with TestClient(create_app(serving_settings(toy, log_format="json"))) as client:
        ok = client.post("/rank", json={"query": "gin", "top_k": 2}, headers={"x-request-id": "caller-1"})
        bad = client.post("/rank", json={"query": ""})
        odd = client.post("/rank", json={"query": "gin"}, headers={"x-request-id": "has spaces"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "caller-1"
    assert bad.status_code == 422 and len(bad.headers["x-request-id"]) == 32  # a fresh uuid4, hex
    assert odd.headers["x-request-id"] != "has spaces"  # not printable as one token: replaced
    access = [e for e in _events(json_stream) if e["logger"] == "service.access"]
    assert [(e["request_id"], e["route"], e["status"]) for e in access] == [
        ("caller-1", "/rank", 200),
        (bad.headers["x-request-id"], "/rank", 422),
        (odd.headers["x-request-id"], "/rank", 200),
    ]
    assert access[0]["model_version"] == ok.json()["model_version"] and access[0]["duration_ms"] > 0
    assert access[0]["method"] == "POST" and access[0]["message"] == "POST /rank 200"


def test_text_logs_keep_no_access_line_unless_asked(toy: ToyArtifacts) -> None:
    with TestClient(create_app(serving_settings(toy))) as client:
        assert "x-request-id" not in client.get("/health/ready").headers
    with TestClient(create_app(serving_settings(toy, access_log=True))) as client:
        assert "x-request-id" in client.get("/health/ready").headers


@pytest.mark.integration
def test_the_service_process_writes_only_json_lines(toy: ToyArtifacts, tmp_path: Path) -> None:
    """`python -m service` with RANK_LOG_FORMAT=json: start-up (uvicorn's lines too), the greeting, access lines and
    the shutdown all parse as JSON objects."""
    env = {
        **os.environ,
        "RANK_BUNDLE_DIR": str(toy.bundle),
        "RANK_MODEL_DIR": str(toy.model),
        "RANK_ENCODER_DIR": str(toy.encoder),
        "RANK_REQUIRE_BEATS_BASELINE": "false",
        "RANK_WARMUP_QUERIES": "2",
        "RANK_LOG_FORMAT": "json",
    }
    log = tmp_path / "service.log"
    service = start_service(env, log=log)
    try:
        wait_ready(service.url, service.process, log=log)
        assert request_json(f"{service.url}/rank", {"query": "gin", "top_k": 2}, timeout=10)[0] == 200
    finally:
        assert service.stop() in (0, -15)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any(e["logger"] == "uvicorn.error" for e in events)  # uvicorn's own lines are JSON too
    assert any(e["message"].startswith("serving on http://127.0.0.1:") for e in events)
    assert [e["route"] for e in events if e["logger"] == "service.access" and e["status"] == 200][-1] == "/rank"
