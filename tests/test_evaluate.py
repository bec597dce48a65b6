"""`make evaluate` (training/evaluate/): BM25, RRF and the metrics on a hand-made corpus with known answers; the
served evaluation against the offline one the tiny model card recorded; the CLI's one-sentence errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from index.data.records import fold_of
from index.runtime.lexical import tokenize
from loadtests.process import free_port
from service.loading import load_engine
from service.metrics import Metrics
from training.evaluate.cli import main
from training.evaluate.data import load_eval_data
from training.evaluate.scoring import query_metrics, run_systems, summarize
from training.evaluate.served import InProcessServed, served_rankings
from training.evaluate.systems import Ranking, bm25_rankings, rrf
from training.export import load_checkpoint, served_dataset
from training.metrics import evaluate_scores
from training.train import FeatureTensors, score_lists

from .conftest import TinyPipeline, serving_settings

DOCS = {
    "d1": "The cat sat on the mat",
    "d2": "A dog chased the cat",
    "d3": "Stock market prices rise",
    "d4": "the the the",
}


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """The 4-document corpus in the user data format, text only, two judged queries and one judged on nothing."""
    data = tmp_path / "four"
    data.mkdir()
    _write(data / "items.jsonl", [{"id": i, "title": text} for i, text in DOCS.items()])
    _write(
        data / "queries.jsonl",
        [
            {"id": "q-cat", "text": "cat on a mat", "split": "test"},
            {"id": "q-market", "text": "market prices", "split": "test"},
            {"id": "q-none", "text": "nothing relevant", "split": "train"},
        ],
    )
    _write(
        data / "judgments.jsonl",
        [
            {"query_id": "q-cat", "item_id": "d1", "grade": 3},
            {"query_id": "q-cat", "item_id": "d2", "grade": 1},
            {"query_id": "q-market", "item_id": "d3", "grade": 2},
            {"query_id": "q-none", "item_id": "d4", "grade": 0},
        ],
    )
    return data


# -- (a) the pieces, by hand -----------------------------------------------------------------------------------------


def test_tokens_are_lowercase_alphanumeric_runs() -> None:
    assert tokenize("Hello, World! 42-b_c naïve") == ["hello", "world", "42", "b", "c", "naïve"]


def test_bm25_scores_are_okapi_with_lucene_idf() -> None:
    """Scores of "cat mat" over the four documents, computed here from the formula (k1 1.5, b 0.75)."""
    tokens = {i: tokenize(t) for i, t in DOCS.items()}
    n, avg = len(DOCS), np.mean([len(t) for t in tokens.values()])

    def expected(doc: str, query: list[str]) -> float:
        total = 0.0
        for term in query:
            df = sum(term in t for t in tokens.values())
            tf = tokens[doc].count(term)
            if not df or not tf:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            # bm25s leaves out the constant (k1 + 1) factor of the numerator: same order, scores / 2.5
            total += idf * tf / (tf + 1.5 * (1 - 0.75 + 0.75 * len(tokens[doc]) / avg))
        return total

    (ranking,) = bm25_rankings(list(DOCS.values()), list(DOCS), ["cat mat"], depth=4)
    assert ranking.ids == ["d1", "d2"]  # both terms, then one; documents without either are not ranked
    for item_id, score in zip(ranking.ids, ranking.scores, strict=True):
        assert score == pytest.approx(expected(item_id, ["cat", "mat"]), rel=1e-5, abs=1e-6)
    # a term in every document but one still counts (Lucene's idf is never negative); unknown terms add nothing
    (the,) = bm25_rankings(list(DOCS.values()), list(DOCS), ["THE zebra"], depth=4)
    assert the.ids[0] == "d4" and "d3" not in the.ids and all(score > 0 for score in the.scores)


def test_rrf_adds_reciprocal_ranks_with_k_60() -> None:
    fused = rrf([Ranking(["a", "b", "c"], [3, 2, 1]), Ranking(["c", "a", "d"], [9, 8, 7])], k=60, top=3)
    assert fused.ids == ["a", "c", "b"]  # d (1/63) is cut at top=3
    assert fused.scores == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62])
    assert rrf([Ranking(["x"], [0.0])]).scores == [pytest.approx(1 / 61)]


def test_metrics_by_hand() -> None:
    judged = {"d1": 2, "d2": 1, "d5": 3}  # d5 is never retrieved: it counts against nDCG and recall
    m = query_metrics("q", Ranking(["d2", "d1", "d3"], [0.9, 0.5, 0.1]), judged)
    dcg = 1 / math.log2(2) + 3 / math.log2(3)
    ideal = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert m.ndcg_at_10 == pytest.approx(dcg / ideal)
    assert m.reciprocal_rank == 0.5  # d1, the first item with grade >= 2, is second
    assert m.recall == 0.5 and m.relevant == 2  # d1 found, d5 not
    # ties share their gain: a constant score on label-sorted input must not score 1
    tied = query_metrics("q", Ranking(["d1", "d2"], [1.0, 1.0]), {"d1": 2, "d2": 0})
    assert tied.ndcg_at_10 == pytest.approx((1.5 / 1 + 1.5 / math.log2(3)) / 3)
    # only the top `cutoff` count
    assert query_metrics("q", Ranking(["d3", "d1"], [2.0, 1.0]), {"d1": 2}, cutoff=1).recall == 0.0
    nothing = query_metrics("q-none", Ranking(["d1"], [1.0]), {"d1": 0})
    assert math.isnan(nothing.ndcg_at_10) and math.isnan(nothing.recall) and nothing.reciprocal_rank == 0.0
    s = summarize([m, nothing])
    assert s.queries == 2 and s.queries_without_relevant == 1
    assert s.ndcg_at_10 == pytest.approx(m.ndcg_at_10)  # excluded from nDCG and recall, counted
    assert s.mrr == pytest.approx(0.25)  # MRR over every query, as the model card's


def test_bm25_on_the_corpus_through_the_reader(corpus: Path) -> None:
    data = load_eval_data(corpus, "test")
    assert [q.id for q in data.queries] == ["q-cat", "q-market"] and not data.synthetic
    evaluation = run_systems(data, ["bm25"], top_k=4)
    by_query = {m.query_id: m for m in evaluation.per_query["bm25"]}
    assert by_query["q-market"].ndcg_at_10 == pytest.approx(1.0) and by_query["q-market"].reciprocal_rank == 1.0
    assert by_query["q-cat"].ndcg_at_10 == pytest.approx(1.0)  # d1 (3) then d2 (1): the ideal order
    assert len(load_eval_data(corpus, "all").queries) == 3


def test_folds_are_a_stable_hash() -> None:
    folds = [fold_of(f"q{i}", 5) for i in range(200)]
    assert folds == [fold_of(f"q{i}", 5) for i in range(200)] and set(folds) == set(range(5))
    assert all(fold_of(f"q{i}", 1) == 0 for i in range(10))


def test_cli_zero_shot_writes_table_and_json(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    code = main(["--data", str(corpus), "--systems", "bm25", "--split", "all", "--folds", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "bm25" in printed and "SYNTHETIC" not in printed and "3 queries of 3" in printed
    report = json.loads(out.read_text())
    assert report["systems"]["bm25"]["queries"] == 3 and report["systems"]["bm25"]["queries_without_relevant"] == 1
    assert {q["query_id"] for q in report["per_query"]["bm25"]} == {"q-cat", "q-market", "q-none"}
    assert len(report["folds"]["systems"]["bm25"]["per_fold"]) == 2


def test_cli_bm25_takes_and_reports_the_analysis(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report.json"
    argv = ["--data", str(corpus), "--systems", "bm25", "--split", "all", "--out", str(out)]
    assert main([*argv, "--bundle", str(tmp_path / "no-bundle"), "--analysis", "english"]) == 0
    assert "bm25 analysis: english" in capsys.readouterr().out
    assert json.loads(out.read_text())["settings"]["bm25"]["analysis"] == "english"
    assert main([*argv, "--bundle", str(tmp_path / "no-bundle")]) == 0  # no served bundle to match: none
    assert json.loads(out.read_text())["settings"]["bm25"]["analysis"] == "none"


# -- (b) the served path equals the offline evaluation -----------------------------------------------------------------


def test_served_evaluation_equals_the_model_cards_offline_evaluation(tiny: TinyPipeline) -> None:
    k = tiny.config.num_candidates  # 40: the lists the model card's figures were computed on
    engine = load_engine(serving_settings(tiny), Metrics())
    data = load_eval_data(tiny.data, "test")
    assert data.synthetic
    rankings = served_rankings(InProcessServed(engine, top_k=k, num_candidates=k), data.queries, set(engine.bundle.ids))
    served = summarize([query_metrics(q.id, r, data.judged[q.id], k) for q, r in zip(data.queries, rankings)])

    checkpoint = load_checkpoint(tiny.model / "checkpoint.pt")
    dataset = served_dataset(checkpoint)
    test = dataset.splits["test"]
    assert test.query_ids == [q.id for q in data.queries]
    scores = score_lists(checkpoint.ranker, FeatureTensors.of(dataset, torch.device("cpu")), test)
    offline = evaluate_scores(scores, test.grades, test.compliant, test.ideal_grades)
    assert served.queries == offline.queries  # (offline's queries_without_relevant counts lists, not judgments)
    assert served.ndcg_at_10 == pytest.approx(offline.ndcg_at_10_e2e, abs=1e-6)
    assert served.mrr == pytest.approx(offline.mrr, abs=1e-6)
    card = json.loads((tiny.model / "model_card.json").read_text())["metrics"]["test"]["fusion"]
    assert served.ndcg_at_10 == pytest.approx(card["ndcg@10_e2e"], abs=5e-5)  # the card rounds to 4 places


def test_cli_in_process_reports_every_system(
    tiny: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RANK_REQUIRE_BEATS_BASELINE", "false")  # the tiny model's relaxed gate, as the service reads it
    monkeypatch.setenv("RANK_WARMUP_QUERIES", "2")
    out = tmp_path / "tiny.json"
    paths = ["--bundle", str(tiny.bundle), "--model", str(tiny.model), "--encoder", str(tiny.encoder)]
    k = str(tiny.config.num_candidates)
    assert main(["--data", str(tiny.data), *paths, "--top-k", k, "--num-candidates", k, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "served = in process" in printed
    report = json.loads(out.read_text())
    assert set(report["systems"]) == {"served", "minilm_cosine", "bm25", "rrf(minilm,bm25)"}
    card = json.loads((tiny.model / "model_card.json").read_text())["metrics"]["test"]["fusion"]
    assert report["systems"]["served"]["ndcg@10"] == pytest.approx(card["ndcg@10_e2e"], abs=1e-4)
    assert all(len(rows) == report["systems"]["served"]["queries"] for rows in report["per_query"].values())


@pytest.mark.integration
def test_http_evaluation_equals_in_process(tiny: TinyPipeline) -> None:
    from training.evaluate.served import HttpServed

    from .live_service import LiveService

    data = load_eval_data(tiny.data, "test")
    local = InProcessServed(load_engine(serving_settings(tiny), Metrics()), top_k=20, num_candidates=40)
    service = LiveService.start(tiny)
    try:
        remote = HttpServed(service.url, top_k=20, num_candidates=40)
        over_http = served_rankings(remote, data.queries[:20])
        remote.close()
    finally:
        service.stop()
    in_process = served_rankings(local, data.queries[:20])
    assert [r.ids for r in over_http] == [r.ids for r in in_process]


# -- (c) one-sentence errors, exit code 2 --------------------------------------------------------------------------


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *, says: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert says in err


def test_cli_errors_are_one_sentence(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["--data", str(tmp_path / "missing")], capsys, says="does not exist")
    (corpus / "judgments.jsonl").rename(tmp_path / "judgments.jsonl")
    _fails(["--data", str(corpus), "--systems", "bm25"], capsys, says="has no judgments")
    (tmp_path / "judgments.jsonl").rename(corpus / "judgments.jsonl")
    _fails(["--data", str(corpus), "--split", "val", "--systems", "bm25"], capsys, says="no queries in split 'val'")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    _fails(["--data", str(corpus), "--systems", "served", "--url", url], capsys, says=f"cannot reach {url}")
    nowhere = ["--bundle", str(tmp_path / "b"), "--model", str(tmp_path / "m"), "--encoder", str(tmp_path / "e")]
    _fails(["--data", str(corpus), "--systems", "served", *nowhere], capsys, says="do not load")
    _fails(["--data", str(corpus), "--systems", "minilm", "--encoder", str(tmp_path / "e")], capsys, says="encoder")


def test_cli_refuses_a_service_of_another_catalog(
    tiny: TinyPipeline, corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RANK_REQUIRE_BEATS_BASELINE", "false")
    paths = ["--bundle", str(tiny.bundle), "--model", str(tiny.model), "--encoder", str(tiny.encoder)]
    _fails(["--data", str(corpus), "--systems", "served", *paths], capsys, says="serves another dataset")
