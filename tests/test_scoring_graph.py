"""The scoring graph (index/runtime/scoring_graph.py) against its numpy reference: the gather by row, the evidence of
index.runtime.hybrid and the ranker graph called on their outputs, for every prior, with and without a ranker,
lists of unequal length (padding), ties, and /rerank documents scattered in."""

from __future__ import annotations

import numpy as np
import pytest

from index.runtime.bundle import Bundle
from index.runtime.exported_model import ExportedModel
from index.runtime.files import ArtifactError
from index.runtime.hybrid import PRIORS
from index.runtime.scoring_graph import Extras, ScoringGraph, reference_scores
from tests.toy_artifacts import ToyArtifacts

LENGTHS = [9, 4, 1]


@pytest.fixture(scope="module")
def toy_bundle(toy: ToyArtifacts) -> Bundle:
    return Bundle.load(toy.bundle)


@pytest.fixture(scope="module")
def toy_model(toy: ToyArtifacts) -> ExportedModel:
    return ExportedModel(toy.model)


def _lists(bundle: Bundle, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Queries, rows, valid and BM25 for LENGTHS lists laid out (B, L); with a tie in BM25 and a repeated row (equal
    dense cosines) in the first list, and zero BM25 in the last."""
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((len(LENGTHS), bundle.schema.text_dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    length = max(LENGTHS)
    valid = np.arange(length) < np.asarray(LENGTHS)[:, None]
    rows = np.where(valid, rng.integers(0, bundle.size, valid.shape), 0)
    rows[0, 1] = rows[0, 5]
    bm25 = np.where(valid, rng.random(valid.shape) * 4, 0).astype(np.float32)
    bm25[0, 2] = bm25[0, 3] = 1.5
    bm25[0, 6] = 0.0
    bm25[2] = 0.0
    return queries, rows, valid, bm25


@pytest.mark.parametrize("prior", PRIORS)
def test_the_scoring_graph_scores_as_the_numpy_gather_evidence_and_ranker_graph(
    toy_bundle: Bundle, toy_model: ExportedModel, prior: str
) -> None:
    queries, rows, valid, bm25 = _lists(toy_bundle)
    graph = ScoringGraph(toy_bundle, toy_model)
    vectors = toy_model.project_queries(queries)
    got = graph.run(prior, queries, vectors, rows, valid, bm25)
    expected = reference_scores(toy_bundle, toy_model, prior, queries, vectors, rows, valid, bm25)
    np.testing.assert_allclose(got[valid], expected, atol=1e-5)
    assert np.isneginf(got[~valid]).all()


@pytest.mark.parametrize("prior", PRIORS)
def test_without_a_ranker_the_score_is_the_prior(toy: ToyArtifacts, prior: str) -> None:
    bundle = Bundle.load(toy.zero_shot_bundle)
    queries, rows, valid, bm25 = _lists(bundle, seed=1)
    got = ScoringGraph(bundle, None).run(prior, queries, None, rows, valid, bm25)
    np.testing.assert_allclose(
        got[valid], reference_scores(bundle, None, prior, queries, None, rows, valid, bm25), atol=1e-6
    )


def test_extras_take_the_place_of_the_gathered_rows(toy_bundle: Bundle, toy_model: ExportedModel) -> None:
    """Candidates given as rows (a /rerank text document) score as the catalog item whose rows they are."""
    queries, rows, valid, bm25 = _lists(toy_bundle, seed=2)
    vectors = toy_model.project_queries(queries)
    graph = ScoringGraph(toy_bundle, toy_model)
    expected = graph.run("rrf", queries, vectors, rows, valid, bm25)
    at = np.array([0 * rows.shape[1] + 3, 1 * rows.shape[1] + 0], np.int64)
    items = rows.reshape(-1)[at]
    tables = {"text": "text", "mask": "mask", "kv": "cand_kv", "retrieval": "retrieval"}
    extras = Extras(at, {t: getattr(toy_bundle, name)[items] for t, name in tables.items()})
    elsewhere = rows.copy().reshape(-1)
    elsewhere[at] = (items + 1) % toy_bundle.size  # rows the extras must overwrite
    got = graph.run("rrf", queries, vectors, elsewhere.reshape(rows.shape), valid, bm25, extras)
    np.testing.assert_allclose(got[valid], expected[valid], atol=1e-6)


def test_a_scoring_graph_that_disagrees_with_the_ranker_graph_is_refused(
    toy_bundle: Bundle, toy_model: ExportedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = ScoringGraph(toy_bundle, toy_model)
    assert graph.verify(toy_bundle, "rrf") <= 1e-5
    run = graph.run
    monkeypatch.setattr(graph, "run", lambda *args, **kwargs: run(*args, **kwargs) + 1e-3)
    with pytest.raises(ArtifactError, match="scoring graph differs from the ranker graph"):
        graph.verify(toy_bundle, "rrf")
