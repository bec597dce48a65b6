"""A real catalog's everyday defects never stop a command: every command gives each record the same verdict
(index.data.verdict), counts each defect and names its first records, and `make validate` predicts training.

The fixture is a small SYNTHETIC catalog with every defect planted, among them two records shaped like the two that
stopped training on a real collection: a blank title and text, and only string attributes whose values are nearly
all distinct across the catalog (so the feature schema drops them and the items have nothing left).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index.data.records import DataError
from index.data.validate import validate
from index.data.verdict import DEFECT_KINDS, read_catalog
from index.runtime.bundle import Bundle
from index.runtime.text_encoder import TextEncoder
from service.app import create_app
from training.evaluate import crossval
from training.evaluate.cli import main as evaluate_main
from training.evaluate.data import load_eval_data
from training.synthetic import SyntheticConfig, write_dataset

from .conftest import TinyPipeline, build_tiny_pipeline, serving_settings

EMPTY = ("empty-1", "empty-2")
# What the fixture plants, as the verdict counts it.
EXPECTED = {
    "items_read": 302,
    "items_kept": 300,
    "items_skipped": 2,  # the two empty records
    "blank_fields": 3,  # the two empty records and one blank title
    "attribute_type_mismatches": 2,  # price given as a string twice
    "long_texts": 1,  # one absurdly long description
    "judgments_unknown_item": 1,  # a deleted item
    "judgments_skipped_item": 1,  # an empty item
    "judgments_unknown_query": 1,
    "queries_unjudged": 3,
}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_messy_catalog(data: Path) -> None:
    """A 300-item SYNTHETIC catalog (written by its generator) with every everyday defect planted."""
    write_dataset(data, SyntheticConfig(seed=5, items=300, queries=90))
    items = _read(data / "items.jsonl")
    for k, item in enumerate(items):  # id-like string attributes: too many values for the schema to keep
        item["attributes"].update(author=f"author {k}", bibliography=f"j. {k} ({1950 + k % 40})")
    items[3]["title"] = "   "  # a blank title, the item still has a description and a picture
    items[3]["text"] = "a tall pink drink with mint"
    items[5]["attributes"]["price"] = "n/a"  # a number everywhere else
    items[6]["attributes"]["price"] = "unknown"
    items[7]["text"] = " ".join(["a very long description of this drink"] * 300)
    items += [
        {"id": "empty-1", "title": "", "text": "  ", "attributes": {"author": "unknown", "bibliography": "unknown"}},
        {"id": "empty-2", "title": " ", "text": "", "attributes": {"author": "unknown", "bibliography": "unknown"}},
    ]
    _write(data / "items.jsonl", items)
    queries = _read(data / "queries.jsonl")
    judgments = _read(data / "judgments.jsonl")
    assert {q["id"] for q in queries} == {j["query_id"] for j in judgments}  # the generator judges every query
    first = queries[0]["id"]
    queries += [{"id": f"unjudged-{k}", "text": "a drink nobody judged", "split": "train"} for k in range(3)]
    judgments += [
        {"query_id": first, "item_id": "deleted-item", "grade": 2},
        {"query_id": first, "item_id": "empty-1", "grade": 3},
        {"query_id": "deleted-query", "item_id": items[0]["id"], "grade": 1},
    ]
    _write(data / "queries.jsonl", queries)
    _write(data / "judgments.jsonl", judgments)


@dataclass(frozen=True)
class Messy:
    pipeline: TinyPipeline
    validated: dict[str, int]


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory, encoder_dir: Path) -> Messy:
    """Validated (as `make validate` does), then trained, exported and indexed (`make train export index`)."""
    root = tmp_path_factory.mktemp("messy")
    write_messy_catalog(root / "data")
    report = validate(root / "data", text_measure=TextEncoder(encoder_dir))
    assert report.ok, [str(p) for p in report.errors]
    pipeline = build_tiny_pipeline(root / "data", root, encoder_dir, epochs=3, patience=3, retrieval_epochs=3)
    return Messy(pipeline, report.counts)


def test_validate_counts_each_defect_and_names_the_first_records(messy: Messy) -> None:
    assert {key: messy.validated[key] for key in EXPECTED} == EXPECTED
    report = validate(messy.pipeline.data, text_measure=TextEncoder(messy.pipeline.encoder))
    messages = [p.message for p in report.warnings]
    assert (
        "2 of 302 items have nothing the model can use (no text, no image, no value of an attribute it reads: "
        "base_spirit, colour, garnish, glass, style, price, rating) (items.jsonl:301 (empty-1), "
        "items.jsonl:302 (empty-2)): skipped: no candidate source can find them and the ranker has nothing to attend to"
    ) in messages
    assert any(m.startswith("3 of 93 queries have no judgment (queries.jsonl:91 (unjudged-0)") for m in messages)
    assert any("(items.jsonl:6 (syn-00005), items.jsonl:7 (syn-00006))" in m for m in messages)


def test_training_reports_what_validate_predicted(messy: Messy) -> None:
    metrics = json.loads((messy.pipeline.model / "metrics.json").read_text())
    trained = metrics["catalog"]
    assert {key: trained[key] for key in (*DEFECT_KINDS, "items_read", "items_kept", "judgments_kept")} == {
        key: messy.validated[key] for key in (*DEFECT_KINDS, "items_read", "items_kept", "judgments_kept")
    }
    card = json.loads((messy.pipeline.model / "model_card.json").read_text())
    assert card["dataset"]["catalog"]["items_skipped"] == 2


def test_the_bundle_leaves_the_empty_items_out_and_serves(messy: Messy) -> None:
    bundle = Bundle.load(messy.pipeline.bundle)
    assert bundle.size == EXPECTED["items_kept"] and not set(EMPTY) & set(bundle.ids)
    assert bundle.manifest["catalog"] == {"items_read": 302, "skipped": 2}
    assert bundle.manifest["text"]["truncated"] == 1
    with TestClient(create_app(serving_settings(messy.pipeline))) as client:
        answer = client.post("/rank", json={"query": "pink drink with mint", "top_k": 5})
        assert answer.status_code == 200 and len(answer.json()["results"]) == 5
        blank_title = client.post("/rank", json={"query": "a tall pink drink with mint", "top_k": 100}).json()
        assert "syn-00003" in [hit["id"] for hit in blank_title["results"]]  # found by its description


def test_evaluation_leaves_out_what_training_left_out(messy: Messy, tmp_path: Path) -> None:
    data = load_eval_data(messy.pipeline.data, "all")
    assert len(data.items) == EXPECTED["items_kept"]
    assert not any(q.id.startswith("unjudged-") for q in data.queries)
    assert "empty-1" not in data.judged[data.queries[0].id] and "deleted-item" not in data.judged[data.queries[0].id]
    out = tmp_path / "evaluate.json"
    assert (
        evaluate_main(["--data", str(messy.pipeline.data), "--systems", "bm25", "--split", "all", "--out", str(out)])
        == 0
    )
    assert json.loads(out.read_text())["systems"]["bm25"]["queries"] == 90


@pytest.mark.slow
def test_cross_validation_runs_on_the_messy_catalog(messy: Messy, tmp_path: Path) -> None:
    small = "--epochs 2 --patience 2 --retrieval-epochs 2 --num-candidates 40 --dim 32 --hidden 64 --lr-grid ''"
    out = tmp_path / "crossval.json"
    argv = ["--data", str(messy.pipeline.data), "--folds", "3", "--encoder", str(messy.pipeline.encoder)]
    argv += ["--work", str(tmp_path / "work"), "--train-args", small, "--out", str(out)]
    assert crossval.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["systems"]["trained_served"]["queries"] == 90  # every judged query, once, in its own fold


def test_a_catalog_with_nothing_usable_still_refuses_in_one_sentence(tmp_path: Path) -> None:
    _write(tmp_path / "items.jsonl", [{"id": "a", "title": " "}, {"id": "b"}])
    with pytest.raises(DataError) as caught:
        read_catalog(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "no item has anything the model can use" in message
