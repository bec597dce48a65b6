"""Which lexical analysis BM25 uses where no bundle says it yet: training's `--analysis auto` choice on the
training and validation queries, and the evaluation's bm25 baseline. Unit tests on hand-made catalogs; nothing is
trained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index.data.records import Item
from index.runtime.features import CandidateFeatures
from index.runtime.lexical import Analyzer, LexicalIndex
from model.schema import FeatureSchema
from training.dataset import Candidates, Dataset, build_lists, text_space
from training.evaluate.served import served_analysis
from training.evaluate.systems import bm25_rankings
from training.train import TrainConfig
from training.zero_shot import choose_analysis

TEXTS = [
    "library science",
    "libraries of books",
    "gin and tonic",
    "lime sorbet",
    "public library catalogues",
]


def _dataset(val_query: str, relevant: list[int]) -> Dataset:
    """The catalog above with random text vectors, one query per split (the validation one judged as given)."""
    rng = np.random.default_rng(0)
    text = rng.normal(size=(len(TEXTS), 4)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    n = len(TEXTS)
    features = CandidateFeatures(text, np.zeros((n, 1), np.float32), np.zeros((n, 0), np.float32), np.ones((n, 3)))
    candidates = Candidates(text_space(features), LexicalIndex.build(TEXTS))
    judged = {"val": {row: (3, True) for row in relevant}, "train": {2: (3, True)}, "test": {3: (3, True)}}
    queries = {"train": "gin", "val": val_query, "test": "sorbet"}
    splits = {
        split: build_lists([split], [query], rng.normal(size=(1, 4)).astype(np.float32), judged, candidates, n)
        for split, query in queries.items()
    }
    items = [Item(id=f"i{i}", title=t) for i, t in enumerate(TEXTS)]
    schema = FeatureSchema(text_dim=4, image_dim=1, categorical=())
    return Dataset(items, schema, features, splits, "hand-made", judged, candidates)


def test_auto_takes_stems_where_bm25_alone_ranks_the_judged_queries_better() -> None:
    choice = choose_analysis(_dataset("libraries", relevant=[0, 4]), k=len(TEXTS))
    assert choice.lexical.analyzer == Analyzer("english")
    assert choice.ndcg["english"] > choice.ndcg["none"]


def test_auto_keeps_none_on_a_tie_and_without_relevant_validation_items() -> None:
    dataset = _dataset("gin", relevant=[2])  # the same ranking either way
    choice = choose_analysis(dataset, k=len(TEXTS))
    assert choice.ndcg["english"] == choice.ndcg["none"] and choice.lexical is dataset.candidates.lexical
    unjudged = choose_analysis(_dataset("libraries", relevant=[]), k=len(TEXTS))
    assert unjudged.lexical.analyzer == Analyzer("none")


def test_training_takes_auto_none_or_a_language() -> None:
    """(The CLI's --analysis is TrainConfig's field; tests/test_training.py runs it.)"""
    assert TrainConfig().analysis == "auto"
    assert TrainConfig(analysis="english").analysis == "english" and TrainConfig(analysis="none").analysis == "none"
    with pytest.raises(ValueError, match="unknown lexical analysis 'klingon': choose auto, none or a language"):
        TrainConfig(analysis="klingon")


def test_the_bm25_baseline_takes_the_analysis(tmp_path: Path) -> None:
    ids = [f"i{i}" for i in range(len(TEXTS))]
    (plain,) = bm25_rankings(TEXTS, ids, ["libraries"], depth=5)
    (stemmed,) = bm25_rankings(TEXTS, ids, ["libraries"], depth=5, analysis="english")
    assert plain.ids == ["i1"] and set(stemmed.ids) == {"i0", "i1", "i4"}
    # by default the served bundle's: the in-process engine's, or the manifest at --bundle; none without a bundle
    assert served_analysis(None, tmp_path / "absent") == "none"
    (tmp_path / "manifest.json").write_text(json.dumps({"lexical": {"analysis": "english"}}))
    assert served_analysis(None, tmp_path) == "english"
    (tmp_path / "manifest.json").write_text(json.dumps({"lexical": {}}))  # a bundle from before analyses
    assert served_analysis(None, tmp_path) == "none"
