"""Label-based ranking metrics: nDCG@10, Compliance@1, MRR.

nDCG@10 convention (the one used in every log line and the model card): gain 2^grade - 1, discount 1/log2(rank+1),
tied scores share the average gain of their tie group (as sklearn's ndcg_score does), and queries with no relevant
item are excluded from the mean but counted in `queries_without_relevant`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NDCG_CONVENTION = "nDCG@10: gain 2^g-1, log2 discount, ties averaged, queries without relevant items excluded"
RELEVANT_GRADE = 2  # MRR's first relevant item, and what candidate recall counts


def dcg_at_k(scores: np.ndarray, gains: np.ndarray, k: int = 10) -> float:
    """Tie-averaged DCG@k of gains ranked by descending score."""
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_gains = scores[order], gains[order].astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, len(scores) + 2))
    discounts[k:] = 0.0
    _, group, counts = np.unique(-ranked_scores, return_inverse=True, return_counts=True)
    mean_gain = np.bincount(group, weights=ranked_gains) / counts
    return float((mean_gain[group] * discounts).sum())


def ideal_dcg(gains: np.ndarray, k: int = 10) -> float:
    best = np.sort(gains.astype(np.float64))[::-1][:k]
    return float((best / np.log2(np.arange(2, len(best) + 2))).sum())


def gain(grades: np.ndarray) -> np.ndarray:
    return np.power(2.0, grades) - 1.0


def ndcg_at_k(scores: np.ndarray, grades: np.ndarray, k: int = 10, ideal_grades: np.ndarray | None = None) -> float:
    """nDCG@k of one ranked list; NaN when there is no relevant item. `ideal_grades` defaults to `grades`."""
    ideal = ideal_dcg(gain(grades if ideal_grades is None else ideal_grades), k)
    return float("nan") if ideal == 0 else dcg_at_k(scores, gain(grades), k) / ideal


def compliance_at_1(scores: np.ndarray, compliant: np.ndarray) -> float:
    """Share of compliant items among those tied for the top score (1.0 or 0.0 without ties)."""
    top = scores == scores.max()
    return float(compliant[top].mean())


def reciprocal_rank(scores: np.ndarray, grades: np.ndarray) -> float:
    ranked = grades[np.argsort(-scores, kind="stable")]
    hits = np.flatnonzero(ranked >= RELEVANT_GRADE)
    return 0.0 if len(hits) == 0 else 1.0 / (hits[0] + 1)


@dataclass(frozen=True)
class RankingMetrics:
    """Mean metrics over a set of queries."""

    ndcg_at_10: float  # over the candidate set: the reranker alone
    ndcg_at_10_e2e: float  # over all judged items: includes what retrieval missed
    compliance_at_1: float
    mrr: float
    queries: int
    queries_without_relevant: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "ndcg@10": round(self.ndcg_at_10, 4),
            "ndcg@10_e2e": round(self.ndcg_at_10_e2e, 4),
            "compliance@1": round(self.compliance_at_1, 4),
            "mrr": round(self.mrr, 4),
            "queries": self.queries,
            "queries_without_relevant": self.queries_without_relevant,
        }


def evaluate_scores(
    scores: np.ndarray, grades: np.ndarray, compliant: np.ndarray, ideal_grades: np.ndarray
) -> RankingMetrics:
    """Metrics for (Q, K) scores of Q candidate lists; `ideal_grades` (Q, >=10) are each query's best judged grades."""
    ndcg = np.array([ndcg_at_k(s, g) for s, g in zip(scores, grades)])
    e2e = np.array([ndcg_at_k(s, g, ideal_grades=i) for s, g, i in zip(scores, grades, ideal_grades)])
    return RankingMetrics(
        ndcg_at_10=float(np.nanmean(ndcg)) if np.isfinite(ndcg).any() else float("nan"),
        ndcg_at_10_e2e=float(np.nanmean(e2e)) if np.isfinite(e2e).any() else float("nan"),
        compliance_at_1=float(np.mean([compliance_at_1(s, c) for s, c in zip(scores, compliant)])),
        mrr=float(np.mean([reciprocal_rank(s, g) for s, g in zip(scores, grades)])),
        queries=len(scores),
        queries_without_relevant=int(np.isnan(ndcg).sum()),
    )
