"""The training loops (candidate generator and ranker) learn and are reproducible, and the CLI refuses bad input
with one sentence."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from index.runtime.text_encoder import TextEncoder
from model.fusion import FusionConfig, FusionRanker
from model.schema import MODALITIES
from training.baselines import text_cosine_scores
from training.dataset import RankingLists, load_dataset
from training.metrics import evaluate_scores
from training.retrieval import _labels, _sample_items, learned_space, train_retriever
from training.synthetic import SyntheticConfig, write_dataset
from training.train import FeatureTensors, TrainConfig, lr_at, score_lists, train
from training.zero_shot import SOURCE_OPTIONS, ZERO_SHOT_SYSTEMS

from .conftest import TinyPipeline
from .toy_artifacts import ToyArtifacts


@pytest.fixture(scope="module")
def tiny_dataset(tiny: TinyPipeline):
    return load_dataset(tiny.data, TextEncoder(tiny.encoder), num_candidates=tiny.config.num_candidates)


def _small_cfg(tiny: TinyPipeline, **overrides) -> TrainConfig:
    base = dict(
        data_dir=tiny.data, encoder_dir=tiny.encoder, epochs=12, dim=32, hidden=64, patience=12, seed=4, lr_grid=""
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory: pytest.TempPathFactory, encoder_dir: Path):
    """A small synthetic problem with enough training queries (180) for learning to show within seconds."""
    data = tmp_path_factory.mktemp("toy") / "synthetic"
    write_dataset(data, SyntheticConfig(seed=21, items=1500, queries=300))
    return load_dataset(data, TextEncoder(encoder_dir), num_candidates=50)


def test_training_learns_beyond_the_text_baseline(tiny: TinyPipeline, toy_dataset) -> None:
    cfg = _small_cfg(tiny, epochs=30, patience=30, batch_queries=8, dim=64, num_candidates=50)
    result = train(cfg, toy_dataset)
    val = toy_dataset.splits["val"]
    tensors = FeatureTensors.of(toy_dataset, torch.device("cpu"))
    learned = evaluate_scores(score_lists(result.model, tensors, val), val.grades, val.compliant, val.ideal_grades)
    cosine = evaluate_scores(text_cosine_scores(toy_dataset.features, val), val.grades, val.compliant, val.ideal_grades)
    assert result.history[0]["epoch"] == 0 and "loss" not in result.history[0]  # epoch 0: the prior, untrained
    assert result.history[-1]["loss"] < result.history[1]["loss"]
    assert learned.ndcg_at_10 > cosine.ndcg_at_10 + 0.05


def test_same_seed_gives_the_same_model(tiny: TinyPipeline, tiny_dataset) -> None:
    a = train(_small_cfg(tiny, epochs=2), tiny_dataset).model.state_dict()
    b = train(_small_cfg(tiny, epochs=2), tiny_dataset).model.state_dict()
    c = train(_small_cfg(tiny, epochs=2, seed=5), tiny_dataset).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(lr=1e-2, min_lr=1e-4, warmup_steps=10)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.05)


def test_train_writes_checkpoint_and_baseline_metrics(tiny: TinyPipeline) -> None:
    metrics = json.loads((tiny.model / "metrics.json").read_text())
    baselines = {"lambdamart", "two_tower", "text_cosine", "fusion_text_only", "prior", *ZERO_SHOT_SYSTEMS}
    assert set(metrics["test"]) == {"fusion", *baselines}
    assert set(metrics["candidates"]["test_recall"]) == {"+".join(sources) for sources in SOURCE_OPTIONS}
    assert metrics["synthetic"] is True
    checkpoint = torch.load(tiny.model / "checkpoint.pt", weights_only=False)
    expected = {"model", "optimizer", "model_config", "schema", "train_config", "step", "best_val_ndcg"}
    assert expected | {"retriever", "retriever_config"} <= set(checkpoint)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.integration  # a CLI process that imports torch: seconds, not milliseconds
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data-dir", "/nonexistent/data"], "does not exist"),
        (["train", "--loss", "ndcg"], "unknown loss 'ndcg'"),
        (["train", "--epochs", "0"], "epochs must be positive"),
        (["train", "--lr-grid", "2e-3,fast"], "--lr-grid must be comma-separated numbers"),
        (["train", "--analysis", "klingon"], "unknown lexical analysis 'klingon': choose auto, none or a language"),
        (["export", "--out-dir", "/nonexistent/artifacts"], "no checkpoint"),
    ],
)
def test_cli_bad_input_is_one_sentence_and_nonzero(args: list[str], message: str) -> None:
    done = _cli(*args)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_wrong_embedding_dimension(tiny: TinyPipeline, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("queries.jsonl", "judgments.jsonl"):
        (data / name).write_text((tiny.data / name).read_text())
    lines = (tiny.data / "items.jsonl").read_text().splitlines()
    broken = json.loads(lines[5])
    broken["image_embedding"] = broken["image_embedding"][:100]
    lines[5] = json.dumps(broken)
    (data / "items.jsonl").write_text("\n".join(lines) + "\n")
    done = _cli("train", "--data-dir", str(data), "--encoder-dir", str(tiny.encoder), "--out-dir", str(tmp_path))
    assert done.returncode == 2
    assert "image_embedding has dimension 100" in done.stderr and "Traceback" not in done.stderr


def test_cli_missing_encoder_says_what_to_run(tiny: TinyPipeline, tmp_path: Path) -> None:
    done = _cli("train", "--data-dir", str(tiny.data), "--encoder-dir", str(tmp_path / "none"))
    assert done.returncode == 2 and "make encoder" in done.stderr


@pytest.fixture(scope="module")
def toy_features(toy: ToyArtifacts):
    """The toy catalog featurised and listed as training does it (in about a second: the toy text encoder)."""
    return load_dataset(toy.data, TextEncoder(toy.encoder), num_candidates=20)


def test_scores_are_finite(toy_features) -> None:
    """A ranker that was never trained, every weight random (the residual head too, which starts at zero, so that
    more than the prior is scored), gives finite scores on real feature shapes, with every pattern of masked tokens
    an item may have (one or two of its three modalities missing; never all three)."""
    dataset = toy_features
    schema = dataset.schema
    torch.manual_seed(0)
    ranker = FusionRanker(FusionConfig(schema.text_dim, schema.image_dim, schema.attr_dim, dim=32, heads=4, hidden=64))
    for parameter in ranker.head.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    patterns = np.array([m for m in itertools.product((0.0, 1.0), repeat=len(MODALITIES)) if any(m)], np.float32)
    chosen = np.random.default_rng(0).integers(len(patterns), size=len(dataset.items))
    masked = dataclasses.replace(dataset.features, mask=patterns[chosen])
    assert {tuple(row) for row in masked.mask} == {tuple(p) for p in patterns}  # each pattern occurs
    tensors = FeatureTensors(masked, torch.device("cpu"))
    for lists in dataset.splits.values():
        scores = score_lists(ranker, tensors, lists)
        assert scores.shape == lists.candidates.shape and np.isfinite(scores).all()
        assert np.ptp(scores) > 0  # not a constant: the random head scores the candidates


def test_the_ranker_keeps_the_learning_rate_with_the_best_validation_ndcg(tiny: TinyPipeline, tiny_dataset) -> None:
    alone = [train(_small_cfg(tiny, epochs=3, lr_grid=rate), tiny_dataset) for rate in ("1e-3", "3e-2")]
    both = train(_small_cfg(tiny, epochs=3, lr_grid="1e-3,3e-2"), tiny_dataset)
    best = max(alone, key=lambda run: run.best_val_ndcg)  # the first of equals, as the grid keeps
    assert (both.lr, both.best_val_ndcg, both.best_epoch) == (best.lr, best.best_val_ndcg, best.best_epoch)
    assert both.epochs_run == sum(run.epochs_run for run in alone)  # the time of every run is counted


def test_the_retriever_keeps_the_learning_rate_with_the_best_validation_recall(
    tiny: TinyPipeline, tiny_dataset
) -> None:
    small = dict(retrieval_epochs=2, retrieval_dim=16, retrieval_hidden=32)
    alone = [train_retriever(_small_cfg(tiny, **small, lr_grid=rate), tiny_dataset) for rate in ("1e-3", "3e-2")]
    both = train_retriever(_small_cfg(tiny, **small, lr_grid="1e-3,3e-2"), tiny_dataset)
    best = max(alone, key=lambda run: run.best_val_recall)
    assert (both.lr, both.best_val_recall) == (best.lr, best.best_val_recall)


def test_retriever_finds_what_title_search_misses(tiny: TinyPipeline, toy_dataset) -> None:
    cfg = _small_cfg(tiny, retrieval_epochs=15, retrieval_dim=64, num_candidates=50, patience=15)
    result = train_retriever(cfg, toy_dataset)
    space = learned_space(result.model, toy_dataset.features, torch.device("cpu"))
    relisted = toy_dataset.with_candidates(
        dataclasses.replace(toy_dataset.candidates, space=space, sources=("learned",)), 50
    )
    zero_shot = toy_dataset.splits["val"].candidate_recall()  # dense + BM25 over the titles
    learned = relisted.splits["val"].candidate_recall()
    assert learned == pytest.approx(result.best_val_recall)
    assert learned > zero_shot + 0.2
    assert relisted.space == "learned" and relisted.item_vectors.shape == (1500, 64)


def test_same_seed_gives_the_same_retriever(tiny: TinyPipeline, tiny_dataset) -> None:
    cfg = _small_cfg(tiny, retrieval_epochs=2, retrieval_dim=16, retrieval_hidden=32)
    a = train_retriever(cfg, tiny_dataset).model.state_dict()
    b = train_retriever(cfg, tiny_dataset).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_large_catalogs_train_the_retriever_on_sampled_items(tiny: TinyPipeline, tiny_dataset) -> None:
    cfg = _small_cfg(tiny, retrieval_epochs=1, retrieval_dim=16, retrieval_hidden=32, retrieval_items_per_step=50)
    assert 0.0 <= train_retriever(cfg, tiny_dataset).best_val_recall <= 1.0


def test_sampled_items_keep_the_relevant_ones_and_their_grades() -> None:
    batch = [(np.array([3, 7, 90]), np.array([3, 1, 2])), (np.array([7]), np.array([2]))]
    rng = np.random.default_rng(0)
    assert _sample_items(batch, 50, 100, rng).tolist() == list(range(50))  # a small catalog is scored whole
    sample = _sample_items(batch, 1000, 10, rng)
    assert {3, 7, 90} <= set(sample.tolist()) and list(sample) == sorted(sample)
    labels = _labels(batch, sample)
    at = {row: i for i, row in enumerate(sample.tolist())}
    assert labels[0, at[3]] == 3 and labels[0, at[7]] == 1 and labels[0, at[90]] == 2 and labels[1, at[7]] == 2
    assert labels.sum() == 8


def test_candidate_recall_counts_relevant_items_that_were_retrieved() -> None:
    lists = RankingLists(
        query_ids=["a", "b", "c"],
        query_texts=["a", "b", "c"],
        query_emb=np.zeros((3, 4), np.float32),
        candidates=np.zeros((3, 3), np.int64),
        retrieval=np.zeros((3, 3), np.float32),
        evidence=np.zeros((3, 3, 2), np.float32),
        grades=np.array([[3, 2, 1], [1, 0, 0], [0, 0, 0]]),
        compliant=np.zeros((3, 3), bool),
        ideal_grades=np.zeros((3, 10), np.int64),
        relevant_total=np.array([4, 2, 0]),  # query c has no relevant item: excluded, not counted as zero
        labelled=np.ones((3, 3), bool),
    )
    assert lists.candidate_recall() == pytest.approx((2 / 4 + 0 / 2) / 2)
