"""How much two rankings of the same request agree: the figures shadow scoring records for the serving model's
list against a candidate's. Pure functions over ranked lists of item ids, best first; none of them looks at labels,
so none of them is a quality measure: they say how different the candidate is, not whether it is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def overlap_at_k(a: Sequence[str], b: Sequence[str], k: int = 10) -> float:
    """|top-k of a ∩ top-k of b| / k, where k is capped at the shorter list (a request's top_k may be below 10)."""
    k = min(k, len(a), len(b))
    if k == 0:
        return 1.0 if len(a) == len(b) else 0.0
    return len(set(a[:k]) & set(b[:k])) / k


def rank_biased_overlap(a: Sequence[str], b: Sequence[str], p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap (Webber, Moffat and Zobel 2010, eq. 32) of two lists cut at the shorter
    one's length k: ((1 - p) / p) * sum_{d<=k} (X_d / d) p^d + (X_k / k) p^k, where X_d is the overlap of the two
    depth-d prefixes. 1 for identical lists, 0 for disjoint ones; p = 0.9 puts about 86% of the weight on the first
    10 ranks."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be between 0 and 1, got {p}")
    k = min(len(a), len(b))
    if k == 0:
        return 1.0 if len(a) == len(b) else 0.0
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    overlap = 0
    weighted = 0.0
    for depth in range(1, k + 1):
        x, y = a[depth - 1], b[depth - 1]
        # the prefix overlap grows by one for each new item already seen in the other list (x == y counts once)
        overlap += (x in seen_b) + (y in seen_a) + (x == y)
        seen_a.add(x)
        seen_b.add(y)
        weighted += overlap / depth * p**depth
    return (1.0 - p) / p * weighted + overlap / k * p**k


def kendall_tau(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Kendall's tau between the orders the two lists give the items they share: (concordant - discordant) pairs
    over all pairs. None with fewer than two common items (no pair to compare). Rankings have no ties."""
    position_b = {item: i for i, item in enumerate(b)}
    common = [position_b[item] for item in a if item in position_b]  # b's positions, in a's order
    n = len(common)
    if n < 2:
        return None
    concordant = sum(1 for i in range(n) for j in range(i + 1, n) if common[i] < common[j])
    pairs = n * (n - 1) // 2
    return (2 * concordant - pairs) / pairs


@dataclass(frozen=True)
class Agreement:
    """The four figures for one request pair."""

    overlap_at_10: float
    rbo: float
    kendall_tau: float | None  # None: fewer than two items in common
    top1: bool

    def as_dict(self) -> dict[str, float | None]:
        return {
            "overlap_at_10": self.overlap_at_10,
            "rbo": self.rbo,
            "kendall_tau": self.kendall_tau,
            "top1": float(self.top1),
        }


def agreement(serving: Sequence[str], candidate: Sequence[str]) -> Agreement:
    """Every figure for the serving model's list against the candidate's."""
    return Agreement(
        overlap_at_10=overlap_at_k(serving, candidate, 10),
        rbo=rank_biased_overlap(serving, candidate, 0.9),
        kendall_tau=kendall_tau(serving, candidate),
        top1=bool(serving) and bool(candidate) and serving[0] == candidate[0],
    )
