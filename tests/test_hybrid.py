"""Hybrid candidates and zero-shot evidence (index.runtime.hybrid), BM25 (index.runtime.lexical), and the quality
gate against the best zero-shot system: unit tests, no trained artifacts."""

from __future__ import annotations

import numpy as np
import pytest

from index.runtime.exported_model import ModelCard
from index.runtime.files import ArtifactError
from index.runtime.hybrid import RRF_K, candidate_rows, evidence, fuse, ranker_evidence
from index.runtime.lexical import LOOKUP_COST, LexicalIndex, tokenize
from model.schema import FeatureSchema
from service.loading import check_quality_gate

from .test_lexical import DOCS  # six short drink texts, one of them empty


def test_rrf_adds_reciprocal_ranks_and_breaks_ties_by_row() -> None:
    a, b = np.array([3, 1, 2]), np.array([1, 4])
    # 1: 1/(k+2) + 1/(k+1) is best; 3 (1/(k+1)) beats 4 (1/(k+2)) beats 2 (1/(k+3))
    assert fuse([a, b], depth=10).tolist() == [1, 3, 4, 2]
    assert fuse([a, b], depth=2).tolist() == [1, 3]
    assert fuse([np.array([7, 5]), np.array([5, 7])], depth=2).tolist() == [5, 7]  # a tie: lower row first
    assert fuse([np.array([-1, 2]), np.array([], dtype=np.int64)], depth=5).tolist() == [2]  # FAISS padding dropped


def test_candidates_are_filled_from_dense_search_when_the_sources_find_too_few() -> None:
    ranked = {"dense": np.array([5, 4, 3, 2]), "bm25": np.array([2])}
    assert candidate_rows(ranked, ("bm25",), depth=3).tolist() == [2, 5, 4]
    assert candidate_rows(ranked, ("dense", "bm25"), depth=2).tolist() == [2, 5]


def test_evidence_is_computed_within_each_list() -> None:
    dense = np.array([0.9, 0.5, 0.7, 0.2, 0.1], np.float32)
    bm25 = np.array([0.0, 4.0, 2.0, 3.0, 0.0], np.float32)
    found = evidence(dense, bm25, [3, 2])
    np.testing.assert_allclose(found.lexical, [0.0, 1.0, 0.5, 1.0, 0.0])
    # list 1: dense ranks 1, 3, 2; BM25 ranks -, 1, 2 (a zero score adds nothing)
    expected = RRF_K * np.array([1 / 61, 1 / 63 + 1 / 61, 1 / 62 + 1 / 62])
    np.testing.assert_allclose(found.rrf[:3], expected, rtol=1e-6)
    assert found.rrf[3] > found.rrf[4] > 0  # list 2 on its own
    np.testing.assert_array_equal(found.prior("dense"), dense)
    stacked = ranker_evidence(found, "rrf")
    assert stacked.shape == (5, 2) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked[:, 1], found.lexical)
    with pytest.raises(ValueError, match="unknown prior"):
        found.prior("popularity")


def test_bm25_finds_items_that_share_a_term_and_filters() -> None:
    index = LexicalIndex.build(DOCS)
    scores, rows = index.search("lime gin", 10)
    assert set(rows.tolist()) == {0, 1, 2, 5} and rows[0] == 0  # both terms beat one
    assert (np.diff(scores) <= 0).all() and (scores > 0).all()
    allowed = np.array([False, True, True, True, True, True])
    assert 0 not in index.search("lime gin", 10, allowed)[1]
    assert index.search("whisky", 10)[1].size == 0  # no shared term: nothing, not the catalog in row order
    assert tokenize("Gin-and-Tonic, 2 cl!") == ["gin", "and", "tonic", "2", "cl"]
    # a word the query says twice weighs twice (query term frequency, as bm25s's own retrieve and Lucene count it)
    np.testing.assert_allclose(index.scores("gin gin lime"), 2 * index.scores("gin") + index.scores("lime"), rtol=1e-6)


