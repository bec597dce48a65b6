"""`make rollout` (training/release/) against a real service process on 127.0.0.1: a second model goes through
the offline gate, shadow and canary to promotion under Locust load with no failed request; a candidate trained on
shuffled labels is stopped by the offline gate and one that disagrees on live traffic by the shadow thresholds,
neither ever answering a request. Every load is bounded in time."""

from __future__ import annotations

import csv
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.cli import run_train
from training.export import run_export
from training.paths import ROOT
from training.release.steps import canary_figures

from .conftest import TinyPipeline
from .live_service import LiveService

pytestmark = pytest.mark.integration

TOKEN = "rollout-test-token-0123456789"


def _version(model_dir: Path) -> str:
    return json.loads((model_dir / "model_card.json").read_text())["version"]


@pytest.fixture
def service(tiny: TinyPipeline) -> Iterator[LiveService]:
    running = LiveService.start(tiny, RANK_ADMIN_TOKEN=TOKEN)
    yield running
    running.stop()


def _rollout(tiny: TinyPipeline, url: str, model: Path, log: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The rollout CLI, for the tiny artifacts: the tiny models do not beat zero-shot search (60 training queries),
    so that rule is off; shadow and canary are short."""
    command = [
        sys.executable,
        "-m",
        "training.release",
        "--url",
        url,
        "--model",
        str(model),
        "--data",
        str(tiny.data),
        "--serving-model",
        str(tiny.model),
        "--serving-bundle",
        str(tiny.bundle),
        "--encoder",
        str(tiny.encoder),
        "--allow-below-zero-shot",
        "--shadow-requests",
        "30",
        "--shadow-seconds",
        "40",
        "--canary-share",
        "50",
        "--canary-seconds",
        "4",
        "--log",
        str(log),
        *extra,
    ]
    env = {**os.environ, "RANK_ADMIN_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Traffic:
    """Threads posting /rank until stopped (at most 90 s), recording each response's status and version."""

    def __init__(self, port: int, threads: int = 3) -> None:
        self.port = port
        self.seen: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(threads)]

    def _loop(self, seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.time() + 90
        while not self._stop.is_set() and time.time() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            started = time.time()
            try:
                body = json.dumps({"query": f"gin sour {rng.randrange(40)}", "top_k": 10})
                conn.request("POST", "/rank", body, {"content-type": "application/json"})
                response = conn.getresponse()
                response.read()
                self.seen.append((started, response.status, response.getheader("x-model-version") or ""))
            except (OSError, http.client.HTTPException):
                self.seen.append((started, 0, ""))
            finally:
                conn.close()
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def test_a_second_model_rolls_out_under_locust_load_with_no_failed_request(
    tiny: TinyPipeline, second_model: tuple[Path, Path], service: LiveService, tmp_path: Path
) -> None:
    old, new = _version(tiny.model), _version(second_model[0])
    slo = tmp_path / "slo.toml"
    slo.write_text("[[objective]]\nname = 'error rate'\nmax_error_rate = 0.0\n")
    locust = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadtests.run",
            "--host",
            service.url,
            "--duration",
            "75",
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--user-rps",
            "10",
            "--queries",
            str(tiny.data / "queries.jsonl"),
            "--slo",
            str(slo),
            "--out",
            str(tmp_path / "reports"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(8)  # Locust is sending
        log = tmp_path / "rollout.jsonl"
        done = _rollout(tiny, service.url, second_model[0], log, "--tolerance", "0.2", "--min-overlap", "0")
        promoted_at = time.time()
        assert done.returncode == 0, done.stdout + done.stderr
        assert "PROMOTED" in done.stdout and "| promote | ok" in done.stdout
        output, _ = locust.communicate(timeout=180)
    finally:
        if locust.poll() is None:
            locust.kill()
    assert locust.returncode == 0, output  # the error-rate objective: no failed request at all
    steps = _log(log)
    assert [s["step"] for s in steps] == ["serving", "export", "bundle", "offline gate", "shadow", "canary", "promote"]
    assert all(s["status"] == "ok" for s in steps), steps
    assert steps[4]["figures"]["compared"] >= 30 and steps[4]["figures"]["failed"] == 0
    assert steps[5]["figures"]["candidate_requests"] > 0 and steps[5]["figures"]["5xx"] == 0
    assert steps[3]["figures"]["ndcg@10"]["candidate"] > 0

    (run_dir,) = (tmp_path / "reports").glob("loadtest-*")
    with (run_dir / "samples.csv").open() as rows:
        samples = [row for row in csv.DictReader(rows) if row["name"].split(" ")[0] in ("/rank", "/rerank")]
    served = [s for s in samples if s["status"] == "200"]
    assert len(served) > 500
    assert {s["model_version"] for s in served} == {old, new}  # both served, nothing else
    assert {s["model_version"] for s in served if float(s["start"]) > promoted_at} == {new}


def _shuffled_labels_model(tiny: TinyPipeline, root: Path) -> Path:
    """A model trained on the tiny data with each query's grades shuffled among its judged items: labels that say
    nothing, as a broken join would give."""
    data = root / "data"
    shutil.copytree(tiny.data, data)
    rows = [json.loads(line) for line in (data / "judgments.jsonl").read_text().splitlines() if line.strip()]
    rng = random.Random(0)
    by_query: dict[str, list[dict]] = {}
    for row in rows:
        by_query.setdefault(row["query_id"], []).append(row)
    for judged in by_query.values():
        grades = [row["grade"] for row in judged]
        rng.shuffle(grades)
        for row, grade in zip(judged, grades, strict=True):
            row["grade"] = grade
    (data / "judgments.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = root / "model"
    cfg = tiny.config.__class__(**{**tiny.config.__dict__, "data_dir": data, "out_dir": out})
    assert run_train(cfg) == 0 and run_export(out) == 0
    return out


def test_a_model_trained_on_shuffled_labels_is_stopped_by_the_offline_gate(
    tiny: TinyPipeline, service: LiveService, tmp_path: Path
) -> None:
    candidate = _shuffled_labels_model(tiny, tmp_path)
    log = tmp_path / "rollout.jsonl"
    done = _rollout(tiny, service.url, candidate, log)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "STOPPED" in done.stdout
    last = _log(log)[-1]
    assert last["step"] == "offline gate" and last["status"] == "stopped", last
    ndcg = last["figures"]["ndcg@10"]
    assert ndcg["candidate"] < ndcg["serving"] - 0.005 and "below the serving model" in last["reason"]
    status, body, _ = service.request("GET", "/health/ready")
    assert status == 200
    status, body, headers = service.request("POST", "/rank", {"query": "gin"})
    assert status == 200 and headers["x-model-version"] == _version(tiny.model)


def test_a_candidate_that_disagrees_on_live_traffic_is_stopped_in_shadow(
    tiny: TinyPipeline, second_model: tuple[Path, Path], service: LiveService, tmp_path: Path
) -> None:
    """The second model passes offline (it is as good) but does not rank live queries like the serving one: with
    a mean RBO of at least 0.999 required, the shadow comparison stops it, and it never answers a request."""
    old = _version(tiny.model)
    log = tmp_path / "rollout.jsonl"
    with Traffic(service.port) as traffic:
        time.sleep(1)
        done = _rollout(tiny, service.url, second_model[0], log, "--tolerance", "0.2", "--min-rbo", "0.999")
    assert done.returncode == 1, done.stdout + done.stderr
    last = _log(log)[-1]
    assert last["step"] == "shadow" and last["status"] == "stopped", last
    assert last["figures"]["compared"] >= 30 and last["figures"]["mean"]["rbo"] < 0.999
    assert "mean RBO" in last["reason"]
    assert traffic.seen and {status for _, status, _ in traffic.seen} == {200}
    assert {version for _, _, version in traffic.seen} == {old}  # the candidate never served
    status, body, _ = service.request("GET", "/admin/shadow")
    assert status in (401, 403)  # admin needs the token: checked with it below
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    conn.request("GET", "/admin/shadow", headers={"authorization": f"Bearer {TOKEN}"})
    assert json.loads(conn.getresponse().read()) == {"status": "no shadow"}  # the rollout unloaded it


def test_canary_figures_come_from_counter_and_histogram_deltas() -> None:
    def exposition(old_requests: int, new_requests: int, errors: int, slow: int) -> str:
        lines = [
            f'rank_model_requests_total{{route="/rank",model_version="a"}} {old_requests}',
            f'rank_model_requests_total{{route="/rank",model_version="b"}} {new_requests}',
            f'rank_http_requests_total{{route="/rank",status="500"}} {errors}',
            "# TYPE rank_served_seconds histogram",
        ]
        for version, count, late in (("a", old_requests, 0), ("b", new_requests, slow)):
            labels = f'route="/rank",encoded="no",model_version="{version}"'
            lines += [
                f'rank_served_seconds_bucket{{{labels},le="0.01"}} {count - late}',
                f'rank_served_seconds_bucket{{{labels},le="0.1"}} {count}',
                f'rank_served_seconds_bucket{{{labels},le="+Inf"}} {count}',
            ]
        return "\n".join(lines) + "\n"

    figures = canary_figures(exposition(10, 0, 1, 0), exposition(110, 100, 1, 50), "a", "b")
    assert (figures["serving_requests"], figures["candidate_requests"], figures["5xx"]) == (100, 100, 0)
    assert figures["cached_requests"] == {"serving": 100, "candidate": 100}
    # serving: all 100 under 10 ms -> p99 in (0, 10 ms]; candidate: half over 10 ms -> p99 in (10, 100 ms]
    assert figures["cached_p99_ms"]["serving"] <= 10.0 < figures["cached_p99_ms"]["candidate"]
    assert figures["cached_p99_ratio"] > 1.0


def test_a_bad_admin_token_stops_the_rollout_cli_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.release.cli import main

    monkeypatch.setenv("RANK_ADMIN_TOKEN", "short")
    assert main(["--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: settings: admin_token must be at least 16 characters") and err.count("\n") == 1
