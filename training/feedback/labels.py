"""Click labels for training: per logged query, each shown item's inverse-propensity-weighted click rate, as a grade.

For query q with sessions S_q, item d gets r(q, d) = sum over s in S_q of click(s, d) / theta(position of d in s),
divided by |S_q|: under the position-based model its expectation is d's attractiveness, whatever positions the
logging ranker put it at (Joachims et al. 2017). Propensities below `clip` count as `clip` (weights at most
1 / clip), trading a little bias for much less variance. With every theta 1 (method "none") it is the plain click
rate: the uncorrected labels, which favour what the logging ranker showed first.

The rate becomes a grade g with gain 2^g - 1 = 7 r (r capped at 1), the data format's 0..3 scale: the ranker's
listwise loss (its target is proportional to the gain) then weights every click by its inverse propensity, and
nDCG@10 over these labels is the counterfactual estimate of the DCG a ranking would get from the same users. A
grade of 2 (relevant, for recall and MRR) is a rate of 3/7.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from index.data.records import GRADES
from training.feedback.sessions import Session

TOP_GAIN = 2.0 ** max(GRADES) - 1.0


@dataclass(frozen=True)
class ClickLabels:
    """Grades from clicks per logged query (normalised as served): query -> item id -> grade (a float in 0..3)."""

    grades: dict[str, dict[str, float]]
    sessions: dict[str, int]  # sessions per query
    propensity: np.ndarray  # (depth,) the theta the clicks were weighted by
    method: str


def grade_of(rate: float) -> float:
    """The grade whose gain 2^g - 1 is `rate` of the top grade's gain."""
    return math.log2(1.0 + TOP_GAIN * min(max(rate, 0.0), 1.0))


def click_labels(sessions: Sequence[Session], propensity: np.ndarray, method: str, clip: float = 0.05) -> ClickLabels:
    """IPW click rates of every shown item, per query, as grades (see the module's docstring)."""
    weights = 1.0 / np.maximum(propensity, clip)
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, int] = defaultdict(int)
    for s in sessions:
        counts[s.query] += 1
        seen = totals[s.query]
        for k, item in enumerate(s.shown[: len(weights)]):
            seen[item] += weights[k] if item in s.clicked else 0.0
    grades = {
        query: {item: grade_of(total / counts[query]) for item, total in items.items()}
        for query, items in totals.items()
    }
    return ClickLabels(grades, dict(counts), propensity, method)
