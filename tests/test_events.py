"""The impression and feedback log (service/events.py): a request_id in every /rank answer, sampled impressions
with their feature logging, POST /feedback, and the log's promises: records go off the response path, a stalled
disk drops records (counted) and never a request, and a SIGKILL while writing leaves only complete segments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import service.events
from service.app import create_app
from service.events import EventLog, Feedback, read_events
from service.metrics import Metrics
from training.paths import ROOT

from .conftest import serving_settings
from .toy_artifacts import ToyArtifacts


def test_every_rank_answer_has_a_request_id_that_its_header_repeats(toy: ToyArtifacts) -> None:
    for access_log in (False, True):
        with TestClient(create_app(serving_settings(toy, access_log=access_log))) as client:
            answer = client.post("/rank", json={"query": "gin"})
            assert (
                answer.json()["request_id"] == answer.headers["x-request-id"]
                and len(answer.headers["x-request-id"]) == 32
            )
            given = client.post("/rank", json={"query": "gin"}, headers={"x-request-id": "caller-7"})
            assert given.json()["request_id"] == "caller-7"


def test_sampled_impressions_and_feedback_are_logged_with_features(toy: ToyArtifacts, tmp_path: Path) -> None:
    settings = serving_settings(toy, log_dir=tmp_path / "log", log_sample=1.0, log_segment_records=7)
    queries = ["gin", "red drink", "a sour in a coupe", "mint", "tiki rum"] * 4
    with TestClient(create_app(settings)) as client:
        answers = [client.post("/rank", json={"query": q, "top_k": 4}).json() for q in queries]
        clicked = answers[0]["results"][1]["id"]
        for body in (
            {"request_id": answers[0]["request_id"], "item_id": clicked, "event": "click", "dwell_ms": 5300},
            {"request_id": answers[0]["request_id"], "item_id": clicked, "event": "purchase"},
            {"request_id": "never-sampled", "item_id": clicked, "event": "add_to_cart"},
        ):
            accepted = client.post("/feedback", json=body)
            assert accepted.status_code == 202 and accepted.json() == {"logged": True}
        bad = client.post("/feedback", json={"request_id": "r", "item_id": clicked, "event": "click", "user": "u1"})
        assert bad.status_code == 422 and bad.json()["field"] == "user"
        assert (
            client.post("/feedback", json={"request_id": "r", "item_id": "x", "event": "hover"}).json()["field"]
            == "event"
        )
    # After the shutdown every segment is complete: 20 impressions and 3 feedbacks in 4 files of at most 7 lines.
    log = tmp_path / "log"
    assert not list(log.glob("*.partial")) and len(list(log.glob("events-*.jsonl"))) == 4
    records = read_events(log)
    impressions = [r for r in records if r["kind"] == "impression"]
    assert [r["request_id"] for r in impressions] == [a["request_id"] for a in answers]
    for record, answer in zip(impressions, answers, strict=True):
        assert [(i["id"], i["position"], i["score"]) for i in record["items"]] == [
            (h["id"], h["rank"], h["score"]) for h in answer["results"]
        ]
        assert (
            record["model_version"] == answer["model_version"] and record["bundle_version"] == answer["bundle_version"]
        )
        assert {len(values) for values in record["features"].values()} == {4}
        assert {"bm25", "dense", "retrieval", "modalities"} <= set(record["features"])
    feedback = [r for r in records if r["kind"] == "feedback"]
    assert [(f["event"], f["dwell_ms"]) for f in feedback] == [
        ("click", 5300),
        ("purchase", None),
        ("add_to_cart", None),
    ]


def test_without_a_log_directory_nothing_is_logged_and_feedback_says_how(toy: ToyArtifacts) -> None:
    with TestClient(create_app(serving_settings(toy))) as client:
        answer = client.post("/feedback", json={"request_id": "r", "item_id": "x", "event": "click"})
        assert answer.status_code == 409 and "RANK_LOG_DIR" in answer.json()["error"]


def test_a_stalled_disk_drops_records_counted_and_no_request(
    toy: ToyArtifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = service.events._write_line
    stalled = {"done": False}

    def stall_once(handle: object, data: bytes) -> None:
        if not stalled["done"]:
            stalled["done"] = True
            time.sleep(2.0)  # the disk stalls for 2 s under the first record
        write(handle, data)

    monkeypatch.setattr(service.events, "_write_line", stall_once)
    settings = serving_settings(toy, log_dir=tmp_path / "log", log_sample=1.0, log_queue=5)
    with TestClient(create_app(settings)) as client:
        started = time.monotonic()
        statuses = [client.post("/rank", json={"query": f"gin {i % 5}", "top_k": 3}).status_code for i in range(40)]
        took = time.monotonic() - started
        count = client.app.state.rank.metrics.registry.get_sample_value
        dropped = count("rank_event_records_total", {"kind": "impression", "outcome": "dropped"})
    assert statuses == [200] * 40
    assert took < 2.0  # no request waited for the stalled writer
    written = len(read_events(tmp_path / "log"))
    assert dropped is not None and dropped >= 1 and written + dropped == 40


def test_a_sigkill_while_writing_leaves_only_complete_segments(tmp_path: Path) -> None:
    writer = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from service.events import EventLog, Feedback
        from service.metrics import Metrics
        log = EventLog(Path({str(tmp_path / "log")!r}), Metrics(), segment_records=50)
        n = 0
        while True:
            n += 1
            if not log.offer(Feedback(f"r{{n}}", "item-" + "x" * (n % 300), "click", None, time.time())):
                time.sleep(0.001)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", writer], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while len(list((tmp_path / "log").glob("events-*.jsonl"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(10)
    segments = sorted((tmp_path / "log").glob("events-*.jsonl"))
    assert len(segments) >= 3
    for segment in segments:
        lines = segment.read_text().splitlines()
        assert len(lines) == 50 and all(json.loads(line)["kind"] == "feedback" for line in lines)
    assert len(read_events(tmp_path / "log")) == 50 * len(segments)  # the .partial one is not read


def test_offering_never_blocks_even_with_the_writer_stuck(tmp_path: Path) -> None:
    metrics = Metrics()
    log = EventLog(tmp_path, metrics, max_queue=3, write=lambda handle, data: time.sleep(0.5))
    started = time.monotonic()
    offered = [log.offer(Feedback(f"r{i}", "item", "click", None, 0.0)) for i in range(20)]
    assert time.monotonic() - started < 0.1
    assert offered.count(False) >= 20 - 3 - 1  # the queue's room, and the one the writer holds
    assert metrics.registry.get_sample_value(
        "rank_event_records_total", {"kind": "feedback", "outcome": "dropped"}
    ) == offered.count(False)


def test_exploration_swaps_two_adjacent_results_and_marks_them(toy: ToyArtifacts, tmp_path: Path) -> None:
    plain = serving_settings(toy)
    explored = serving_settings(toy, log_dir=tmp_path / "log", explore=0.2)
    queries = [f"gin drink {i}" for i in range(60)]
    with TestClient(create_app(plain)) as client:
        expected = {
            q: [h["id"] for h in client.post("/rank", json={"query": q, "top_k": 5}).json()["results"]] for q in queries
        }
    with TestClient(create_app(explored)) as client:
        shown = {
            q: [h["id"] for h in client.post("/rank", json={"query": q, "top_k": 5}).json()["results"]] for q in queries
        }
    records = {r["query"]: r for r in read_events(tmp_path / "log")}  # only explored answers: RANK_LOG_SAMPLE is 0
    assert 0 < len(records) < 60
    for query in queries:
        if query not in records:
            assert shown[query] == expected[query]
            continue
        first, second = records[query]["explored"]
        assert second == first + 1
        swapped = list(expected[query])
        swapped[first - 1], swapped[second - 1] = swapped[second - 1], swapped[first - 1]
        assert shown[query] == swapped == [item["id"] for item in records[query]["items"]]
