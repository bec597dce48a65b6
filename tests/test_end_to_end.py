"""The whole default pipeline at full size (SYNTHETIC data): quality bounds on the held-out test queries, and the
served /rank answering test queries with items that satisfy their stated constraints. Slow: about two minutes."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index.offline.bundle_writer import build_bundle
from service.app import create_app
from service.settings import Settings
from training.cli import run_train
from training.export import run_export
from training.synthetic import SyntheticConfig, write_dataset
from training.train import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, encoder_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("full")
    data, out = root / "synthetic", root / "artifacts"
    write_dataset(data, SyntheticConfig())
    cfg = TrainConfig(data_dir=data, out_dir=out, encoder_dir=encoder_dir)
    assert run_train(cfg) == 0
    assert run_export(out) == 0
    build_bundle(data, out, encoder_dir, out / "bundle")
    return {"data": data, "model": out, "bundle": out / "bundle", "encoder": encoder_dir}


def test_fusion_beats_baselines_on_held_out_queries(full: dict[str, Path]) -> None:
    card = json.loads((full["model"] / "model_card.json").read_text())
    test = card["metrics"]["test"]
    assert test["fusion"]["ndcg@10"] >= test["text_cosine"]["ndcg@10"] + 0.05
    assert test["fusion"]["ndcg@10"] >= test["lambdamart"]["ndcg@10"]
    assert test["fusion"]["compliance@1"] >= 0.85
    assert card["parity"]["max_abs_diff"] <= 1e-4 and card["parity"]["top10_identical"] == card["parity"]["queries"]


def test_served_top_results_satisfy_the_query_constraints(full: dict[str, Path]) -> None:
    queries = [json.loads(line) for line in (full["data"] / "queries.jsonl").read_text().splitlines()]
    test_queries = [q for q in queries if q["split"] == "test"]
    compliant = defaultdict(set)
    for line in (full["data"] / "judgments.jsonl").read_text().splitlines():
        j = json.loads(line)
        if j["compliant"]:
            compliant[j["query_id"]].add(j["item_id"])
    settings = Settings(bundle_dir=full["bundle"], model_dir=full["model"], encoder_dir=full["encoder"])
    with TestClient(create_app(settings)) as client:
        top1 = [
            client.post("/rank", json={"query": q["text"], "top_k": 1}).json()["results"][0]["id"] in compliant[q["id"]]
            for q in test_queries
        ]
    assert sum(top1) / len(top1) >= 0.85