def test_bm25_at_a_few_rows_is_the_whole_catalog_score_at_those_rows_bit_for_bit(monkeypatch) -> None:
    """The request path scores only the candidates (`scores_at`); the ranker was trained on `scores`: they must
    agree exactly, for repeated and unknown words, rows without the terms, repeated rows and no rows."""
    rng = np.random.default_rng(0)
    words = ["gin", "lime", "rum", "mint", "soda", "bitters", "sugar", "tonic", "a", "the"]
    docs = [" ".join(rng.choice(words, size=rng.integers(0, 9))) for _ in range(400)]
    index = LexicalIndex.build(docs)
    assert index.size < LOOKUP_COST  # so that only the lookups below are tested, not the small-catalog shortcut
    monkeypatch.setattr("index.runtime.lexical.LOOKUP_COST", 0)
    for query in ["gin gin lime", "a the mint whisky", "whisky", "", "soda tonic a a a"]:
        rows = rng.integers(0, len(docs), size=50)
        np.testing.assert_array_equal(index.scores_at(query, rows), index.scores(query)[rows])
        assert index.scores_at(query, np.zeros(0, np.int64)).shape == (0,)
    # Postings out of row order (bm25s writes them in order; another writer might not): binary search would miss
    # rows, so the index notices at load and scores the whole catalog instead.
    assert index.postings_sorted
    csc = index.bm25.scores  # type: ignore[attr-defined]
    gin = index.term_id("gin")
    assert gin is not None
    span = slice(int(csc["indptr"][gin]), int(csc["indptr"][gin + 1]))
    csc["indices"][span], csc["data"][span] = csc["indices"][span][::-1].copy(), csc["data"][span][::-1].copy()
    shuffled = LexicalIndex(index.bm25, index.document_frequencies, index.avg_length, index.params)
    assert not shuffled.postings_sorted
    rows = np.arange(len(docs))
    np.testing.assert_array_equal(shuffled.scores_at("gin lime", rows), index.scores("gin lime")[rows])


def test_bm25_scores_new_documents_like_catalog_items(tmp_path) -> None:
    """A /rerank plain string is scored with the catalog's statistics: the same score as the item with that text."""
    index = LexicalIndex.build(DOCS)
    query = "lime and gin with mint"
    np.testing.assert_allclose(index.score_texts(query, DOCS), index.scores(query), rtol=1e-5, atol=1e-6)
    index.save(tmp_path / "lexical")
    loaded = LexicalIndex.load(tmp_path / "lexical")
    np.testing.assert_array_equal(loaded.scores(query), index.scores(query))


def test_a_damaged_bm25_index_is_refused(tmp_path) -> None:
    LexicalIndex.build(DOCS).save(tmp_path)
    (tmp_path / "stats.json").write_text("{")
    with pytest.raises(ArtifactError, match="cannot read the BM25 index"):
        LexicalIndex.load(tmp_path)


def _card(test_metrics: dict[str, dict[str, float]]) -> ModelCard:
    schema = FeatureSchema(text_dim=4, image_dim=1, categorical=())
    raw = {"metrics": {"test": test_metrics}}
    return ModelCard("m1", schema, 8, 8, {}, ("dense", "bm25"), "rrf", raw)


def test_the_gate_refuses_a_model_below_the_best_zero_shot_system() -> None:
    zero_shot = {
        "zero_shot_minilm": {"ndcg@10": 0.40, "ndcg@10_e2e": 0.42},
        "zero_shot_bm25": {"ndcg@10": 0.35, "ndcg@10_e2e": 0.38},
        "zero_shot_rrf": {"ndcg@10": 0.41, "ndcg@10_e2e": 0.43},
        "text_cosine": {"ndcg@10": 0.30, "ndcg@10_e2e": 0.20},  # the old, weaker bar
    }
    below = _card({**zero_shot, "fusion": {"ndcg@10": 0.45, "ndcg@10_e2e": 0.425}})
    with pytest.raises(ArtifactError, match="below zero-shot zero_shot_rrf 0.43"):
        check_quality_gate(below, min_ndcg=0.0, require_beats_baseline=True)
    check_quality_gate(below, min_ndcg=0.0, require_beats_baseline=False)  # the operator's explicit override
    check_quality_gate(_card({**zero_shot, "fusion": {"ndcg@10": 0.5, "ndcg@10_e2e": 0.44}}), 0.0, True)
    with pytest.raises(ArtifactError, match="no zero-shot baselines"):
        check_quality_gate(_card({"fusion": {"ndcg@10": 0.5, "ndcg@10_e2e": 0.5}}), 0.0, True)
