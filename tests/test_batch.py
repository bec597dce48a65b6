"""The offline batch ranker (`python -m service.batch`): the same rankings as /rank, and clear refusals."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.batch import rank_file
from service.loading import load_engine
from service.metrics import Metrics
from training.paths import ROOT

from .conftest import TinyPipeline, serving_settings
from .live_service import tiny_env


def _requests(tiny: TinyPipeline, n: int) -> list[dict]:
    texts = [json.loads(line)["text"] for line in (tiny.data / "queries.jsonl").read_text().splitlines() if line]
    return [{"id": f"b{i}", "query": f"{texts[i % len(texts)]} {i // len(texts)}", "top_k": 10} for i in range(n)]


def test_batch_rankings_equal_rank_for_200_queries(tiny: TinyPipeline) -> None:
    requests = _requests(tiny, 200)
    engine = load_engine(serving_settings(tiny), Metrics())
    out, progress = io.StringIO(), io.StringIO()
    source = io.StringIO("".join(json.dumps(r) + "\n" for r in requests))
    assert rank_file(engine, source, out, batch=16, progress=progress) == (200, 0)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "queries/s" in progress.getvalue()
    with TestClient(create_app(serving_settings(tiny))) as client:
        for request, line in zip(requests, lines, strict=True):
            body = {k: v for k, v in request.items() if k != "id"}
            served = client.post("/rank", json=body).json()
            assert line["id"] == request["id"]
            assert [r["id"] for r in line["results"]] == [r["id"] for r in served["results"]]
            for got, want in zip(line["results"], served["results"], strict=True):
                assert got["score"] == pytest.approx(want["score"], abs=1e-6) and got["rank"] == want["rank"]
            assert line["model_version"] == served["model_version"]
            assert line["bundle_version"] == served["bundle_version"]


def test_batch_cli_refuses_bad_lines_and_says_so(tiny: TinyPipeline, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "ok", "query": "gin"}\n{"query": ""}\nnot json\n{"query": "rum", "top_k": 0}\n')
    out = tmp_path / "out.jsonl"
    run = [sys.executable, "-m", "service.batch", "--in", str(source), "--out", str(out)]
    done = subprocess.run(run, cwd=ROOT, env=tiny_env(tiny), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "3 lines could not be ranked" in done.stderr and "Traceback" not in done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["id"] == "ok" and lines[0]["results"]
    assert "query" in lines[1]["error"] and "not JSON" in lines[2]["error"] and "top_k" in lines[3]["error"]
    missing = subprocess.run(
        [sys.executable, "-m", "service.batch", "--in", str(tmp_path / "nope.jsonl"), "--out", str(out)],
        cwd=ROOT,
        env=tiny_env(tiny),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
