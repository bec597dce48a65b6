"""nDCG@10, Compliance@1 and MRR against sklearn, hand-computed cases and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from training.metrics import compliance_at_1, dcg_at_k, evaluate_scores, ndcg_at_k, reciprocal_rank


@pytest.mark.parametrize("seed", range(20))
def test_ndcg_matches_sklearn_with_exponential_gains(seed: int) -> None:
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 4, size=30)
    scores = np.round(rng.normal(size=30), 1)  # rounding makes ties, which both must average
    if grades.sum() == 0:
        grades[0] = 1
    expected = ndcg_score([2.0**grades - 1], [scores], k=10)
    assert ndcg_at_k(scores, grades, k=10) == pytest.approx(expected, abs=1e-12)


def test_hand_computed_case() -> None:
    # ranked grades [0, 3, 1]: DCG = 0 + 7/log2(3) + 1/log2(4); ideal [3, 1, 0]: 7 + 1/log2(3)
    scores, grades = np.array([3.0, 2.0, 1.0]), np.array([0, 3, 1])
    expected = (7 / math.log2(3) + 1 / 2) / (7 + 1 / math.log2(3))
    assert ndcg_at_k(scores, grades) == pytest.approx(expected)


def test_perfect_order_scores_one_and_range_is_unit() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        grades = rng.integers(0, 4, size=20)
        if grades.sum() == 0:
            continue
        assert ndcg_at_k(grades.astype(float), grades) == pytest.approx(1.0)
        assert 0.0 <= ndcg_at_k(rng.normal(size=20), grades) <= 1.0


def test_constant_scores_on_label_sorted_input_do_not_score_one() -> None:
    grades = np.array([3, 2, 1, 0, 0])
    assert ndcg_at_k(np.zeros(5), grades) < 0.99


def test_permuting_equal_labels_changes_nothing() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert ndcg_at_k(scores, np.array([2, 1, 1, 0])) == ndcg_at_k(scores, np.array([2, 1, 1, 0])[[0, 2, 1, 3]])


def test_query_without_relevant_items_is_nan_and_counted() -> None:
    assert math.isnan(ndcg_at_k(np.array([1.0, 0.0]), np.array([0, 0])))
    m = evaluate_scores(
        np.array([[1.0, 0.0], [1.0, 0.0]]),
        np.array([[1, 0], [0, 0]]),
        np.array([[True, False], [False, False]]),
        np.array([[1, 0], [0, 0]]),
    )
    assert m.queries == 2 and m.queries_without_relevant == 1
    assert m.ndcg_at_10 == pytest.approx(1.0)


def test_end_to_end_ndcg_uses_ideal_over_all_judged_items() -> None:
    # the candidate list holds only a grade-1 item; the catalog had a grade-3 item that retrieval missed
    scores, grades = np.array([1.0, 0.5]), np.array([1, 0])
    assert ndcg_at_k(scores, grades) == pytest.approx(1.0)
    assert ndcg_at_k(scores, grades, ideal_grades=np.array([3, 1])) < 0.2


def test_dcg_only_counts_top_k() -> None:
    assert dcg_at_k(np.arange(20, 0, -1, dtype=float), np.r_[np.zeros(10), np.ones(10)], k=10) == 0.0


def test_compliance_and_mrr() -> None:
    scores = np.array([0.1, 0.9, 0.5])
    assert compliance_at_1(scores, np.array([True, False, True])) == 0.0
    assert compliance_at_1(scores, np.array([False, True, False])) == 1.0
    assert compliance_at_1(np.zeros(4), np.array([True, False, False, False])) == 0.25  # ties share the top
    assert reciprocal_rank(scores, np.array([2, 0, 3])) == pytest.approx(1 / 2)
    assert reciprocal_rank(scores, np.array([1, 1, 1])) == 0.0
